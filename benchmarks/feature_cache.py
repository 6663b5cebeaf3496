"""The source feature cache against FT and uncached SNOW, side by side in one run (issue 15).

    python -m benchmarks feature-cache [--out DIR] [--config cpu-long] [--seed S]

On each dataset of the configuration (default ``cpu-long``: EfficientNet-Lite0, 64 px, batch 64, 10 epochs,
one compute thread) it trains, in this order and in this one process:

* ``FT``, ``FE``, ``FO``: the benchmarks' baselines (``benchmarks.training_job``), with augmentation;
* ``SNOW``: the product's ``train_delta`` as ``add-task`` runs it, with augmentation (random resized crops,
  and flips where the dataset has them);
* ``SNOW no augmentation``: the same on the serving view of every image (``eval_transform``), uncached;
* ``SNOW cached``: ``add-task --cache-features``: the same views, the source run once, float16 taps.

The two SNOW rows without augmentation differ only by the cache (float16 taps, the order of the batches);
``SNOW`` against them is the accuracy cost of training without augmentation. Training seconds exclude
evaluation and include filling the cache. It runs in a frozen copy of the code (``--product``,
:mod:`benchmarks.snapshot`), so edits to the working tree during a long run cannot mix in. Writes ``results.json`` (one row per dataset and method, with its
accuracy curve) and ``results.md`` into ``--out`` (default ``benchmarks/results/feature-cache-<date>-<time>``).
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

from rich.console import Console

import snowhub.training.loop as product_loop
from benchmarks.analysis import time_to_accuracy
from benchmarks.backbones import load_pretrained
from benchmarks.configs import BenchConfig, Job, get_config
from benchmarks.environment import describe_environment
from benchmarks.output import command_line, default_out, header, write_results
from benchmarks.report import table
from benchmarks.run import DEFAULT_DATA, prepare_offline_data
from benchmarks.snapshot import rerun_in_snapshot, snapshot_info
from benchmarks.training_job import load_split, run_training
from benchmarks.worker import setup_torch
from snowhub.data import eval_transform
from snowhub.progress import SilentProgress
from snowhub.training import RunOptions, TrainConfig, train_delta

SNOW_ROWS = ("SNOW", "SNOW no augmentation", "SNOW cached")


@contextlib.contextmanager
def _without_augmentation(resize_ratio: float):
    """The product's trainer with its training transform replaced by the serving view (bench-only switch)."""
    original = product_loop.train_transform
    product_loop.train_transform = lambda size, hflip=True: eval_transform(size, resize_ratio)
    try:
        yield
    finally:
        product_loop.train_transform = original


def _snow(config: BenchConfig, row: str, dataset, data: Path, pretrained, device) -> dict:
    split = load_split(dataset, data, config)
    cached = row == "SNOW cached"
    train = TrainConfig(epochs=config.epochs, batch_size=config.batch_size, lr=config.snow_lr,
                        score_lr_scale=config.score_lr_scale, weight_decay=config.weight_decay,
                        warmup_epochs=config.warmup_epochs, image_size=config.image_size,
                        hflip=dataset.hflip and row == "SNOW", seed=config.seed, feature_cache=cached,
                        run=RunOptions(device=str(device), num_workers=config.num_workers))
    source = pretrained.frozen_source().to(device)
    with tempfile.TemporaryDirectory(prefix="snowhub-cache-") as cache_dir, (
            _without_augmentation(pretrained.spec.eval_resize_ratio) if row == "SNOW no augmentation" else contextlib.nullcontext()):
        result = train_delta(source, split, train, device, SilentProgress(), cache_dir=Path(cache_dir))
    elapsed, curve = result.cache_seconds, []
    for h in result.history:
        elapsed += h["seconds"]
        curve.append({"epoch": h["epoch"], "train_seconds": elapsed, "top1": h["val_top1"]})
    return {"top1": result.val.top1, "top5": result.val.top5, "train_seconds": result.train_seconds,
            "cache_seconds": result.cache_seconds, "images_per_s": result.images_per_s, "curve": curve}


