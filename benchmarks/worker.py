"""One benchmark job in a fresh process: ``python -m benchmarks.worker JOB.json``.

The job file holds ``{"job": ..., "config": ..., "data": ..., "result": PATH}``. Progress goes to stdout as
``@@progress {json}`` lines (the runner draws them); the result is written as JSON to ``result``.
Running each job in its own process makes the process's peak memory that job's own.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
import torchvision  # noqa: F401  (part of the library baseline below)

from benchmarks.backbones import load_pretrained
from benchmarks.configs import BenchConfig, DatasetSpec, Job, SnowVariant
from benchmarks.memory import cuda_peak_mib, current_rss_mib, peak_rss_mib

RSS_LIBS = current_rss_mib()  # after importing the libraries, before any model exists


class JsonLinesProgress:
    """A ``snowhub.progress.Progress`` that writes each event as one ``@@progress`` JSON line on stdout."""

    def _emit(self, **event) -> None:
        sys.stdout.write("@@progress " + json.dumps(event) + "\n")
        sys.stdout.flush()

    def start(self, description: str, total: int | None) -> None:
        self._emit(event="start", description=description, total=total)

    def advance(self, steps: int = 1, **info) -> None:
        self._emit(event="advance", steps=steps, info={k: (round(v, 4) if isinstance(v, float) else v)
                                                       for k, v in info.items()})

    def finish(self, message: str | None = None) -> None:
        self._emit(event="finish", message=message)


def config_from_dict(d: dict) -> BenchConfig:
    d = dict(d)
    d["datasets"] = tuple(DatasetSpec(**x) for x in d["datasets"])
    d["variants"] = tuple(SnowVariant(**{k: v[k] for k in ("subscription", "k_ratio", "width_divisor", "head_k_ratio",
                                                                                     "source_precision", "source_chunk", "low_memory") if k in v})
                          for v in d["variants"])
    for key in ("methods", "ablation_datasets", "serve_tasks", "serve_methods", "serve_table_methods",
                "speed_batches"):
        if key in d:
            d[key] = tuple(d[key])
    return BenchConfig(**d)


def setup_torch(config: BenchConfig, autotune: bool = True) -> torch.device:
    """Threads and device as the configuration asks; the product's device choice (denormals flushed on CPU).

    `autotune` turns on cuDNN's autotuner on CUDA (training jobs: fixed shapes, every step alike). Its
    workspace allocations inflate the peak-memory counter during the first steps, so training resets the
    counter after its warm-up steps (``benchmarks.loop.train_loop``). Serving runs without it, as
    :class:`snowhub.serving.Predictor` does.
    """
    from snowhub.device import pick_device

    if config.threads:
        torch.set_num_threads(config.threads)
    device = pick_device(config.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = autotune
    return device


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    config = config_from_dict(spec["config"])
    job = Job.from_dict(spec["job"])
    started = time.perf_counter()
    device = setup_torch(config, autotune=job.kind != "serve")
    progress = JsonLinesProgress()
    progress.start("loading source", None)
    pretrained = load_pretrained(config.source, random_weights=config.weights == "random")
    progress.finish()
    if job.kind == "serve":
        from benchmarks.serving import run_serving

        result = run_serving(config, pretrained, device, progress)
    else:
        if job.kind == "speed":
            from benchmarks.speed import run_speed

            result = run_speed(config, job, pretrained, device, progress)
        else:
            from benchmarks.training_job import run_training

            dataset = next(d for d in config.datasets if d.name == job.dataset)
            result = run_training(config, job, dataset, Path(spec["data"]), pretrained, device, progress)
        result["memory"] |= {"rss_libraries_mib": RSS_LIBS,
                             "rss_peak_mib": peak_rss_mib(), "cuda_peak_mib": cuda_peak_mib(device)}
        result["memory"]["training_mib"] = (result["memory"]["cuda_peak_mib"] if device.type == "cuda"
                                            else result["memory"]["rss_peak_mib"] - RSS_LIBS)
    result |= {"job": job.to_dict(), "device": str(device), "threads": torch.get_num_threads(),
               "weights_origin": pretrained.origin, "wall_seconds": time.perf_counter() - started,
               "pid": os.getpid()}
    Path(spec["result"]).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

