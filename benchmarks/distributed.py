"""Training throughput of one add-task on 1, 2, … processes (DistributedDataParallel), side by side in one run:
``python -m benchmarks distributed`` (``--processes 1,2``; on a CUDA machine ``--device cuda --processes 1,2,4``).

Each point is the product's own command, ``snowhub add-task NAME --data DIR --nproc-per-node N --json``, on
the same Fashion-MNIST images (``examples/prepare_data.py``), the same global batch, epochs and seed, into
one fresh hub. Reported per N: training images/s over all processes (the training steps only, as the task
records it), the whole command's wall time (start-up, calibration, validation, probe set, registration
included), validation top-1 and the speed-up over N = 1 at the same thread setting. ``--threads auto,1``:
each process count once with the product's own thread split (``auto``: a worker trains with cores / N
threads) and once with ``OMP_NUM_THREADS=1`` in every process (the same work per thread, so the ratio is the
processes' alone). The machine's load average before and after each run is recorded: on a shared machine it
says what the numbers are worth (on 2 busy cores, 2 OpenMP threads in one process can be many times slower
than 1: the team waits for a descheduled thread). Prints Markdown and writes ``results.json`` (one row per
process count and thread setting) and ``results.md`` into ``--out`` (default
``benchmarks/results/distributed-<date>-<time>``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.environment import describe_environment
from benchmarks.output import command_line, default_out, header, write_results

REPO = Path(__file__).resolve().parents[1]


def _prepare_data(dest: Path, per_class_train: int, per_class_val: int) -> str:
    spec = importlib.util.spec_from_file_location("prepare_data", REPO / "examples" / "prepare_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not (dest / "train").is_dir():
        return module.build_fashion(dest, per_class_train, per_class_val)
    return "reused"


def _snowhub(*args: str, threads: str = "auto") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if threads != "auto":
        env["OMP_NUM_THREADS"] = threads
    return subprocess.run([sys.executable, "-m", "snowhub_cli", *args], capture_output=True, text=True, cwd=REPO,
                          env=env)


def measure(processes: list[int], device: str, image_size: int, batch_size: int, epochs: int, per_class: int,
            thread_settings: list[str] = ("auto",)) -> dict:
    """Train one task per entry of `processes`; ``{"settings", "rows"}`` (see the module docstring).

    Raises:
        SystemExit: ``snowhub init`` or an add-task failed (its last error line).
    """
    data = REPO / "benchmarks" / "results" / "tmp" / "data" / f"fashion-distributed-{per_class}"
    prepared = _prepare_data(data, per_class, max(10, per_class // 5))
    rows = []
    with tempfile.TemporaryDirectory(prefix="snowhub-bench-dist-") as tmp:
        hub = Path(tmp) / "hub"
        made = _snowhub("init", "--source", "efficientnet_lite0", "--hub", str(hub))
        if made.returncode:
            raise SystemExit(made.stderr)
        for threads in thread_settings:
            for n in processes:
                load_before = os.getloadavg()[0]
                start = time.perf_counter()
                done = _snowhub("add-task", f"fashion-{n}p-{threads}", "--data", str(data), "--nproc-per-node",
                                str(n), "--device", device, "--image-size", str(image_size), "--batch-size",
                                str(batch_size), "--epochs", str(epochs), "--seed", "0", "--hflip", "--json",
                                "--hub", str(hub), threads=threads)
                wall = time.perf_counter() - start
                if done.returncode:
                    raise SystemExit(f"--nproc-per-node {n}: {done.stderr.strip().splitlines()[-1]}")
                info = json.loads(done.stdout)
                rows.append({"processes": n, "threads": threads, "train_images_per_s": info["train_images_per_s"],
                             "train_seconds": info["train_seconds"], "command_seconds": wall,
                             "val_top1": info["val_top1"], "load_before": load_before,
                             "load_after": os.getloadavg()[0]})
    for row in rows:
        base = next(r for r in rows if r["threads"] == row["threads"])["train_images_per_s"]
        row["speedup"] = row["train_images_per_s"] / base if base else float("nan")
    settings = {"processes": processes, "threads": list(thread_settings), "device": device, "image_size": image_size,
                "batch_size_global": batch_size, "epochs": epochs, "per_class_train": per_class, "data": prepared,
                "source": "efficientnet_lite0", "gpus": torch.cuda.device_count()}
    return {"settings": settings, "rows": rows}


def render(settings: dict, rows: list[dict]) -> str:
    """The Markdown table of a :func:`measure` result."""
    s = settings
    lines = [f"add-task on {', '.join(map(str, s['processes']))} processes, {s['device']}, {s['source']} at "
             f"{s['image_size']} px, global batch {s['batch_size_global']}, {s['epochs']} epochs, Fashion-MNIST "
             f"{s['per_class_train']} per class", "",
             "| processes | threads per process | training images/s | speed-up | training s | whole command s | "
             "val top-1 | load before → after |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        threads = "cores / N" if r["threads"] == "auto" else r["threads"]
        lines.append(f"| {r['processes']} | {threads} | {r['train_images_per_s']:.1f} | {r['speedup']:.2f}× | "
                     f"{r['train_seconds']:.1f} | {r['command_seconds']:.1f} | {r['val_top1']:.2f} % | "
                     f"{r['load_before']:.2f} → {r['load_after']:.2f} |")
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser, suite: str = "distributed") -> None:
    """The ``distributed`` suite's options."""
    parser.add_argument("--processes", default="1,2", help="comma-separated process counts (default 1,2)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (one process per GPU)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32, help="the global batch")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--per-class", type=int, default=100, help="Fashion-MNIST training images per class")
    parser.add_argument("--threads", default="auto,1",
                        help="comma-separated: auto (the product's split, cores / N per process) and/or a count")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results/...)")


def run(args: argparse.Namespace) -> int:
    """Measure, print the table, write the results folder."""
    out = args.out or default_out("distributed")
    environment = describe_environment()
    started = time.perf_counter()
    result = measure([int(p) for p in args.processes.split(",")], args.device, args.image_size, args.batch_size,
                     args.epochs, args.per_class, args.threads.split(","))
    wall = time.perf_counter() - started
    command = command_line("distributed", args.argv)
    body = render(result["settings"], result["rows"])
    markdown = "\n".join(header("distributed", command, environment, wall)) + body
    write_results(out, "distributed", command, result["rows"], markdown, settings=result["settings"],
                  environment=environment, wall_seconds=wall)
    print(body, end="")
    print(f"written to {out}")
    return 0
