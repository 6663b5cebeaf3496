"""The continual suite's report: ``results.json``, ``results.md``, heatmaps of R and accuracy against bytes.

Per (sequence, method), over seeds (mean ± standard deviation): average accuracy after the last task, BWT,
forgetting, accuracy on a task just learned against one fine-tuned copy per task (the forward transfer this
multi-head setting defines), training seconds per task and images/s (epochs × that task's training images /
training seconds; Cumulative trains on every task so far), peak resident memory of the job's process above
its libraries, and bytes stored per task beyond the source (:func:`benchmarks.continual.avalanche_side.storage`).
"""

from __future__ import annotations

import statistics
from pathlib import Path

from benchmarks.continual.metrics import average_accuracy, backward_transfer, forgetting, transfer_vs_reference
from benchmarks.environment import describe_environment
from benchmarks.output import header, write_results
from benchmarks.snapshot import snapshot_info


def _stat(values: list[float | None]) -> dict | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def summarise(rows: list[dict]) -> list[dict]:
    """One summary per row: the metrics above over its seeds, and the mean matrix."""
    reference = {r["sequence"]: r for r in rows if r["method"] == "FT-copy"}
    out = []
    for row in rows:
        runs = row["runs"]
        ref = reference.get(row["sequence"])
        ref_runs = {r["seed"]: r["matrix"] for r in ref["runs"]} if ref else {}
        t = len(runs[0]["matrix"])
        mean_matrix = [[statistics.fmean(run["matrix"][i][j] for run in runs) for j in range(i + 1)]
                       for i in range(t)]
        train = [s for run in runs for s in run["train_seconds"]]
        images = [n / s for run in runs for n, s in zip(run["train_images"], run["train_seconds"])]
        out.append({
            "sequence": row["sequence"], "method": row["method"], "tasks": row["tasks"], "seeds": len(runs),
            "average_accuracy": _stat([average_accuracy(r["matrix"]) for r in runs]),
            "bwt": _stat([backward_transfer(r["matrix"]) for r in runs]),
            "forgetting": _stat([forgetting(r["matrix"]) for r in runs]),
            "transfer_vs_ft_copy": _stat([transfer_vs_reference(r["matrix"], ref_runs[r["seed"]])
                                          for r in runs if r["seed"] in ref_runs]),
            "train_seconds_per_task": statistics.fmean(train),
            "images_per_second": statistics.fmean(images),
            "add_task_seconds": (statistics.fmean(s for r in runs for s in r["add_task_seconds"])
                                 if "add_task_seconds" in runs[0] else None),
            "eval_seconds_per_task": statistics.fmean(s for r in runs for s in r["eval_seconds"]),
            "peak_rss_mib": row["peak_rss_mib"],
            "bytes_per_task": statistics.fmean(r["bytes"]["per_task"] for r in runs),
            "mean_matrix": mean_matrix})
    return out


def _pm(stat: dict | None, digits: int = 1) -> str:
    if stat is None:
        return "—"
    return f"{stat['mean']:.{digits}f} ± {stat['sd']:.{digits}f}"


