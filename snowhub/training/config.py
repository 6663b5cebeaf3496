"""The hyper-parameters of one ``add-task``: :class:`TrainConfig`."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from snowhub.errors import ConfigError


@dataclass
class TrainConfig:
    """Hyper-parameters of one ``add-task``; every field is recorded with the task.

    Attributes:
        epochs: passes over the training images.
        batch_size: images per SGD step.
        lr: peak learning rate of the delta (SGD, momentum 0.9); scaled for `batch_size` by the caller.
        score_lr_scale: the channel pooling scores learn `score_lr_scale` × faster: they start from
            scratch and must separate by more than the selection noise σ (the paper uses lr 1.0 for SNOW).
        weight_decay: L2 on delta weights (not on the scores, so unselected channels keep their score).
        warmup_epochs: linear warm-up length (fraction of an epoch allowed).
        k_ratio: K/N, fraction of each tap's channels subscribed by the delta's stages (paper: 1/8).
        head_k_ratio: K/N of the last tap, which feeds only the classifier (paper: 1/8; default all of
            it, see :meth:`DeltaShape.from_ratios`).
        width_divisor: the delta is the source narrowed by this factor (paper: 8).
        noise_var: σ² of the channel pooling noise (paper: 1e-3).
        image_size: training/serving resolution in pixels; None = the source's native size.
        hflip: random horizontal flips in training (turn off for digits and text).
        val_fraction: share of each class held out for validation when the data has no split.
        seed: seeds data order, augmentation, init and noise; same seed + data on CPU → same weights.
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:N]"``.
        num_workers: DataLoader workers; None picks a default for the device.
        probe_per_class, probe_max: size of the probe set kept for the forgetting checker.
    """

    epochs: int = 5
    batch_size: int = 64
    lr: float = 0.1
    score_lr_scale: float = 10.0
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.5
    k_ratio: float = 1 / 8
    head_k_ratio: float = 1.0
    width_divisor: float = 8.0
    noise_var: float = 1e-3
    image_size: int | None = None
    hflip: bool = True
    val_fraction: float = 0.1
    seed: int = 0
    device: str = "auto"
    num_workers: int | None = None
    probe_per_class: int = 20
    probe_max: int = 500

    def validate(self) -> None:
        """Raises ConfigError naming the first option that is out of range."""
        checks = [
            (self.epochs >= 1, "--epochs must be at least 1"),
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (self.lr > 0 and math.isfinite(self.lr), "--lr must be a positive number"),
            (0 < self.k_ratio <= 1, "--k-ratio must be in (0, 1]"),
            (0 < self.head_k_ratio <= 1, "--head-k-ratio must be in (0, 1]"),
            (1 <= self.width_divisor <= 64, "--width-divisor must be in [1, 64]"),
            (self.noise_var >= 0, "--noise-var must be >= 0"),
            (self.image_size is None or 32 <= self.image_size <= 1024, "--image-size must be in [32, 1024]"),
            (0 < self.val_fraction < 1, "--val-fraction must be in (0, 1)"),
            (self.num_workers is None or self.num_workers >= 0, "--workers must be >= 0"),
            (self.probe_per_class >= 1 and self.probe_max >= 1, "probe set size must be at least 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def to_dict(self) -> dict:
        """Every field by name (JSON-ready: numbers, strings, booleans, None), as recorded with the task."""
        return asdict(self)
