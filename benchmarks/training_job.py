"""A ``train`` job: one method (FO, FE, FT, MP, PN or a SNOW variant) trained on one dataset.

The order of operations for SNOW is the product's ``train_delta`` (seed, build the delta, loaders, measure
the source statistics, optimizer), so with the same seed it draws the same random numbers and follows the
same loss trajectory (checked by ``benchmarks/tests``).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch

from benchmarks.backbones import Pretrained, parameter_count
from benchmarks.baselines import build_baseline, set_bn_momentum
from benchmarks.configs import BenchConfig, DatasetSpec, Job
from benchmarks.loop import train_loop
from benchmarks.memory import current_rss_mib, reset_cuda_peak
from benchmarks.snow import SnowModel, build_delta, subscription_parameters
from snowhub.data import DatasetSplit, discover, eval_transform, make_loader, train_transform
from snowhub.device import default_num_workers
from snowhub.models.channel_pooling import ChannelPooling
from snowhub.progress import Progress
from snowhub.training import calibrate_channel_pooling, delta_param_groups, seed_everything


def first_per_class(samples: Sequence[tuple[Path, int]], n: int | None) -> list[tuple[Path, int]]:
    """The first `n` samples of each label, in the given order (all of them when `n` is None)."""
    if n is None:
        return list(samples)
    seen: Counter = Counter()
    kept = []
    for path, label in samples:
        if seen[label] < n:
            kept.append((path, label))
            seen[label] += 1
    return kept


def load_split(dataset: DatasetSpec, data_dir: Path, config: BenchConfig) -> DatasetSplit:
    """The dataset's train/validation split as the product discovers it, optionally cut per class."""
    path = Path(dataset.path)
    split = discover(path if path.is_absolute() else data_dir / path, seed=config.seed)
    return dataclasses.replace(split, train=first_per_class(split.train, config.max_train_per_class),
                               val=first_per_class(split.val, config.max_val_per_class))


def run_training(config: BenchConfig, job: Job, dataset: DatasetSpec, data_dir: Path, pretrained: Pretrained,
                 device: torch.device, progress: Progress) -> dict:
    """Train `job.method` on `dataset`; return accuracy curve, throughput, memory and parameter counts."""
    split = load_split(dataset, data_dir, config)
    num_classes = len(split.class_names)
    size, batch = config.image_size, config.batch_size
    workers = default_num_workers(device) if config.num_workers is None else config.num_workers
    source = pretrained.frozen_source().to(device) if job.method in ("SNOW", "PN") else None

    seed_everything(config.seed)
    delta = None
    if job.method == "SNOW":
        delta = build_delta(pretrained.spec, num_classes, job.variant, config.noise_var,
                            config.attention_reduction).to(device)
        model = SnowModel(source, delta, job.variant.source_precision, job.variant.source_chunk)
    else:
        model = build_baseline(job.method, pretrained, num_classes, config.fe_tap, source).to(device)
    set_bn_momentum(model, config.bn_momentum)
    train_loader = make_loader(split.train, train_transform(size, dataset.hflip), batch, shuffle=True,
                               seed=config.seed, num_workers=workers, device=device, drop_last=True)
    val_loader = make_loader(split.val, eval_transform(size), batch, shuffle=False, seed=config.seed,
                             num_workers=workers, device=device)
    if delta is not None:
        calib_loader = make_loader(split.train, eval_transform(size), batch, shuffle=True, seed=config.seed + 1,
                                   num_workers=workers, device=device)
        progress.start("measuring source statistics", None)
        calibrate_channel_pooling(source, delta, calib_loader, device)
        progress.finish()
        groups = delta_param_groups(delta, config.snow_lr, config.score_lr_scale, config.weight_decay)
    else:
        groups = [{"params": [p for p in model.parameters() if p.requires_grad],
                   "weight_decay": config.weight_decay, "lr": config.lr}]

    rss_ready = current_rss_mib()
    reset_cuda_peak(device)
    loop = train_loop(model, groups, train_loader, val_loader, epochs=config.epochs,
                      warmup_epochs=config.warmup_epochs, device=device, progress=progress,
                      evals_per_epoch=config.evals_per_epoch, skip_steps=config.skip_steps)

    trainable = parameter_count(p for p in model.parameters() if p.requires_grad)
    params = {"trainable": trainable, "task": trainable, "source": parameter_count(pretrained.model.parameters())}
    if delta is not None:
        unselected = sum(m.channels - m.k for m in delta.pools if isinstance(m, ChannelPooling))
        params |= {"task": trainable - unselected, "subscription": subscription_parameters(delta),
                   "delta_widths": list(delta.shape.widths), "ks": list(delta.shape.ks)}
    final = loop.curve[-1]
    return {"dataset": {"name": dataset.name, "root": str(split.root), "layout": split.layout,
                        "classes": num_classes, "train_images": len(split.train), "val_images": len(split.val),
                        "val_source": split.val_source, "hflip": dataset.hflip},
            "top1": final.top1, "top5": final.top5, "loop": loop.to_dict(), "params": params,
            "memory": {"rss_ready_mib": rss_ready}, "lr": groups[0]["lr"]}
