"""The ``serve`` job: the source's own task plus N added tasks answered for the same input batch (paper
section 3.2, Table 4), with randomly initialised task parameters (they do not change the cost).

* SNOW: the product's ``MultiTaskNetwork`` as ``Predictor`` builds it: one source pass, N deltas (run as one
  batched computation per delta shape where the product fuses them).
* FT and MP: N separate copies of the network plus the source (MP shares all but BatchNorm and head).
* FE: one source pass, N copies of the part after the second-to-last tap.
* FO: one source pass, N classifiers on the pooled features.
* PN: one source pass, N columns fed by lateral adapters.

Also counts FLOPs (``torch.utils.flop_counter.FlopCounterMode``: convolutions and matrix products) for the
FLOP-count ideal of SNOW: source FLOPs + N × delta FLOPs at the source-alone speed.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.backbones import Pretrained, new_head, parameter_count, suffix_after_tap
from benchmarks.baselines import ProgressiveModel, TransferModel
from benchmarks.configs import BenchConfig, SnowVariant
from benchmarks.snow import build_delta
from snowhub.models.delta import Delta
from snowhub.models.frozen import FrozenSource, InputNormalizer
from snowhub.models.network import MultiTaskNetwork
from snowhub.progress import Progress

NUM_CLASSES = 10


class SeparateModels(nn.Module):
    """FT / MP serving: the source's own task, then every task's whole network on the same images."""

    def __init__(self, source: FrozenSource, models: Sequence[nn.Module]):
        super().__init__()
        self.source, self.models = source, nn.ModuleList(models)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        _, logits = self.source(self.source.normalizer(images))
        return [logits] + [m(images) for m in self.models]


class SharedTap(nn.Module):
    """FE / PN serving: one source pass; each task continues from the source's taps."""

    def __init__(self, source: FrozenSource, tasks: Sequence[nn.Module], tap: int | None):
        super().__init__()
        self.source, self.tasks, self.tap = source, nn.ModuleList(tasks), tap

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = self.source.normalizer(images)
        taps, logits = self.source(x)
        if self.tap is None:  # PN: columns read every tap
            return [logits] + [t.from_taps(x, taps) for t in self.tasks]
        return [logits] + [t(taps[self.tap]) for t in self.tasks]


class SharedFeatures(nn.Module):
    """FO serving: one source pass; each task's classifier reads the source's pooled features."""

    def __init__(self, pretrained: Pretrained, heads: Sequence[nn.Module]):
        super().__init__()
        self.normalizer = InputNormalizer(pretrained.spec.mean, pretrained.spec.std)
        self.backbone = pretrained.copy().eval()
        self.heads = nn.ModuleList(heads)
        self._features: torch.Tensor | None = None
        self.backbone.get_submodule(pretrained.spec.head).register_forward_pre_hook(self._keep)

    def _keep(self, _module, inputs):
        self._features = inputs[0]

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        logits = self.backbone(self.normalizer(images))
        features, self._features = self._features, None
        return [logits] + [h(features) for h in self.heads]


@torch.no_grad()
def images_per_s(model: Callable, images: torch.Tensor, device: torch.device, min_seconds: float,
                 min_batches: int = 3) -> tuple[float, float]:
    """Forward (images/s, images per CPU-second of this process) of `model` on `images`, measured over at
    least `min_seconds` and `min_batches`.

    In float32 without autocast, as :class:`snowhub.serving.Predictor` answers (training uses AMP on CUDA,
    serving does not).
    """
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(2 if device.type == "cuda" else 1):
        model(images)
    sync()
    n, start, start_cpu = 0, time.perf_counter(), time.process_time()
    while n < min_batches or time.perf_counter() - start < min_seconds:
        model(images)
        n += 1
    sync()
    return n * len(images) / (time.perf_counter() - start), n * len(images) / (time.process_time() - start_cpu)


@torch.no_grad()
def forward_flops(model: Callable, images: torch.Tensor) -> int:
    """FLOPs of one forward pass per image (convolutions and matrix products; 2 FLOPs per multiply-add)."""
    with FlopCounterMode(display=False) as counter:
        model(images[:1])
    return counter.get_total_flops()


def _deltas(config: BenchConfig, pretrained: Pretrained, n: int, device: torch.device) -> list[Delta]:
    deltas = []
    for _ in range(n):
        delta = build_delta(pretrained.spec, NUM_CLASSES, SnowVariant(), config.noise_var).to(device).eval()
        delta.freeze_channel_pooling()
        deltas.append(delta)
    return deltas


def _transfer(pretrained: Pretrained, trainable: str, n: int, device: torch.device) -> list[TransferModel]:
    return [TransferModel(pretrained, NUM_CLASSES, trainable).to(device).eval() for _ in range(n)]


def _fe_suffixes(config: BenchConfig, pretrained: Pretrained, n: int, device: torch.device) -> list[nn.Module]:
    suffixes = []
    for _ in range(n):
        model = pretrained.copy()
        new_head(model, pretrained.spec, NUM_CLASSES)
        suffixes.append(suffix_after_tap(pretrained.spec, model, config.fe_tap).to(device).eval())
    return suffixes


