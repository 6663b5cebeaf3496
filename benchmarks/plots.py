"""Figures of a run (matplotlib, headless):

* ``training_<dataset>.png``: top-1 vs training images/s, bubble area ∝ training memory (paper Fig. 4);
* ``curves_<dataset>.png``: validation top-1 vs training seconds (paper Fig. 5, against time);
* ``serving.png``: serving images/s vs number of added tasks, with SNOW's FLOP-count ideal.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLOURS = {"FO": "tab:gray", "FE": "tab:blue", "FT": "tab:red", "MP": "tab:orange", "PN": "tab:purple",
           "SNOW": "tab:green"}


def training_figure(path: Path, name: str, rows: list[dict]) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    biggest = max(r["memory_mib"] for r in rows) or 1.0
    for r in rows:
        colour = COLOURS.get(r["method"], "black")
        ax.scatter(r["images_per_s"], r["top1"], s=2000 * r["memory_mib"] / biggest, color=colour, alpha=0.45,
                   edgecolors=colour)
        ax.annotate(f"{r['label']}\n{r['memory_mib']:.0f} MiB", (r["images_per_s"], r["top1"]),
                    textcoords="offset points", xytext=(8, 6), fontsize=8)
    ax.set_xlabel("training images/s")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"{name}: accuracy vs training speed (bubble area ∝ memory)")
    ax.margins(0.25)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def curves_figure(path: Path, name: str, rows: list[dict], curves: dict[str, list[dict]], target: float) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for r in rows:
        points = curves[r["label"]]
        ax.plot([p["train_seconds"] for p in points], [p["top1"] for p in points], marker="o",
                color=COLOURS.get(r["method"], "black"), label=r["label"])
    ax.axhline(target, color="black", lw=0.8, ls=":", label=f"target {target:.1f} %")
    ax.set_xlabel("training time (s, evaluation excluded)")
    ax.set_ylabel("validation top-1 (%)")
    ax.set_title(f"{name}: accuracy during training")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def serving_figure(path: Path, serve: dict) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    n = [r["tasks"] for r in serve["scaling"]]
    for method in ("SNOW", "FE", "FT"):
        if f"{method}_images_per_s" not in serve["scaling"][0]:
            continue
        ax.plot(n, [r[f"{method}_images_per_s"] for r in serve["scaling"]], marker="o", color=COLOURS[method],
                label=method)
    ax.plot(n, [r["ideal_snow_images_per_s"] for r in serve["scaling"]], ls="--", color=COLOURS["SNOW"],
            label="SNOW, FLOP-count ideal")
    ax.axhline(serve["source_images_per_s"], color="black", lw=0.8, ls=":", label="source alone")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(n, [str(x) for x in n])
    ax.set_xlabel("added tasks N (served with the source's own task)")
    ax.set_ylabel("images/s")
    ax.set_title("Serving: one batch answered for every task")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_all(out: Path, analysis: dict, results: list[dict]) -> list[Path]:
    """Every figure for the run's `analysis` (see :func:`benchmarks.analysis.analyse`)."""
    paths = []
    for name, a in analysis["datasets"].items():
        if not a["rows"]:
            continue
        paths.append(training_figure(out / f"training_{name}.png", name, a["rows"]))
        curves = {r["job"]["label"].split(" · ")[0]: r["loop"]["curve"] for r in results
                  if "error" not in r and r["job"]["kind"] == "train" and r["dataset"]["name"] == name}
        paths.append(curves_figure(out / f"curves_{name}.png", name, a["rows"], curves, a["target_top1"]))
    if analysis["serving"]:
        paths.append(serving_figure(out / "serving.png", analysis["serving"]))
    return paths
