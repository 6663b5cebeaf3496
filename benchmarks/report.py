"""Write a ``methods`` run's ``results.md`` (tables), ``results.json`` (every setting and measurement, in the
envelope of :mod:`benchmarks.output`) and figures; the ``report`` suite re-renders them from ``results.json``."""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks import paper
from benchmarks.analysis import analyse
from benchmarks.configs import BenchConfig
from benchmarks.output import read_results, write_results


def fmt_params(n: int | None) -> str:
    if n is None:
        return "—"
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} k"


def fmt(value: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def table(headers: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _time_to(row: dict) -> str:
    t = row["time_to_target"]
    return "not reached" if t is None else f"{t['train_seconds']:.0f} s (epoch {t['epoch']:.2f})"


def training_section(name: str, a: dict, config: BenchConfig) -> list[str]:
    if not a["rows"]:
        return [f"### {name}: no results", ""]
    lines = [f"### {name} ({a['train_images']} training images, {a['val_images']} held-out "
             f"{'test' if a['val_source'] == 'given' else 'validation'} images)", ""]
    rows = [[r["label"], fmt(r["top1"]), fmt(r["top5"]), fmt(r["images_per_s"], ".1f"),
             fmt(r["images_per_cpu_s"], ".1f"), fmt(r["memory_mib"], ".0f"), fmt(r["rss_peak_mib"], ".0f"),
             fmt_params(r["trainable_params"]), fmt_params(r["task_params"]), _time_to(r)] for r in a["rows"]]
    lines += table(["method", "top-1 %", "top-5 %", "train images/s", "train images/CPU-s", "memory MiB",
                    "peak RSS MiB", "trainable", "per-task params", f"time to {a['target_top1']:.2f} % top-1"], rows)
    r = a["ratios"]
    lines += ["", f"SNOW ÷ FT training images/s: **{fmt(r['snow_over_ft_train_images_per_s'], '.2f', '×')}** "
              f"(per CPU-second: {fmt(r['snow_over_ft_train_images_per_cpu_s'], '.2f', '×')}); "
              f"FT ÷ SNOW memory: **{fmt(r['ft_over_snow_memory'], '.2f', '×')}** "
              f"(peak RSS {fmt(r['ft_over_snow_rss_peak'], '.2f', '×')}); "
              f"SNOW − FE top-1: **{fmt(r['snow_minus_fe_top1'], '+.2f', ' pp')}**; "
              f"SNOW − FT top-1: **{fmt(r['snow_minus_ft_top1'], '+.2f', ' pp')}**.", ""]
    return lines


def variants_section(variants: dict) -> list[str]:
    lines = []
    for name, rows in variants.items():
        if not rows:
            continue
        lines += [f"### SNOW variants on {name} (subscription: paper Table 5; K and width: section 3.1)", ""]
        lines += table(["variant", "subscription params", "delta params", "top-1 %", "top-5 %",
                        "train images/s", "train images/CPU-s", "memory MiB"],
                       [[r["label"], fmt_params(r["subscription_params"]), fmt_params(r["task_params"]),
                         fmt(r["top1"]), fmt(r["top5"]), fmt(r["images_per_s"], ".1f"),
                         fmt(r["images_per_cpu_s"], ".1f"), fmt(r["memory_mib"], ".0f")] for r in rows])
        lines.append("")
    return lines


def serving_section(serve: dict | None, ratios: dict) -> list[str]:
    if not serve:
        return []
    n = serve["table_tasks"]
    lines = [f"### Serving the source's task + {n} added tasks on one batch of {serve['batch']} images "
             f"(paper Table 4 serves ImageNet + 5)", ""]
    lines += table(["method", "total params", "images/s", "images/CPU-s", "paper: total params",
                    "paper: images/s (V100)"],
                   [[m, fmt_params(v["params"]), fmt(v["images_per_s"], ".1f"), fmt(v["images_per_cpu_s"], ".1f"),
                     f"{paper.TABLE4_SERVING[m][0]:.1f} M", f"{paper.TABLE4_SERVING[m][1]:.1f}"]
                    for m, v in serve["table"].items()])
    lines += ["", f"SNOW ÷ FT serving images/s: **{fmt(ratios['snow_over_ft_serving_images_per_s'], '.2f', '×')}** "
              f"(per CPU-second {fmt(ratios['snow_over_ft_serving_images_per_cpu_s'], '.2f', '×')}; paper "
              f"{paper.paper_ratios()['snow_over_ft_serving_images_per_s']:.2f}×); SNOW serving ÷ source-alone "
              f"forward: **{fmt(ratios['snow_serving_over_source_alone_images_per_s'], '.2f', '×')}** (per CPU-second "
              f"{fmt(ratios['snow_serving_over_source_alone_images_per_cpu_s'], '.2f', '×')}). "
              f"Source alone: {serve['source_images_per_s']:.1f} images/s; FLOPs per image: source "
              f"{serve['flops_per_image']['source'] / 1e6:.1f} M, one delta "
              f"{serve['flops_per_image']['delta'] / 1e6:.2f} M.", "", "### Serving cost vs number of added tasks", ""]
    rows = []
    for r, wall, cpu in zip(serve["scaling"], ratios["snow_over_ideal_images_per_s"],
                            ratios["snow_over_ideal_images_per_cpu_s"]):
        rows.append([str(r["tasks"]), fmt(r["SNOW_images_per_s"], ".1f"), fmt(r["ideal_snow_images_per_s"], ".1f"),
                     fmt(wall, ".2f"), fmt(cpu, ".2f"), fmt(r.get("FE_images_per_s"), ".1f"),
                     fmt(r.get("FT_images_per_s"), ".1f"), fmt_params(r["SNOW_params"]),
                     fmt_params(r.get("FE_params")), fmt_params(r.get("FT_params"))])
    lines += table(["tasks N", "SNOW images/s", "FLOP ideal images/s", "SNOW ÷ ideal", "SNOW ÷ ideal per CPU-s",
                    "FE images/s", "FT images/s", "SNOW params", "FE params", "FT params"], rows)
    return lines + [""]


def _low_memory(choice: dict | None) -> str:
    """A speed row's ``--low-memory`` as the product resolved it: ``on (auto)``, ``off (off)``, or — (not SNOW)."""
    return "—" if not choice else f"{'on' if choice['low_memory'] else 'off'} ({choice['low_memory_asked']})"


def speed_section(speed: dict) -> list[str]:
    """The ``speed`` jobs: training images/s and memory per batch size, beside the paper's Table 7."""
    if not speed:
        return []
    t7 = paper.TABLE7_TRAINING
    lines = ["## Training speed and memory at the paper's geometry (paper Table 7: batch 256, V100)", ""]
    for batch, b in speed.items():
        lines += [f"### batch {batch}", ""]
        lines += table(["method", "train images/s", "train images/CPU-s", "memory MiB", "peak RSS MiB", "trainable",
                        "autocast", "low memory", "paper images/s (mean)", "paper GB (mean)"],
                       [[m, fmt(r["images_per_s"], ".2f"), fmt(r["images_per_cpu_s"], ".2f"),
                         fmt(r["memory_mib"], ".0f"), fmt(r["rss_peak_mib"], ".0f"), fmt_params(r["trainable"]),
                         str(r.get("amp_dtype")), _low_memory(r.get("low_memory")), f"{paper.mean(x[0] for x in t7[m.split()[0]]):.0f}",
                         f"{paper.mean(x[1] for x in t7[m.split()[0]]):.1f}"] for m, r in b["rows"].items()])
        r = b["ratios"]
        lines += ["", f"Batch {batch}: SNOW ÷ FT training images/s **{fmt(r.get('snow_over_ft_images_per_s'), '.2f', '×')}** "
                  f"(per CPU-second {fmt(r.get('snow_over_ft_images_per_cpu_s'), '.2f', '×')}; paper "
                  f"{paper.paper_ratios()['snow_over_ft_train_images_per_s']:.2f}×); FT ÷ SNOW memory "
                  f"**{fmt(r.get('ft_over_snow_memory'), '.2f', '×')}** (paper "
                  f"{paper.paper_ratios()['ft_over_snow_memory']:.2f}×).", ""]
    return lines


def paper_section() -> list[str]:
    r = paper.paper_ratios()
    lines = ["### The paper's numbers (ResNet-50, 224 px, Tesla V100; not comparable in absolute terms)", ""]
    lines += table(["method"] + [f"{d} top-1 (top-5)" for d in paper.PAPER_DATASETS] +
                   [f"{d} images/s, GB" for d in paper.PAPER_DATASETS],
                   [[m] + [f"{a:.2f} ({b:.2f})" for a, b in paper.TABLE6_ACCURACY[m]] +
                    [f"{s:.0f}, {g:.1f}" for s, g in paper.TABLE7_TRAINING[m]] for m in paper.TABLE6_ACCURACY])
    lines += ["", "Paper ratios (mean of 5 datasets): "
              f"SNOW ÷ FT training images/s {r['snow_over_ft_train_images_per_s']:.2f}×, "
              f"FT ÷ SNOW memory {r['ft_over_snow_memory']:.2f}×, "
              f"SNOW ÷ FT serving {r['snow_over_ft_serving_images_per_s']:.2f}×, "
              f"SNOW − FE top-1 {r['snow_minus_fe_top1']:+.2f} pp, "
              f"SNOW − FT top-1 {r['snow_minus_ft_top1']:+.2f} pp.", ""]
    return lines


def settings_lines(config: BenchConfig, env: dict, wall: float, command: str) -> list[str]:
    gpu = env["gpu"]["name"] if env.get("gpu") else "none"
    load = " / ".join(f"{env[k][0]:.1f}" for k in ("load_average_start", "load_average_end") if env.get(k))
    code = env.get("code", {})
    product = f"snowhub/ at commit {code.get('commit')}" + (
        f" plus uncommitted changes to {', '.join(code['uncommitted_product_files'])}"
        if code.get("uncommitted_product_files") else "")
    return [
        f"`{command}` — {wall / 60:.1f} min wall time. Product measured: {product} "
        f"(sha256 of its .py files {str(code.get('snowhub_sha256'))[:12]}).", "",
        f"Machine: {env['cpu']} ({env['cpu_count']} cores, {env['memory_gib']} GiB), GPU {gpu}; {env['os']}; "
        f"Python {env['python']}, torch {env['packages']['torch']}, torchvision {env['packages']['torchvision']}; "
        f"1-minute load average at start / end: {load}", "",
        f"Settings: source {config.source}, {config.image_size} px, batch {config.batch_size}, {config.epochs} epochs, "
        f"SGD momentum 0.9, weight decay {config.weight_decay:g}, {config.warmup_epochs:g}-epoch warm-up then cosine; "
        f"peak lr {config.lr:g} (FO, FE, FT, MP, PN), {config.snow_lr:g} (SNOW delta; channel pooling scores "
        f"×{config.score_lr_scale:g}); K = N/8 (at the classifier's tap: the measured "
        f"product's default), width ÷ 8, σ² = {config.noise_var:g}; seed {config.seed}; "
        f"{config.threads or 'default'} CPU thread(s) per worker process. Memory: "
        + ("`torch.cuda.max_memory_allocated`." if gpu != "none" and config.device != "cpu" else
           "peak resident set size of the method's own process minus its size after importing the libraries."),
        "",
    ]


def markdown(config: BenchConfig, a: dict, env: dict, wall: float, command: str) -> str:
    lines = [f"# snowhub benchmark: {config.name}", ""] + settings_lines(config, env, wall, command)
    if a["failed"]:
        lines += ["**Failed jobs:**", ""] + [f"- {f['job']}: {f['error']} ({f['log']})" for f in a["failed"]] + [""]
    lines += ["## Training (paper Fig. 4, Tables 6 and 7)", ""]
    for name, d in a["datasets"].items():
        lines += training_section(name, d, config)
    lines += variants_section(a["variants"])
    if a.get("speed"):
        lines = [ln for ln in lines if ln != "## Training (paper Fig. 4, Tables 6 and 7)"] + speed_section(a["speed"])
    if a["serving"]:
        lines += ["## Serving (paper section 3.2)", ""] + serving_section(a["serving"], a["serving_ratios"])
    lines += ["## Reference", ""] + paper_section()
    return "\n".join(lines).rstrip() + "\n"


def write_report(out: Path, config: BenchConfig, results: list[dict], env: dict, wall: float,
                 command: str, suite: str = "methods") -> list[Path]:
    """Write results.json, results.md and the figures into `out`; return the paths written.

    The envelope's ``rows`` are the jobs' results, ``settings`` the configuration, ``summary`` the analysis
    (:func:`benchmarks.analysis.analyse`) with the paper's tables under ``paper``.
    """
    a = analyse(config, results)
    summary = a | {"paper": {"table4": paper.TABLE4_SERVING, "table5": paper.TABLE5_SUBSCRIPTION,
                             "table6": paper.TABLE6_ACCURACY, "table7": paper.TABLE7_TRAINING,
                             "ratios": paper.paper_ratios()}}
    paths = write_results(out, suite, command, results, markdown(config, a, env, wall, command),
                          settings=config.to_dict(), environment=env, summary=summary, wall_seconds=wall)
    try:
        from benchmarks.plots import plot_all
    except ImportError:  # matplotlib is optional (the "benchmarks" extra)
        return paths
    return paths + plot_all(out, a, results)


def add_arguments(p: argparse.ArgumentParser, suite: str = "report") -> None:
    """``python -m benchmarks report RUN_DIR``."""
    p.add_argument("run", type=Path, help="a methods run folder holding results.json")


def run(args: argparse.Namespace) -> int:
    """Re-render a run's results.md and figures from its results.json (same envelope, same command)."""
    from benchmarks.worker import config_from_dict

    saved = read_results(args.run)
    if saved["suite"] not in ("methods", "paper-cpu", "serving"):
        raise SystemExit(f"{args.run}: a {saved['suite']} run; report re-renders methods runs only")
    paths = write_report(args.run, config_from_dict(saved["settings"]), saved["rows"], saved["environment"],
                         saved["wall_seconds"], saved["command"], saved["suite"])
    print("\n".join(str(p) for p in paths))
    return 0
