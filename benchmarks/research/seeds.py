"""Several seeds side by side: mean ± spread of top-1 per method and dataset, and time to accuracy.

Reads run folders of the ``methods``, ``experiment`` and ``feature-cache`` suites (their ``results.json``,
:mod:`benchmarks.output`), one seed each, and prints one Markdown table per dataset:

    python -m benchmarks seeds RUN_DIR [RUN_DIR ...] [--out DIR]

A ``methods`` run gives one row per training job (its method, or its SNOW variant), an ``experiment`` run one SNOW row labelled
with the experiment and its overrides (``SNOW pruned_copy snow_lr=0.03``), a ``feature-cache`` run one row per
dataset and method.

Spread is the smallest to the largest of the seeds. Time to accuracy is the training seconds until a run's
validation top-1 first reaches 95 % of the best final top-1 of every run of that dataset (the issue's
definition), read off the evaluation curve (``evals_per_epoch`` points per epoch); the mean over the seeds
that reach it, and how many did.
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path

from benchmarks.analysis import time_to_accuracy
from benchmarks.environment import describe_environment
from benchmarks.output import command_line, header, read_results, write_results

SUITES = ("methods", "experiment", "feature-cache")


def _experiment_label(row: dict) -> str:
    parts = ([] if row["experiment"] == "baseline" else [row["experiment"]]) + row.get("overrides", [])
    return " ".join(["SNOW", *parts])  # e.g. "SNOW pruned_copy snow_lr=0.03"


def runs(folders: list[Path]) -> list[dict]:
    """One row per training run: method label, dataset, seed, final top-1, curve.

    Raises:
        SystemExit: a folder holds no results.json, or the results of another suite than :data:`SUITES`.
    """
    rows = []
    for folder in folders:
        envelope = read_results(folder)
        suite = envelope["suite"]
        if suite not in SUITES:
            raise SystemExit(f"{folder}: a {suite} run; seeds reads {', '.join(SUITES)} runs")
        seed = envelope["settings"]["seed"]
        for r in envelope["rows"]:
            if suite == "feature-cache":
                rows.append({"method": r["method"], "dataset": r["dataset"], "seed": seed, "top1": r["top1"],
                             "curve": r["curve"]})
            elif suite == "experiment":
                rows.append({"method": _experiment_label(r), "dataset": r["dataset"]["name"], "seed": r["seed"],
                             "top1": r["top1"], "curve": r["loop"]["curve"]})
            elif r["job"]["kind"] == "train" and "error" not in r:
                label = r["job"]["label"].split(" · ")[0]  # a SNOW variant keeps its own row ("SNOW K=N/16")
                rows.append({"method": label, "dataset": r["job"]["dataset"], "seed": seed,
                             "top1": r["top1"], "curve": r["loop"]["curve"]})
    return rows


def table(rows: list[dict], dataset: str) -> str:
    """The Markdown table of `dataset`: method, seeds, mean ± spread top-1, each seed, time to 95 % of best."""
    mine = [r for r in rows if r["dataset"] == dataset]
    target = 0.95 * max(r["top1"] for r in mine)
    by_method: dict[str, list[dict]] = defaultdict(list)
    for r in mine:
        by_method[r["method"]].append(r)
    lines = [f"| method | seeds | top-1 % mean (min – max) | per seed | seconds to {target:.2f} % (reached) |",
             "|---|---|---|---|---|"]
    for method, group in sorted(by_method.items(), key=lambda kv: (kv[0].startswith("SNOW "), kv[0])):
        group.sort(key=lambda r: r["seed"])
        top1 = [r["top1"] for r in group]
        times = [t["train_seconds"] for r in group if (t := time_to_accuracy(r["curve"], target)) is not None]
        when = f"{statistics.mean(times):.0f} s ({len(times)}/{len(group)})" if times else f"not reached (0/{len(group)})"
        lines.append(f"| {method} | {len(group)} | {statistics.mean(top1):.2f} ({min(top1):.2f} – {max(top1):.2f}) | "
                     f"{' / '.join(f'{t:.2f}' for t in top1)} | {when} |")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser, suite: str = "seeds") -> None:
    """The ``seeds`` suite's options."""
    parser.add_argument("runs", type=Path, nargs="+", help="run folders of methods, experiment or feature-cache")
    parser.add_argument("--out", type=Path, help="also write results.json (one row per run) and results.md here")


def run(args: argparse.Namespace) -> int:
    """Print the tables; with ``--out``, write them as a results folder too."""
    rows = runs(args.runs)
    text = "".join(f"\n### {dataset}\n\n{table(rows, dataset)}\n" for dataset in sorted({r["dataset"] for r in rows}))
    print(text)
    if args.out:
        command, environment = command_line("seeds", args.argv), describe_environment()
        write_results(args.out, "seeds", command, rows, "\n".join(header("seeds", command, environment)) + text,
                      settings={"runs": [str(p) for p in args.runs]}, environment=environment)
    return 0
