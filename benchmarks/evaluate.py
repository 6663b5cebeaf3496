"""``snowhub evaluate`` against the in-process ``Predictor`` on the same labelled images, side by side.

One task (Fashion-MNIST, 10 classes, the quickstart's 64 px; trained for ``--epochs`` in a throwaway hub unless
``--hub`` names one) scored on 1,000 held-out images (100 per class, ``examples/prepare_data.py``) five ways, in
one process and interleaved ``--repeat`` times so that a busy machine slows each of them alike:

* ``predictor``: ``Predictor.logits`` on batches decoded beforehand: the forward passes alone;
* ``hub_predict``: ``Hub.predict(files, [task])``: read, decode and answer, batched (what issue 26 timed);
* ``hub_evaluate``: ``Hub.evaluate(task, folder, record=False)``: the same plus the counting;
* ``cli_evaluate`` and ``cli_predict_json``: ``snowhub evaluate TASK --data DIR --json`` and ``snowhub predict
  FILES --task TASK --json`` in a fresh process each (start-up, hub opening and model loading included).

The target (issue 26): ``hub_evaluate`` at no less than 0.8x the images/s of ``predictor`` and ``hub_predict``.

    .venv/bin/python -m benchmarks evaluate [--hub DIR --task NAME] [--repeat 3] [--threads 1] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.distributed import _prepare_data
from benchmarks.environment import describe_environment
from benchmarks.output import command_line, default_out, header, write_results

REPO = Path(__file__).resolve().parents[1]
THREADS: list[int] = []  # --threads, when given
WAYS = ("predictor", "hub_predict", "hub_evaluate", "cli_evaluate", "cli_predict_json")


def add_arguments(parser: argparse.ArgumentParser, suite: str = "evaluate") -> None:
    """The ``evaluate`` suite's options."""
    parser.add_argument("--hub", type=Path, help="a hub with TASK (default: a throwaway one, trained here)")
    parser.add_argument("--task", default="fashion")
    parser.add_argument("--data", type=Path, help="labelled test folder (default: Fashion-MNIST val, 100/class)")
    parser.add_argument("--epochs", type=int, default=1, help="training of the throwaway hub's task")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, help="torch threads here and OMP_NUM_THREADS of the CLI runs (default: "
                        "torch's; on a busy machine 1 keeps OpenMP from spinning against other processes)")
    parser.add_argument("--out", type=Path, help="results folder (default benchmarks/results/...)")


def _snowhub(*args: str) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "snowhub_cli", *args], capture_output=True, text=True, cwd=REPO,
                          env=os.environ | ({"OMP_NUM_THREADS": str(THREADS[0])} if THREADS else {}))
    if done.returncode:
        raise SystemExit(f"snowhub {args[0]}: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    return time.perf_counter() - start, done


def _hub(args: argparse.Namespace, tmp: Path) -> tuple[Path, Path]:
    data = REPO / "benchmarks" / "results" / "tmp" / "data" / "fashion-evaluate"
    _prepare_data(data, 300, 100)
    if args.hub is not None:
        return args.hub, args.data or data / "val"
    hub = tmp / "hub"
    _snowhub("init", "--source", "efficientnet_lite0", "--hub", str(hub))
    _snowhub("add-task", args.task, "--data", str(data), "--image-size", "64", "--epochs", str(args.epochs),
             "--hub", str(hub))
    return hub, args.data or data / "val"


def _timed(hub_path: Path, task: str, data: Path, batch_size: int) -> dict[str, float]:
    """Seconds of each way, one pass each (the in-process ones on one resident predictor)."""
    import torch

    from snowhub import Hub
    from snowhub.data import load_rgb
    from snowhub.serving.preprocessing import to_batch

    files = sorted(data.glob("*/*.png"))
    seconds = {}
    with Hub.open(hub_path) as hub:
        predictor = hub.predictor()
        size, ratio = hub.task(task).image_size, predictor.resize_ratio()
        batches = [to_batch([load_rgb(f) for f in files[i:i + batch_size]], size, ratio)
                   for i in range(0, len(files), batch_size)]
        hub.predict(files[:batch_size], [task])  # models loaded and verified before any timing
        with torch.no_grad():
            start = time.perf_counter()
            for batch in batches:
                predictor.logits(batch, [task])
            seconds["predictor"] = time.perf_counter() - start
        start = time.perf_counter()
        hub.predict(files, [task], top=1)
        seconds["hub_predict"] = time.perf_counter() - start
        start = time.perf_counter()
        hub.evaluate(task, data, batch_size=batch_size, record=False)
        seconds["hub_evaluate"] = time.perf_counter() - start
    seconds["cli_evaluate"], _ = _snowhub("evaluate", task, "--data", str(data), "--json", "--hub", str(hub_path),
                                          "--batch-size", str(batch_size))
    seconds["cli_predict_json"], _ = _snowhub("predict", *map(str, files), "--task", task, "--json",
                                              "--hub", str(hub_path))
    return seconds


def _table(rows: list[dict], images: int) -> tuple[str, dict]:
    median = {w: statistics.median(r[w] for r in rows) for w in WAYS}
    rate = {w: images / median[w] for w in WAYS}
    lines = ["| way | median s | images/s | ÷ predictor | ÷ hub_predict |", "|---|---:|---:|---:|---:|"]
    for w in WAYS:
        lines.append(f"| `{w}` | {median[w]:.2f} | {rate[w]:.0f} | {rate[w] / rate['predictor']:.2f} | "
                     f"{rate[w] / rate['hub_predict']:.2f} |")
    summary = {"images": images, "median_seconds": median, "images_per_second": rate,
               "evaluate_vs_predictor": rate["hub_evaluate"] / rate["predictor"],
               "evaluate_vs_hub_predict": rate["hub_evaluate"] / rate["hub_predict"]}
    return "\n".join(lines) + "\n", summary


def run(args: argparse.Namespace) -> int:
    """Measure, print the table, write the results folder."""
    environment = describe_environment()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
        THREADS[:] = [args.threads]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="snowhub-bench-evaluate-") as tmp:
        hub, data = _hub(args, Path(tmp))
        images = len(list(data.glob("*/*.png")))
        rows = []
        for i in range(args.repeat):
            rows.append(_timed(hub, args.task, data, args.batch_size) | {"repeat": i, "load": os.getloadavg()[0]})
            print(rows[-1], file=sys.stderr, flush=True)
    wall = time.perf_counter() - started
    command = command_line("evaluate", args.argv)
    table, summary = _table(rows, images)
    print(f"`{command}`\n\n{table}")
    out = args.out or default_out("evaluate")
    settings = {"task": args.task, "images": images, "repeat": args.repeat, "batch_size": args.batch_size,
                "epochs": args.epochs, "threads": args.threads, "hub": str(args.hub) if args.hub else "throwaway"}
    write_results(out, "evaluate", command, rows, "\n".join(header("evaluate", command, environment, wall)) + table,
                  settings=settings, environment=environment, summary=summary, wall_seconds=wall)
    print(f"wrote {out}")
    return 0
