"""Several seeds side by side: mean ± spread of top-1 per method and dataset, and time to accuracy.

Reads the result JSON of ``benchmarks.experiments`` runs (SNOW with one change: ``NAME-DATASET-seedS.json``)
and the ``results.json`` of ``benchmarks.run`` runs (one per seed, the baselines), then prints one Markdown
table per dataset:

    python -m benchmarks.seeds --experiments DIR --runs RUN_DIR [RUN_DIR ...] [--feature-cache-runs DIR ...]

``--feature-cache-runs`` reads ``benchmarks.feature_cache`` folders (``DATASET-METHOD.json`` files and the
run's seed in ``environment.json``), e.g. the ``cpu-long`` seeds.

Spread is the smallest to the largest of the seeds. Time to accuracy is the training seconds until a run's
validation top-1 first reaches 95 % of the best final top-1 of every run of that dataset (the issue's
definition), read off the evaluation curve (``evals_per_epoch`` points per epoch); the mean over the seeds
that reach it, and how many did.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

from benchmarks.analysis import time_to_accuracy


def _feature_cache_runs(folders: list[Path]) -> list[dict]:
    """Rows of ``benchmarks.feature_cache`` folders: ``fashion-SNOW_cached.json`` → method ``SNOW cached``."""
    rows = []
    for folder in folders:
        seed = json.loads((folder / "environment.json").read_text())["config"]["seed"]
        for path in sorted(folder.glob("*-*.json")):
            dataset, _, method = path.stem.partition("-")
            r = json.loads(path.read_text())
            rows.append({"method": method.replace("_", " "), "dataset": dataset, "seed": seed, "top1": r["top1"],
                         "curve": r["curve"]})
    return rows


def _runs(experiments: Path | None, runs: list[Path]) -> list[dict]:
    """One row per training run: method label, dataset, seed, final top-1, curve."""
    rows = []
    for path in sorted(experiments.glob("*-seed*.json")) if experiments else []:
        r = json.loads(path.read_text())
        parts = ([] if r["experiment"] == "baseline" else [r["experiment"]]) + r.get("overrides", [])
        label = " ".join(["SNOW", *parts])  # e.g. "SNOW pruned_copy snow_lr=0.03"
        rows.append({"method": label, "dataset": r["dataset"]["name"], "seed": r["seed"], "top1": r["top1"],
                     "curve": r["loop"]["curve"]})
    for run in runs:
        r = json.loads((run / "results.json").read_text())
        for job in r["results"]:
            if job["job"]["kind"] == "train":
                rows.append({"method": job["job"]["method"], "dataset": job["job"]["dataset"],
                             "seed": r["config"]["seed"], "top1": job["top1"], "curve": job["loop"]["curve"]})
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
    for method, runs in sorted(by_method.items(), key=lambda kv: (kv[0].startswith("SNOW "), kv[0])):
        runs.sort(key=lambda r: r["seed"])
        top1 = [r["top1"] for r in runs]
        times = [t["train_seconds"] for r in runs if (t := time_to_accuracy(r["curve"], target)) is not None]
        when = f"{statistics.mean(times):.0f} s ({len(times)}/{len(runs)})" if times else f"not reached (0/{len(runs)})"
        lines.append(f"| {method} | {len(runs)} | {statistics.mean(top1):.2f} ({min(top1):.2f} – {max(top1):.2f}) | "
                     f"{' / '.join(f'{t:.2f}' for t in top1)} | {when} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.seeds", description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiments", type=Path, help="folder of benchmarks.experiments result JSONs")
    parser.add_argument("--runs", type=Path, nargs="*", default=[], help="benchmarks.run result folders")
    parser.add_argument("--feature-cache-runs", type=Path, nargs="*", default=[],
                        help="benchmarks.feature_cache result folders (one seed each)")
    args = parser.parse_args(argv)
    rows = _runs(args.experiments, args.runs) + _feature_cache_runs(args.feature_cache_runs)
    for dataset in sorted({r["dataset"] for r in rows}):
        print(f"\n### {dataset}\n\n{table(rows, dataset)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
