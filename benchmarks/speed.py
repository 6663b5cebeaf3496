"""The ``speed`` job: training images/s and peak memory of one method at one batch size, from a few timed
SGD steps on random uint8 images (no data pipeline, no accuracy): the ``paper-cpu`` configuration's
measurement of the paper's Table 7 geometry (ResNet-50, 224 px) on a CPU.

The model, its parameter groups and the update rule are those of the ``train`` job (``training_job``), so
a step costs what it costs there; only the images are random and the channel pooling keeps its default
statistics (they do not change the cost). Each job runs in a fresh process, so the peak resident set size
above the imported libraries (CPU) or ``torch.cuda.max_memory_allocated`` after the warm-up steps (CUDA)
is the method's own.
"""

from __future__ import annotations

import time

import torch

from benchmarks.backbones import Pretrained, parameter_count
from benchmarks.baselines import build_baseline, set_bn_momentum
from benchmarks.configs import BenchConfig, Job
from benchmarks.memory import current_rss_mib, reset_cuda_peak
from benchmarks.snow import SnowModel, build_delta
from snowhub.progress import Progress
from snowhub.training import SGDSteps, delta_param_groups, seed_everything

NUM_CLASSES = 10


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_speed(config: BenchConfig, job: Job, pretrained: Pretrained, device: torch.device,
              progress: Progress) -> dict:
    """`config.skip_steps` warm-up steps then `config.speed_steps` timed steps of `job.method` at batch
    `job.batch` on random images ``(B, 3, S, S)``, S = `config.image_size`.

    Returns images/s (wall and per CPU-second of this process), seconds per step, parameter counts and
    ``memory`` (``rss_ready_mib``; the worker adds the peaks).
    """
    seed_everything(config.seed)
    batch, size = job.batch, config.image_size
    source = pretrained.frozen_source().to(device) if job.method in ("SNOW", "PN") else None
    if job.method == "SNOW":
        delta = build_delta(pretrained.spec, NUM_CLASSES, job.variant, config.noise_var).to(device)
        model = SnowModel(source, delta, job.variant.source_precision, job.variant.source_chunk,
                          job.variant.low_memory, batch, size)
        groups = delta_param_groups(delta, config.snow_lr, config.score_lr_scale, config.weight_decay)
    else:
        model = build_baseline(job.method, pretrained, NUM_CLASSES, config.fe_tap, source).to(device)
        groups = [{"params": [p for p in model.parameters() if p.requires_grad],
                   "weight_decay": config.weight_decay, "lr": config.lr}]
    set_bn_momentum(model, config.bn_momentum)
    generator = torch.Generator().manual_seed(config.seed)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=generator).to(device)
    labels = torch.randint(0, NUM_CLASSES, (batch,), generator=generator).to(device)
    total = config.skip_steps + config.speed_steps
    sgd = SGDSteps(groups, total, 1, device)
    model.train()
    rss_ready = current_rss_mib()
    progress.start(f"batch {batch}: {config.skip_steps} warm-up + {config.speed_steps} timed steps", total)
    losses = []
    for _ in range(config.skip_steps):
        losses.append(sgd.step(model, images, labels))
        progress.advance(1, loss=losses[-1])
    _sync(device)
    reset_cuda_peak(device)
    start, start_cpu = time.perf_counter(), time.process_time()
    for _ in range(config.speed_steps):
        losses.append(sgd.step(model, images, labels))
        progress.advance(1, loss=losses[-1])
    _sync(device)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    progress.finish()
    n = batch * config.speed_steps
    return {"batch": batch, "steps": config.speed_steps, "seconds": seconds, "cpu_seconds": cpu_seconds,
            "images_per_s": n / seconds, "images_per_cpu_s": n / cpu_seconds, "losses": losses,
            "params": {"trainable": parameter_count(p for p in model.parameters() if p.requires_grad)},
            "memory": {"rss_ready_mib": rss_ready}, "amp_dtype": str(sgd.amp_dtype),
            "low_memory": getattr(model, "low_memory", None)}


def speed_analysis(results: list[dict]) -> dict:
    """Per batch size: one row per method, and SNOW ÷ FT images/s and FT ÷ SNOW memory."""
    out: dict = {}
    for r in results:
        b = out.setdefault(str(r["batch"]), {"rows": {}, "ratios": {}})
        b["rows"][Job.from_dict(r["job"]).label.split(" · ")[0]] = {"images_per_s": r["images_per_s"], "images_per_cpu_s": r["images_per_cpu_s"],
                                         "memory_mib": r["memory"]["training_mib"],
                                         "rss_peak_mib": r["memory"]["rss_peak_mib"],
                                         "trainable": r["params"]["trainable"], "amp_dtype": r.get("amp_dtype"),
                                         "low_memory": r.get("low_memory")}
    for b in out.values():
        snow, ft = b["rows"].get("SNOW"), b["rows"].get("FT")
        if snow and ft:
            b["ratios"] = {"snow_over_ft_images_per_s": snow["images_per_s"] / ft["images_per_s"],
                           "snow_over_ft_images_per_cpu_s": snow["images_per_cpu_s"] / ft["images_per_cpu_s"],
                           "ft_over_snow_memory": ft["memory_mib"] / snow["memory_mib"]}
    return out
