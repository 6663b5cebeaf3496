"""The options of one ``add-task``, by concern: the delta's architecture, the optimisation, the run.

- :class:`DeltaConfig`: what the delta *is* (K ratios, width divisor, σ²), recorded as the task's
  :class:`~snowhub.models.delta.DeltaShape`;
- :class:`TrainConfig`: how it is trained (epochs, batch, learning rates, schedule, seed) and on what view
  of the data (image size, flips, held-out share, probe set size); it carries the other two;
- :class:`RunOptions`: where it runs (device, DataLoader workers), which never changes the result on a CPU.

Every field is recorded with the task, flat, under its own name (``TrainConfig.to_dict``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from snowhub.errors import ConfigError

LOW_MEMORY_MODES = ("auto", "on", "off")


def _check(checks: list[tuple[bool, str]]) -> None:
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


@dataclass(frozen=True)
class DeltaConfig:
    """The delta's architecture (SNOW section 3.1; the paper's values in brackets).

    Attributes:
        k_ratio: K/N, fraction of each tap's channels subscribed by the delta's stages [1/8].
        head_k_ratio: K/N of the last tap, which feeds only the classifier [1/8; default all of it, see
            :meth:`~snowhub.models.delta.DeltaShape.from_ratios`].
        width_divisor: the delta is the source narrowed by this factor [8].
        noise_var: σ² of the channel pooling selection noise [1e-3].
        budget: most serving parameters the delta may have (``add-task --budget``); add-task then sets
            `width_divisor` and `k_ratio` to the largest delta that fits
            (:func:`snowhub.models.budget.fit_budget`), except those named in `budget_keeps`. None: as given.
        budget_keeps: ``"width_divisor"`` and/or ``"k_ratio"``: knobs the caller set, kept under a `budget`.
    """

    k_ratio: float = 1 / 8
    head_k_ratio: float = 1.0
    width_divisor: float = 8.0
    noise_var: float = 1e-3
    budget: int | None = None
    budget_keeps: tuple[str, ...] = ()

    def validate(self) -> None:
        """Raises ConfigError naming the first option that is out of range (by its parameter name, in
        backticks: the CLI shows its flag instead)."""
        _check([
            (0 < self.k_ratio <= 1, f"`k_ratio` must be in (0, 1], got {self.k_ratio}"),
            (0 < self.head_k_ratio <= 1, f"`head_k_ratio` must be in (0, 1], got {self.head_k_ratio}"),
            (1 <= self.width_divisor <= 64, f"`width_divisor` must be in [1, 64], got {self.width_divisor}"),
            (self.noise_var >= 0, f"`noise_var` must be >= 0, got {self.noise_var}"),
            (self.budget is None or self.budget > 0,
             f"`budget` must be a positive number of parameters, got {self.budget}"),
            (set(self.budget_keeps) <= {"width_divisor", "k_ratio"},
             f"`budget_keeps` names width_divisor and/or k_ratio, got {list(self.budget_keeps)}"),
        ])


@dataclass(frozen=True)
class RunOptions:
    """Where a training runs.

    Attributes:
        device: ``"auto"`` (CUDA if present), ``"cpu"`` or ``"cuda[:N]"``.
        num_workers: DataLoader worker processes; None picks a default for the device.
        low_memory: ``"auto"`` (default), ``"on"`` or ``"off"`` (True/False are read as on/off). On: train
            stage by stage (:class:`snowhub.models.staged.StagedForward`): the source on a few images at a
            time, each tap freed once channel-pooled, each delta stage recomputed in backward. The same delta up
            to float rounding (bit for bit where the source's kernels compute an image alike in any batch, as
            on this CPU) with far less training memory at large images; one more delta forward per step makes
            it slower at small ones. ``auto`` turns it on when the source's taps for one batch at the task's
            image size reach :data:`snowhub.training.forwards.LOW_MEMORY_AUTO_MIB` (ResNet-50 at 224 px, batch
            32: on; efficientnet_lite0 at 64 px: off); the choice is recorded with the task. One process
            only: a DDP run or a feature cache trains without it.
        cache_limit_gib: the most disk a feature cache (``TrainConfig.feature_cache``) may take, GiB.
    """

    device: str = "auto"
    num_workers: int | None = None
    low_memory: str = "auto"
    cache_limit_gib: float = 16.0

    def __post_init__(self):
        if isinstance(self.low_memory, bool):  # the former on/off flag
            object.__setattr__(self, "low_memory", "on" if self.low_memory else "off")

    def validate(self) -> None:
        """Raises ConfigError naming the first option that is out of range (by its parameter name, in
        backticks: the CLI shows its flag instead)."""
        _check([(self.low_memory in LOW_MEMORY_MODES,
                 f"`low_memory` must be auto, on or off, got {self.low_memory!r}"),
                (self.num_workers is None or self.num_workers >= 0,
                 f"`num_workers` must be >= 0, got {self.num_workers}"),
                (self.cache_limit_gib > 0 and math.isfinite(self.cache_limit_gib),
                 f"`cache_limit_gib` must be a positive number of GiB, got {self.cache_limit_gib}")])


@dataclass
class TrainConfig:
    """Hyper-parameters of one ``add-task``: the optimisation and the data, with the delta's architecture
    (`delta`) and the run (`run`).

    Attributes:
        epochs: passes over the training images.
        batch_size: images per SGD step.
        lr: peak learning rate of the delta (SGD, momentum 0.9); scaled for `batch_size` by the caller.
        score_lr_scale: the channel pooling scores learn `score_lr_scale` × faster: they start from
            scratch and must separate by more than the selection noise σ (the paper uses lr 1.0 for SNOW).
        weight_decay: L2 on delta weights (not on the scores, so unselected channels keep their score).
        warmup_epochs: linear warm-up length (fraction of an epoch allowed).
        image_size: training/serving resolution in pixels; None = the source's native size.
        hflip: random horizontal flips in training (turn off for digits and text).
        val_fraction: share of each class held out for validation when the data has no split.
        seed: seeds data order, augmentation, init and noise; same seed + data on CPU → same weights.
        probe_per_class, probe_max: size of the probe set kept for the forgetting checker.
        feature_cache: compute the source's taps of each training image once and train every epoch on them
            (:mod:`snowhub.training.feature_cache`): no source forward per step, but no augmentation (so
            `hflip` must be off) and float16 taps; one process only.
        source_precision: ``"float32"``, or ``"bfloat16"``: the source's training forward under bfloat16 autocast
            (the delta, calibration, validation, serving and the probe logits stay float32), where the device
            has bfloat16 arithmetic; one process only. ResNet-50 at 224 px, batch 64, with `low_memory` on this
            CPU: 2× the training images/s; accuracy on the cpu benchmark within the seed spread (docs/benchmarks.md).
        delta: the delta's architecture (:class:`DeltaConfig`).
        run: device and workers (:class:`RunOptions`).
    """

    epochs: int = 5
    batch_size: int = 64
    lr: float = 0.1
    score_lr_scale: float = 10.0
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.5
    image_size: int | None = None
    hflip: bool = True
    val_fraction: float = 0.1
    seed: int = 0
    probe_per_class: int = 20
    probe_max: int = 500
    feature_cache: bool = False
    source_precision: str = "float32"
    delta: DeltaConfig = field(default_factory=DeltaConfig)
    run: RunOptions = field(default_factory=RunOptions)

    def validate(self) -> None:
        """Raises ConfigError naming the first option that is out of range (this one's, then `delta`'s and
        `run`'s)."""
        _check([
            (self.epochs >= 1, f"`epochs` must be at least 1, got {self.epochs}"),
            (self.batch_size >= 1, f"`batch_size` must be at least 1, got {self.batch_size}"),
            (self.lr > 0 and math.isfinite(self.lr), f"`lr` must be a positive number, got {self.lr}"),
            (self.image_size is None or 32 <= self.image_size <= 1024,
             f"`image_size` must be in [32, 1024], got {self.image_size}"),
            (0 < self.val_fraction < 1, f"`val_fraction` must be in (0, 1), got {self.val_fraction}"),
            (self.probe_per_class >= 1 and self.probe_max >= 1,
             "`probe_per_class` and `probe_max` must be at least 1"),
            (not (self.feature_cache and self.hflip),
             "`feature_cache` trains on unaugmented images: drop `hflip` (random flips would need the source again)"),
            (not (self.feature_cache and self.run.low_memory == "on"),
             "`feature_cache` runs no source while training, so `low_memory` has nothing to save: drop one"),
            (self.source_precision in ("float32", "bfloat16"),
             f"`source_precision` must be float32 or bfloat16, got {self.source_precision!r}"),
            (not (self.feature_cache and self.source_precision != "float32"),
             "`feature_cache` runs the source once, in float32: drop `source_precision`"),
        ])
        self.delta.validate()
        self.run.validate()

    def check_single_process(self) -> None:
        """Raises ConfigError when an option that trains in one process only is on (call it for a DDP run)."""
        option = ("`feature_cache`" if self.feature_cache else
                  "`source_precision` bfloat16" if self.source_precision != "float32" else None)
        if option is not None:
            raise ConfigError(f"{option} trains in one process: drop `processes`")

    def to_dict(self) -> dict:
        """Every option, flat (as each task records them): this config's, `delta`'s and `run`'s fields."""
        own = {k: v for k, v in asdict(self).items() if k not in ("delta", "run")}
        return own | asdict(self.delta) | asdict(self.run)
