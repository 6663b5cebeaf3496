"""``python -m benchmarks front --report DIR ... --out OUT``: the issue-28 tables and the front figures.

Reads every ``rows.jsonl`` the ``front`` grid wrote and writes ``OUT/table.md`` (per dataset and budget: each
method's parameters and serving FLOPs per task, top-1 mean and min–max over its seeds; then the gaps the
issue asks for, paired by seed) and ``OUT/front_<dataset>_<epochs>ep.png`` (top-1 against parameters per
task, log x, mean with the min–max as error bars; the methods and SNOW's budgets, not the SNOW variants or FO
at the paper's rate when FO at 0.1 ran). Serving FLOPs per task are counted with
``torch.utils.flop_counter`` for one image at the grid's size and 10 classes: what one more task adds to a
served batch beside the shared source (FT: a whole network; FO: a linear layer on the shared features).
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

import torch

# (label in tables, its harness method): today's FE is the last stage retrained.
LABELS = {"FE": "FE-stage", "FE-paper": "FE-paper", "FO lr0.1": "FO at lr 0.1"}
GAPS = (("SNOW − FO (lr 0.025)", "SNOW", "FO"), ("SNOW − FO at lr 0.1", "SNOW", "FO lr0.1"), ("SNOW − FE-paper", "SNOW", "FE-paper"),
        ("SNOW@2.68M − FE-stage", "SNOW@2.68M", "FE"), ("SNOW − FT", "SNOW", "FT"),
        ("SNOW gate − SNOW", "SNOW gate", "SNOW"), ("SNOW gate − FO at lr 0.1", "SNOW gate", "FO lr0.1"),
        ("SNOW clf-lr − SNOW", "SNOW clf-lr", "SNOW"), ("SNOW lr0.05 − SNOW", "SNOW lr0.05", "SNOW"),
        ("SNOW@500k − SNOW", "SNOW@500k", "SNOW"), ("SNOW@500k − FE-paper", "SNOW@500k", "FE-paper"))


def _rows(folders: list[Path]) -> list[dict]:
    rows = {}
    for folder in folders:
        for line in (folder / "rows.jsonl").read_text().splitlines():
            r = json.loads(line)
            rows[(r["method"], r["dataset"], r["seed"], r["epochs"])] = r  # a rerun replaces the earlier row
    return list(rows.values())


def serving_flops(methods: set[str], image_size: int) -> dict[str, int]:
    """FLOPs one more task adds per image (10 classes) for each of `methods`."""
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks.backbones import load_pretrained, suffix_after_tap
    from benchmarks.baselines import PaperFeatureExtraction, build_baseline
    from benchmarks.configs import SnowVariant
    from benchmarks.snow import build_delta
    from snowhub.models.budget import fit_budget

    pretrained = load_pretrained("efficientnet_lite0")
    source, spec = pretrained.frozen_source(), pretrained.spec
    x = source.normalizer(torch.zeros(1, 3, image_size, image_size, dtype=torch.uint8))
    taps, _ = source(x)

    def count(fn) -> int:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            fn()
        return int(counter.get_total_flops())

    flops = {"FO": 2 * 1280 * 10, "FO lr0.1": 2 * 1280 * 10, "FT": count(lambda: build_baseline("FT", pretrained, 10).eval()(
        torch.zeros(1, 3, image_size, image_size, dtype=torch.uint8)))}
    flops["FE"] = count(lambda: suffix_after_tap(spec, pretrained.copy().eval(), -2)(taps[-2]))
    flops["FE-paper"] = count(lambda: PaperFeatureExtraction(source, 10).eval().from_taps(taps))
    for method in (m for m in methods if m.startswith("SNOW")):
        variant = SnowVariant()
        if "@" in method:
            from benchmarks.research.front import parse_budget

            choice = fit_budget(spec.block, spec.taps, 10, parse_budget(method.split("@")[1]))
            variant = SnowVariant(k_ratio=choice.k_ratio, width_divisor=choice.width_divisor)
        delta = build_delta(spec, 10, variant, 1e-3).eval()
        flops[method] = count(lambda: delta(x, taps))  # gate / clf-lr: the same delta; head: +9.6 k for 960 inputs
    return flops


def _stats(values: list[float]) -> str:
    if not values:
        return "—"
    mean = statistics.fmean(values)
    return f"{mean:.2f} ({min(values):.2f} – {max(values):.2f})" if len(values) > 1 else f"{mean:.2f}"


def _params(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} k"


def _grouped(rows: list[dict]) -> dict[tuple[str, int], dict[str, dict[int, dict]]]:
    """(dataset, epochs) → method → seed → row."""
    by = defaultdict(dict)
    for r in rows:
        by[(r["dataset"], r["epochs"])].setdefault(r["method"], {})[r["seed"]] = r
    return by


def _paired(methods: dict[str, dict[int, dict]], a: str, b: str) -> list[float]:
    """Top-1 of `a` minus `b`, points, seed by seed over the seeds both ran."""
    common = sorted(set(methods.get(a, {})) & set(methods.get(b, {})))
    return [methods[a][s]["top1"] - methods[b][s]["top1"] for s in common]


def _signed(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:+.2f}, 1"
    return f"{statistics.fmean(values):+.2f} ({min(values):+.2f} – {max(values):+.2f}), {len(values)}"


def gap_summary(rows: list[dict]) -> str:
    """The issue's gaps side by side: one row per gap, one column per (dataset, epochs); each cell the mean
    (min – max) over the seeds both methods ran, paired by seed, and how many seeds."""
    by = _grouped(rows)
    keys = sorted(by, key=lambda k: (k[1], k[0]))
    out = ["| gap, points: mean (min – max), seeds | " + " | ".join(f"{d} {e} ep" for d, e in keys) + " |",
           "|---|" + "---|" * len(keys)]
    for label, a, b in GAPS:
        cells = [_signed(diffs) if (diffs := _paired(by[key], a, b)) else "—" for key in keys]
        if any(c != "—" for c in cells):
            out.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def tables(rows: list[dict], flops: dict[str, int]) -> str:
    out = []
    for (dataset, epochs), methods in sorted(_grouped(rows).items()):
        any_row = next(iter(next(iter(methods.values())).values()))
        out += [f"### {dataset}, {epochs} epochs ({any_row['train_images']} training / {any_row['val_images']} "
                f"validation images, {any_row['image_size']} px)", "",
                "| method | parameters per task | serving MFLOPs per task | top-1 % mean (min – max) | seeds |",
                "|---|---|---|---|---|"]
        order = sorted(methods, key=lambda m: next(iter(methods[m].values()))["params"]["task"])
        for m in order:
            seeds = methods[m]
            params = next(iter(seeds.values()))["params"]["task"]
            out.append(f"| {LABELS.get(m, m)} | {_params(params)} | {flops.get(m, 0) / 1e6:.2f} | "
                       f"{_stats([s['top1'] for s in seeds.values()])} | {len(seeds)} |")
        out += ["", "| gap, points (paired by seed) | mean (min – max) | seeds |", "|---|---|---|"]
        variants = [(f"{m} − SNOW", m, "SNOW") for m in sorted(methods)
                    if m.startswith("SNOW ") and f"{m} − SNOW" not in {g[0] for g in GAPS}]
        for label, a, b in GAPS + tuple(variants):
            if diffs := _paired(methods, a, b):
                out.append(f"| {label} | {_stats(diffs)} | {len(diffs)} |")
        if "SNOW" in methods:  # choosing the final epoch on validation (optimistic: here it is also the test set)
            snow = methods["SNOW"].values()
            best = [max(s["curve"]) - s["top1"] for s in snow]
            out.append(f"| SNOW at its best validation epoch − SNOW at the last | {_stats(best)} | {len(best)} |")
        out.append("")
    return "\n".join(out)


def figure(path: Path, dataset: str, epochs: int, methods: dict[str, dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    snow = []
    for m, seeds in methods.items():
        if m.startswith("SNOW ") or (m == "FO" and "FO lr0.1" in methods):  # variants, the weaker FO: table.md
            continue
        top1 = [s["top1"] for s in seeds.values()]
        params = next(iter(seeds.values()))["params"]["task"]
        mean = statistics.fmean(top1)
        colour = "tab:green" if m.startswith("SNOW") else {"FO": "tab:gray", "FO lr0.1": "black", "FE": "tab:blue", "FE-paper": "tab:cyan",
                                                            "FT": "tab:red"}.get(m, "black")
        ax.errorbar(params, mean, yerr=[[mean - min(top1)], [max(top1) - mean]], fmt="o", color=colour, capsize=3)
        ax.annotate(f"{LABELS.get(m, m)} (n={len(top1)})", (params, mean), textcoords="offset points", xytext=(5, 4),
                    fontsize=7)
        if m == "SNOW" or m.startswith("SNOW@"):
            snow.append((params, mean))
    if len(snow) > 1:
        ax.plot(*zip(*sorted(snow)), color="tab:green", alpha=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("parameters per task (log)")
    ax.set_ylabel("top-1 % (mean, min–max over seeds)")
    ax.set_title(f"{dataset}, {epochs} epochs: accuracy against per-task size")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(folders: list[Path], out: Path) -> int:
    """Write ``table.md`` and one figure per dataset and budget into `out`."""
    rows = _rows(folders)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    flops = serving_flops({r["method"] for r in rows}, rows[0]["image_size"])
    (out / "table.md").write_text("## The gaps, every dataset and budget\n\n" + gap_summary(rows) + "\n"
                                  + tables(rows, flops))
    for (dataset, epochs), methods in _grouped(rows).items():
        figure(out / f"front_{dataset}_{epochs}ep.png", dataset, epochs, methods)
    print((out / "table.md").read_text())
    return 0