def _snow_network(source: FrozenSource, deltas: dict[str, Delta]) -> MultiTaskNetwork:
    """What the product serves: the Predictor's network, with horizontal fusion where the measured product
    has it (``--product`` may name a revision from before it)."""
    from snowhub.serving.predictor import Predictor

    if getattr(Predictor, "FUSE_DELTAS", False) and "fused" in inspect.signature(MultiTaskNetwork).parameters:
        return MultiTaskNetwork(source, deltas, "imagenet", fused=True)
    return MultiTaskNetwork(source, deltas, "imagenet")


def run_serving(config: BenchConfig, pretrained: Pretrained, device: torch.device, progress: Progress) -> dict:
    """Serving images/s and total parameters vs number of added tasks, and the all-methods table."""
    torch.manual_seed(config.seed)
    size, batch = config.image_size, config.serve_batch
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8).to(device)
    source = pretrained.frozen_source().to(device)
    n_max = max(max(config.serve_tasks), config.serve_table_tasks)
    progress.start("building task models", None)
    deltas = _deltas(config, pretrained, n_max, device)
    wanted = set(config.serve_methods) | {"SNOW"}
    n_ft = n_max if "FT" in wanted else (config.serve_table_tasks if "FT" in config.serve_table_methods else 1)
    n_fe = n_max if "FE" in wanted else (config.serve_table_tasks if "FE" in config.serve_table_methods else 1)
    ft = _transfer(pretrained, "all", n_ft, device)
    fe = _fe_suffixes(config, pretrained, n_fe, device)
    progress.finish()
    source_params = parameter_count(pretrained.model.parameters())
    per_task = {"SNOW": deltas[0].serving_parameter_count(), "FT": parameter_count(ft[0].backbone.parameters()),
                "FE": parameter_count(fe[0].parameters())}

    alone = MultiTaskNetwork(source, {}, "imagenet")
    x = source.normalizer(images[:1])
    taps, _ = source(x)
    flops = {"source": forward_flops(alone, images), "delta": forward_flops(lambda _: deltas[0](x, taps), images)}
    all_builders = {
        "SNOW": lambda n: _snow_network(source, {f"task{i}": d for i, d in enumerate(deltas[:n])}),
        "FT": lambda n: SeparateModels(source, ft[:n]),
        "FE": lambda n: SharedTap(source, fe[:n], config.fe_tap),
    }
    builders = {m: b for m, b in all_builders.items() if m in wanted}
    steps = len(config.serve_tasks) * len(builders) + 1
    progress.start("serving vs number of tasks", steps)
    source_ips, source_ipcs = images_per_s(alone, images, device, config.serve_min_seconds,
                                           config.serve_min_batches)
    progress.advance(1)
    scaling = []
    for n in config.serve_tasks:
        share = flops["source"] / (flops["source"] + n * flops["delta"])
        row = {"tasks": n, "ideal_snow_images_per_s": source_ips * share,
               "ideal_snow_images_per_cpu_s": source_ipcs * share}
        for name, build in builders.items():
            row[f"{name}_images_per_s"], row[f"{name}_images_per_cpu_s"] = images_per_s(
                build(n), images, device, config.serve_min_seconds, config.serve_min_batches)
            row[f"{name}_params"] = source_params + n * per_task[name]
            progress.advance(1, method=name, tasks=n)
        scaling.append(row)
    progress.finish(f"serving: source alone {source_ips:.1f} images/s")

    n = config.serve_table_tasks
    methods = config.serve_table_methods
    progress.start(f"serving table: source + {n} tasks", len(methods))
    mp = _transfer(pretrained, "batchnorm", n if "MP" in methods else 1, device)
    pn = [ProgressiveModel(pretrained, source, NUM_CLASSES).to(device).eval() for _ in range(n if "PN" in methods else 1)]
    features = pretrained.model.get_submodule(pretrained.spec.head).in_features
    fo_heads = [nn.Linear(features, NUM_CLASSES).to(device) for _ in range(n)]
    mp_task = sum(p.numel() for p in mp[0].backbone.parameters() if p.requires_grad)
    table_models = {
        "FO": lambda: (SharedFeatures(pretrained, fo_heads).to(device), parameter_count(fo_heads[0].parameters())),
        "FE": lambda: (all_builders["FE"](n), per_task["FE"]),
        "FT": lambda: (all_builders["FT"](n), per_task["FT"]),
        "MP": lambda: (SeparateModels(source, mp), mp_task),
        "PN": lambda: (SharedTap(source, pn, None),
                       parameter_count(pn[0].column.parameters()) + parameter_count(pn[0].laterals.parameters())),
        "SNOW": lambda: (all_builders["SNOW"](n), per_task["SNOW"]),
    }
    table = {}
    for name in methods:
        model, task_params = table_models[name]()
        ips, ipcs = images_per_s(model, images, device, config.serve_min_seconds, config.serve_min_batches)
        table[name] = {"images_per_s": ips, "images_per_cpu_s": ipcs, "params": source_params + n * task_params,
                       "task_params": task_params}
        progress.advance(1, method=name)
    progress.finish()
    return {"source_images_per_s": source_ips, "source_images_per_cpu_s": source_ipcs, "flops_per_image": flops,
            "source_params": source_params, "per_task_params": per_task, "scaling": scaling, "table_tasks": n,
            "table": table, "batch": batch, "image_size": size, "num_classes": NUM_CLASSES}
