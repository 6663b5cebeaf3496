"""Benchmark configurations: ``smoke`` (harness check, < 2 min), ``cpu`` (the committed CPU run, < 30 min on
2 cores), ``cpu-long`` (the same for 10 epochs), ``paper-cpu`` (ResNet-50's geometry, speed and memory) and
``gpu`` (the paper's setting: ResNet-50, 224 px, batch 256, for a CUDA machine with internet).

Every method in one configuration shares the data pipeline, batch size, epochs, seed, image size and
optimizer (SGD, momentum 0.9, weight decay 1e-4, linear warm-up then cosine decay); only the peak learning
rate differs between the baselines and SNOW, as in the paper (section 3.1).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

METHODS = ("FO", "FE", "FT", "MP", "PN", "SNOW")
EXTRA_METHODS = ("FE-paper",)  # issue 28: measured by `python -m benchmarks front`, not in the configurations' grids
SUBSCRIPTIONS = ("channel_pooling", "conv1x1", "attention", "all")


@dataclass(frozen=True)
class DatasetSpec:
    """One image-classification task.

    Attributes:
        name: short name used in tables and file names.
        path: dataset folder (any layout ``snowhub.data.discover`` reads); relative paths are taken under
            the ``--data`` folder.
        hflip: random horizontal flips while training (off for digits).
    """

    name: str
    path: str
    hflip: bool = True


@dataclass(frozen=True)
class SnowVariant:
    """SNOW's own knobs (paper Table 5 and section 3.1).

    Attributes:
        subscription: how the delta reads a source tap: ``channel_pooling`` (the product), ``conv1x1``
            (N→K 1×1 convolution), ``attention`` (CBAM channel attention over all N channels) or ``all``
            (every channel, i.e. channel pooling with K = N).
        k_ratio: K/N, share of each tap's channels the delta's stages subscribe to (paper: 1/8).
        width_divisor: the delta is the source narrowed by this factor (paper: 8).
        head_k_ratio: K/N of the last tap, read by the classifier (product: 1; paper: 1/8).
        source_precision: ``float32`` (the product's training) or ``bfloat16``: the source's forward under
            bfloat16 autocast in training (``snowhub.models.staged.StagedForward``), the delta in float32.
        source_chunk: run the training source forward on at most this many images at a time
            (``StagedForward(source_chunk=...)``); 0 = the whole batch.
        low_memory: ``add-task --low-memory`` (``auto``, ``on``, ``off``) for the ``speed`` jobs, resolved by the
            product for the job's batch and image size.
    """

    subscription: str = "channel_pooling"
    k_ratio: float = 1 / 8
    width_divisor: float = 8.0
    head_k_ratio: float = 1.0
    source_precision: str = "float32"
    source_chunk: int = 0
    low_memory: str = "auto"

    @property
    def label(self) -> str:
        """Row label: ``SNOW`` for the default, else what differs (e.g. ``SNOW K=N/16``)."""
        parts = []
        if self.subscription != "channel_pooling":
            names = {"conv1x1": "1×1 conv", "attention": "channel attention", "all": "all channels"}
            parts.append(names[self.subscription])
        if self.k_ratio != 1 / 8 and self.subscription in ("channel_pooling", "conv1x1"):
            parts.append(f"K=N/{round(1 / self.k_ratio)}")
        if self.width_divisor != 8.0:
            parts.append(f"width/{self.width_divisor:g}")
        if self.head_k_ratio != 1.0 and self.subscription in ("channel_pooling", "conv1x1"):
            parts.append(f"classifier K=N/{round(1 / self.head_k_ratio)} (paper)")
        if self.source_precision != "float32":
            parts.append(f"{self.source_precision} source")
        if self.source_chunk:
            parts.append(f"source in chunks of {self.source_chunk}")
        if self.low_memory != "auto":
            parts.append(f"--low-memory {self.low_memory}")
        return "SNOW" + (" " + ", ".join(parts) if parts else "")

    @property
    def source_key(self) -> str:
        """How the training source runs, for job keys: ``""``, ``"-bfloat16"``, ``"-c16"``, ``"-bfloat16-c16"``."""
        return (("" if self.source_precision == "float32" else f"-{self.source_precision}")
                + (f"-c{self.source_chunk}" if self.source_chunk else "")
                + ("" if self.low_memory == "auto" else f"-lm{self.low_memory}"))


@dataclass(frozen=True)
class BenchConfig:
    """All settings of one benchmark run (recorded in the JSON output).

    Attributes:
        name: configuration name.
        source: source model (``snowhub.models.sources.SOURCES``).
        image_size: training and serving resolution, pixels.
        batch_size: images per SGD step (and per evaluation batch).
        epochs: passes over the training images.
        lr: peak learning rate of FO, FE, FT, MP, PN (paper: 0.1 at batch 256).
        snow_lr: peak learning rate of SNOW's delta.
        score_lr_scale: channel pooling scores learn this many times faster than the delta (product default).
        weight_decay: L2 on weights (not on channel pooling scores).
        warmup_epochs: linear warm-up length in epochs.
        noise_var: σ² of the channel pooling selection noise.
        attention_reduction: CBAM hidden-layer reduction r (hidden units = max(1, N // r)).
        fe_tap: FE retrains everything after this tap (index into the source's taps; -2 = the last stage).
        bn_momentum: running-statistics momentum of every BatchNorm that trains (None = the model's own).
            0.1 is PyTorch's default and the delta's; the efficientnet_lite0 port keeps TensorFlow's 0.01,
            which in a few-epoch run leaves FT/MP/PN evaluating with mostly ImageNet statistics.
        seed: seeds data order, augmentation, initialisation and noise.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        threads: torch CPU threads per worker process (None = torch's default). One thread per process
            keeps CPU timings stable on a shared machine; see docs/benchmarks.md.
        num_workers: DataLoader processes per job (None = the product's default for the device). With one
            compute thread, one loader process decodes the next batches on the second core, as loaders do
            beside a GPU, so images/s measures the method rather than PNG decoding.
        datasets: the tasks every method is trained on.
        methods: methods in the main comparison (subset of :data:`METHODS`).
        ablation_datasets: names of the datasets the SNOW variants below run on.
        variants: SNOW variants besides the default (subscription alternatives, K, width).
        evals_per_epoch: validation passes per epoch (the accuracy-vs-time curve's resolution).
        max_train_per_class, max_val_per_class: keep only the first n images of each class (None = all).
        skip_steps: first SGD steps left out of the training images/s (one-time allocation, autotuning).
        target_fraction: "time to accuracy" is the training time to reach this fraction of the best final
            top-1 of the main methods on the same dataset.
        serve_tasks: numbers of added tasks N for the serving scaling measurement.
        serve_table_tasks: N for the all-methods serving table (paper Table 4 serves ImageNet + 5 tasks).
        serve_batch: images per serving batch.
        serve_min_seconds: each serving measurement runs at least this long (and `serve_min_batches`).
        serve_min_batches: timed batches per serving measurement at least (after one warm-up batch).
        serve_methods: methods measured against the number of tasks (SNOW always; FE and FT optional).
        serve_table_methods: methods of the all-methods serving table (empty = no table).
        weights: ``pretrained`` (the product's resolver) or ``random`` (the architecture only: enough for
            speed and memory, not for accuracy).
        speed_batches: batch sizes of the ``speed`` jobs (a few timed steps on random images per method and
            batch size, no accuracy); when set, the run has no ``train`` jobs.
        speed_steps: timed SGD steps per ``speed`` job (after ``skip_steps`` warm-up steps).
    """

    name: str
    source: str
    image_size: int
    batch_size: int
    epochs: int
    lr: float
    snow_lr: float
    datasets: tuple[DatasetSpec, ...]
    score_lr_scale: float = 10.0
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.5
    noise_var: float = 1e-3
    attention_reduction: int = 16
    fe_tap: int = -2
    bn_momentum: float | None = 0.1
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    num_workers: int | None = None
    methods: tuple[str, ...] = METHODS
    ablation_datasets: tuple[str, ...] = ()
    variants: tuple[SnowVariant, ...] = ()
    evals_per_epoch: int = 1
    max_train_per_class: int | None = None
    max_val_per_class: int | None = None
    skip_steps: int = 2
    target_fraction: float = 0.95
    serve_tasks: tuple[int, ...] = (1, 2, 5, 10, 20)
    serve_table_tasks: int = 5
    serve_batch: int = 64
    serve_min_seconds: float = 2.0
    serve_min_batches: int = 3
    serve_methods: tuple[str, ...] = ("SNOW", "FE", "FT")
    serve_table_methods: tuple[str, ...] = METHODS
    weights: str = "pretrained"
    speed_batches: tuple[int, ...] = ()
    speed_steps: int = 3

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["variants"] = [dataclasses.asdict(v) | {"label": v.label} for v in self.variants]
        return d

    def replace(self, **changes) -> "BenchConfig":
        return dataclasses.replace(self, **changes)


def _ablation_variants() -> tuple[SnowVariant, ...]:
    """Paper Table 5 (subscription alternatives), the paper's K = N/8 at the classifier too, K ∈ {N/4, N/16}
    and width divisor ∈ {4, 16}."""
    return (
        SnowVariant(subscription="conv1x1"),
        SnowVariant(subscription="attention"),
        SnowVariant(subscription="all"),
        SnowVariant(head_k_ratio=1 / 8),
        SnowVariant(k_ratio=1 / 4),
        SnowVariant(k_ratio=1 / 16),
        SnowVariant(width_divisor=4.0),
        SnowVariant(width_divisor=16.0),
    )


OFFLINE_DATASETS = (DatasetSpec("fashion", "fashion", hflip=True), DatasetSpec("mnist", "mnist", hflip=False))

CONFIGS: dict[str, BenchConfig] = {
    "smoke": BenchConfig(
        name="smoke", source="efficientnet_lite0", image_size=32, batch_size=32, epochs=1,
        lr=0.1 * 32 / 256, snow_lr=0.1, datasets=OFFLINE_DATASETS[:1], threads=1,
        ablation_datasets=("fashion",),
        variants=(SnowVariant(subscription="all", k_ratio=1 / 16, width_divisor=16.0),),  # subscription, K, width
        max_train_per_class=16, max_val_per_class=8, skip_steps=1,
        serve_tasks=(1, 2), serve_table_tasks=2, serve_batch=16, serve_min_seconds=0.2,
    ),
    # Baselines: the paper's lr 0.1 at batch 256, scaled linearly to batch 64. SNOW: the product's
    # defaults (snowhub add-task: lr 0.1 at batch 64, channel pooling scores 10x faster).
    "cpu": BenchConfig(
        name="cpu", source="efficientnet_lite0", image_size=64, batch_size=64, epochs=2,
        lr=0.1 * 64 / 256, snow_lr=0.1, datasets=OFFLINE_DATASETS, threads=1, num_workers=1,
        ablation_datasets=("fashion",), variants=_ablation_variants(), evals_per_epoch=2,
        max_train_per_class=300, max_val_per_class=60,  # 600 Fashion-MNIST test images: the run fits 30 min
        serve_batch=64, serve_min_seconds=0.5, serve_min_batches=2,
    ),
    # The cpu run at a budget where the methods have converged (issue 14): 10 epochs, one evaluation per epoch,
    # the main methods only. 21 minutes of training per seed on the idle 2 cores (FT's 10 epochs: 10.3 of them).
    "cpu-long": BenchConfig(
        name="cpu-long", source="efficientnet_lite0", image_size=64, batch_size=64, epochs=10,
        lr=0.1 * 64 / 256, snow_lr=0.1, datasets=OFFLINE_DATASETS, threads=1, num_workers=1,
        methods=("FO", "FE", "FT", "SNOW"), max_train_per_class=300, max_val_per_class=60,
        serve_batch=64, serve_min_seconds=0.5, serve_min_batches=2, serve_table_methods=(),
    ),
    # The paper's setting (section 3.1): ResNet-50 source, 224 px, batch 256, lr 0.1 for the baselines;
    # SNOW's channel pooling scores at 1.0 (= 0.1 x score_lr_scale 10). Warm-up + cosine instead of the
    # paper's step decay, so every configuration shares one schedule. Add the paper's datasets with
    # --dataset food=/data/food-101 etc.
    "gpu": BenchConfig(
        name="gpu", source="resnet50", image_size=224, batch_size=256, epochs=30,
        lr=0.1, snow_lr=0.1, datasets=OFFLINE_DATASETS, warmup_epochs=1.0,
        ablation_datasets=("fashion",), variants=_ablation_variants(), skip_steps=5,
        serve_batch=256, serve_min_seconds=3.0,
    ),
    # The paper's geometry for speed and memory only (Table 7, section 3.2): ResNet-50's architecture with
    # random weights, 224 px, batch 32, a few timed steps per method in a fresh process each; serving
    # the source + 1/5/20 tasks. No accuracy. About 15 minutes on 2 cores. SNOW is add-task's default
    # (--low-memory auto, on here); the variants: --low-memory off (the former default) and the bfloat16 source.
    "paper-cpu": BenchConfig(
        name="paper-cpu", source="resnet50", image_size=224, batch_size=32, epochs=1,
        lr=0.1 * 64 / 256, snow_lr=0.1, datasets=(), threads=2, methods=("FO", "FE", "FT", "MP", "SNOW"),
        weights="random", speed_batches=(32,), speed_steps=2, skip_steps=1,
        serve_tasks=(1, 5, 20), serve_table_tasks=5, serve_batch=32, serve_min_seconds=3.0, serve_min_batches=2,
        serve_methods=("SNOW",), serve_table_methods=("FO", "FE", "FT", "SNOW"),
        variants=(SnowVariant(low_memory="off"), SnowVariant(source_precision="bfloat16")),
    ),
}


def get_config(name: str) -> BenchConfig:
    try:
        return CONFIGS[name]
    except KeyError:
        raise SystemExit(f"unknown configuration {name!r}; choose one of: {', '.join(CONFIGS)}") from None


@dataclass(frozen=True)
class Job:
    """One unit of work, run in its own fresh process so its peak memory is its own.

    Attributes:
        kind: ``train`` (one method on one dataset) or ``serve`` (the serving measurements).
        method: FO, FE, FT, MP, PN or SNOW (``train`` only).
        dataset: the dataset name (``train`` only).
        variant: SNOW's knobs (``method == "SNOW"`` only).
        batch: images per step (``speed`` only: one method's timed steps at this batch size).
    """

    kind: str
    method: str = ""
    dataset: str = ""
    variant: SnowVariant = field(default_factory=SnowVariant)
    batch: int = 0

    @property
    def label(self) -> str:
        if self.kind == "serve":
            return "serving"
        if self.kind == "speed":
            return f"{self.variant.label if self.method == 'SNOW' else self.method} · batch {self.batch}"
        name = self.variant.label if self.method == "SNOW" else self.method
        return f"{name} · {self.dataset}"

    @property
    def key(self) -> str:
        """File-name-safe identifier."""
        if self.kind == "serve":
            return "serve"
        if self.kind == "speed":
            v = self.variant
            return f"speed-b{self.batch}-{self.method}" + (v.source_key if self.method == "SNOW" else "")
        v = self.variant
        extra = "" if self.method != "SNOW" else (f"-{v.subscription}-k{round(1 / v.k_ratio)}-w{v.width_divisor:g}"
                                                  + ("" if v.head_k_ratio == 1.0 else f"-h{round(1 / v.head_k_ratio)}")
                                                  + v.source_key)
        return f"{self.dataset}-{self.method}{extra}"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "method": self.method, "dataset": self.dataset,
                "variant": dataclasses.asdict(self.variant), "label": self.label, "key": self.key,
                "batch": self.batch}

    @staticmethod
    def from_dict(d: dict) -> "Job":
        return Job(d["kind"], d["method"], d["dataset"], SnowVariant(**d["variant"]), d.get("batch", 0))


def plan(config: BenchConfig) -> list[Job]:
    """The jobs of a run: every method on every dataset, the SNOW variants on the ablation datasets, serving;
    with `speed_batches`, every method at every batch size instead of the training jobs."""
    if config.speed_batches:
        return [Job("speed", m, batch=b) for b in config.speed_batches for m in config.methods] + [
            Job("speed", "SNOW", variant=v, batch=b) for b in config.speed_batches for v in config.variants] + [Job("serve")]
    jobs = [Job("train", m, d.name) for d in config.datasets for m in config.methods]
    jobs += [Job("train", "SNOW", d, v) for d in config.ablation_datasets for v in config.variants]
    return jobs + [Job("serve")]