def _bytes(n: float) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def table(summary: list[dict], sequence: str) -> list[str]:
    lines = ["| method | avg acc after last task (%) | BWT (points) | forgetting (points) | R[j][j] − FT copy | "
             "train s/task | images/s | add-task s | peak MiB | bytes/task |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for s in (s for s in summary if s["sequence"] == sequence):
        add = "—" if s["add_task_seconds"] is None else f"{s['add_task_seconds']:.1f}"
        lines.append(f"| {s['method']} | {_pm(s['average_accuracy'])} | {_pm(s['bwt'], 2)} | {_pm(s['forgetting'], 2)}"
                     f" | {_pm(s['transfer_vs_ft_copy'])} | {s['train_seconds_per_task']:.1f} | "
                     f"{s['images_per_second']:.0f} | {add} | {s['peak_rss_mib']:.0f} | {_bytes(s['bytes_per_task'])} |")
    return lines


def _figures(out: Path, summary: list[dict], sequences: list[str]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    for seq in sequences:
        rows = [s for s in summary if s["sequence"] == seq]
        fig, axes = plt.subplots(1, len(rows), figsize=(2.4 * len(rows), 2.8), squeeze=False)
        for ax, s in zip(axes[0], rows):
            t = len(s["mean_matrix"])
            grid = [[s["mean_matrix"][i][j] if j <= i else float("nan") for j in range(t)] for i in range(t)]
            ax.imshow(grid, vmin=50, vmax=100, cmap="viridis")
            for i in range(t):
                for j in range(i + 1):
                    ax.text(j, i, f"{grid[i][j]:.0f}", ha="center", va="center", fontsize=7, color="white")
            ax.set_title(s["method"], fontsize=8)
            ax.set_xticks(range(t), s["tasks"], fontsize=6)
            ax.set_yticks(range(t), [f"after {n}" for n in s["tasks"]], fontsize=6)
        fig.suptitle(f"{seq}: R[i][j], top-1 % (mean over seeds)", fontsize=9)
        fig.tight_layout()
        names.append(f"continual-{seq}-matrix.png")
        fig.savefig(out / names[-1], dpi=110)
        plt.close(fig)
    fig, axes = plt.subplots(1, len(sequences), figsize=(4.2 * len(sequences), 3.4), squeeze=False)
    for ax, seq in zip(axes[0], sequences):
        for s in (s for s in summary if s["sequence"] == seq):
            ax.errorbar(max(s["bytes_per_task"], 1), s["average_accuracy"]["mean"], yerr=s["average_accuracy"]["sd"],
                        fmt="o", capsize=2)
            ax.annotate(s["method"], (max(s["bytes_per_task"], 1), s["average_accuracy"]["mean"]), fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel("bytes stored per task (beyond the source)")
        ax.set_ylabel("average accuracy after the last task (%)")
        ax.set_title(seq, fontsize=9)
    fig.tight_layout()
    names.append("continual-accuracy-vs-bytes.png")
    fig.savefig(out / names[-1], dpi=110)
    plt.close(fig)
    return names


def write_report(out: Path, command: str, rows: list[dict], settings: dict, wall_seconds: float) -> list[Path]:
    """Write ``results.json``, ``results.md`` and the figures into `out`; return the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    environment = describe_environment() | {"code": snapshot_info()}
    for package in ("avalanche-lib",):
        try:
            import importlib.metadata as md

            environment["packages"][package] = md.version(package)
        except Exception:  # noqa: BLE001 - not installed: recorded as None
            environment["packages"][package] = None
    summary = summarise(rows)
    figures = _figures(out, summary, settings["sequences"])
    md = header("continual", command, environment, wall_seconds)
    md += [f"Settings: {settings['image_size']} px, {settings['epochs']} epochs, batch {settings['batch']}, "
           f"{settings['train_images']} training / {settings['test_images']} test images per task, seeds "
           f"{settings['seeds']}, source {settings['source']}, one thread per process; Avalanche "
           f"{environment['packages'].get('avalanche-lib')}: SGD momentum 0.9, hyper-parameters {settings['hparams']}.",
           ""]
    if settings.get("tuning"):
        md += ["Tuning (Split Fashion-MNIST, first seed; score: the average accuracy after task 2):", ""]
        md += [f"- {t['method']}: " + ", ".join(f"{k} {v}" for k, v in t.items() if k not in ("method", "score"))
               + f" → {t['score']:.1f} %" for t in settings["tuning"]]
        md.append("")
    for seq in settings["sequences"]:
        md += [f"## {seq}", ""] + table(summary, seq) + ["", f"![R matrices]({figures[settings['sequences'].index(seq)]})", ""]
    md += [f"![accuracy against bytes]({figures[-1]})", ""]
    paths = write_results(out, "continual", command, rows, "\n".join(md), settings=settings, environment=environment,
                          summary={"methods": summary}, wall_seconds=wall_seconds)
    return paths + [out / f for f in figures]