def _baseline(config: BenchConfig, method: str, dataset, data: Path, pretrained, device) -> dict:
    r = run_training(config, Job("train", method, dataset.name), dataset, data, pretrained, device, SilentProgress())
    loop = r["loop"]
    return {"top1": r["top1"], "top5": r["top5"], "train_seconds": loop["train_seconds"], "cache_seconds": 0.0,
            "images_per_s": loop["images_per_s_all"],
            "curve": [{"epoch": p["epoch"], "train_seconds": p["train_seconds"], "top1": p["top1"]}
                      for p in loop["curve"]]}


def report(config: BenchConfig, results: dict[str, dict[str, dict]]) -> str:
    """Markdown: per dataset, top-1, training seconds, images/s, speed ÷ FT, time to 95 % of the best top-1."""
    lines = [f"Feature cache: {config.name}, {config.epochs} epochs, seed {config.seed}.", ""]
    for name, rows in results.items():
        best = max(r["top1"] for r in rows.values())
        ft = rows.get("FT")
        body = []
        for label, r in rows.items():
            speed = f"{ft['train_seconds'] / r['train_seconds']:.2f}×" if ft else "—"
            reach = time_to_accuracy(r["curve"], 0.95 * best)
            body.append([label, f"{r['top1']:.2f}", f"{r['top5']:.2f}", f"{r['train_seconds']:.1f}",
                         f"{r['cache_seconds']:.1f}" if r["cache_seconds"] else "—", f"{r['images_per_s']:.1f}",
                         speed, f"{reach['train_seconds']:.1f}" if reach is not None else "not reached"])
        lines += [f"## {name}", ""] + table(
            ["method", "top-1 %", "top-5 %", "training s", "of which caching s", "images/s", "FT s ÷ method s",
             f"s to {0.95 * best:.2f} % (95 % of best)"], body) + [""]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser, suite: str = "feature-cache") -> None:
    """The ``feature-cache`` suite's options."""
    parser.add_argument("--config", default="cpu-long")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="folder of the datasets; the offline ones are prepared there if missing")
    parser.add_argument("--out", type=Path, help="results folder (default benchmarks/results/...)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--datasets", default=None, help="comma-separated names (default: the config's)")
    parser.add_argument("--methods", default="FT,FE,FO," + ",".join(SNOW_ROWS))
    parser.add_argument("--product", default="worktree",
                        help="which snowhub/ to measure: worktree (default, as on disk at the start) or a git revision")


def run(args: argparse.Namespace) -> int:
    """Train every method on every dataset in one process, in a frozen copy of the code; write the results folder."""
    config = get_config(args.config).replace(seed=args.seed, **({"epochs": args.epochs} if args.epochs else {}))
    datasets = [d for d in config.datasets if args.datasets is None or d.name in args.datasets.split(",")]
    methods = args.methods.split(",")
    out = args.out or default_out("feature-cache")
    prepare_offline_data(config, args.data, Console(stderr=True))  # here: the snapshot has no examples/
    code = rerun_in_snapshot("feature-cache", args.argv, args.product, {"--out": out, "--data": args.data})
    if code is not None:
        return code
    environment, started = describe_environment() | {"code": snapshot_info()}, time.perf_counter()
    device = setup_torch(config)
    pretrained = load_pretrained(config.source)
    results: dict[str, dict[str, dict]] = {}
    for dataset in datasets:
        for method in methods:
            begun = time.perf_counter()
            train = _snow if method in SNOW_ROWS else _baseline
            r = train(config, method, dataset, args.data, pretrained, device)
            r["wall_seconds"] = time.perf_counter() - begun
            results.setdefault(dataset.name, {})[method] = r
            print(f"{dataset.name} {method}: top-1 {r['top1']:.2f} %, {r['train_seconds']:.1f} s", flush=True)
    wall, command = time.perf_counter() - started, command_line("feature-cache", args.argv)
    rows = [{"dataset": name, "method": method} | r for name, by in results.items() for method, r in by.items()]
    text = report(config, results)
    write_results(out, "feature-cache", command, rows, "\n".join(header("feature-cache", command, environment, wall)) + text,
                  settings=config.to_dict(), environment=environment, wall_seconds=wall)
    print(text)
    return 0
