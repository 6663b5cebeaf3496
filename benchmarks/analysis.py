"""From raw job results to the comparison: per-dataset rows, time to accuracy, and the headline ratios.

All ratios come from measurements of the same run:

* SNOW ÷ FT training images/s, FT ÷ SNOW training memory (per dataset);
* SNOW − FE and SNOW − FT top-1 (percentage points, per dataset);
* SNOW ÷ FT serving images/s for the source task + N added tasks, and SNOW ÷ source-alone forward.
"""

from __future__ import annotations

from dataclasses import asdict

from benchmarks.configs import BenchConfig, SnowVariant

DEFAULT_VARIANT = asdict(SnowVariant())


def is_default_snow(result: dict) -> bool:
    return result["job"]["method"] == "SNOW" and result["job"]["variant"] == DEFAULT_VARIANT


def time_to_accuracy(curve: list[dict], target: float) -> dict | None:
    """First validation point with top-1 ≥ `target` %: its training seconds, images (None where the curve does
    not count them, as ``benchmarks.feature_cache``'s) and epoch; None if never."""
    for point in curve:
        if point["top1"] >= target:
            return {"train_seconds": point["train_seconds"], "images": point.get("images"), "epoch": point["epoch"]}
    return None


def row(result: dict, target: float | None) -> dict:
    """One table row of a training result."""
    loop = result["loop"]
    return {"label": result["job"]["label"].split(" · ")[0], "method": result["job"]["method"],
            "variant": result["job"]["variant"], "top1": result["top1"], "top5": result["top5"],
            "images_per_s": loop["images_per_s"], "images_per_cpu_s": loop["images_per_cpu_s"],
            "memory_mib": result["memory"]["training_mib"],
            "rss_peak_mib": result["memory"]["rss_peak_mib"], "trainable_params": result["params"]["trainable"],
            "task_params": result["params"]["task"], "subscription_params": result["params"].get("subscription"),
            "train_seconds": loop["train_seconds"],
            "time_to_target": time_to_accuracy(loop["curve"], target) if target is not None else None}


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def dataset_analysis(config: BenchConfig, name: str, trained: list[dict]) -> dict:
    """Main-method rows, the accuracy target, and the training ratios for dataset `name`."""
    main = [r for r in trained if r["dataset"]["name"] == name
            and (r["job"]["method"] != "SNOW" or is_default_snow(r))]
    if not main:
        return {"rows": [], "target_top1": None, "ratios": {}}
    target = config.target_fraction * max(r["top1"] for r in main)
    order = {m: i for i, m in enumerate(config.methods)}
    rows = sorted((row(r, target) for r in main), key=lambda x: order.get(x["method"], 99))
    by = {x["method"]: x for x in rows}
    snow, ft, fe = by.get("SNOW"), by.get("FT"), by.get("FE")
    get = lambda x, k: x[k] if x else None  # noqa: E731
    ratios = {
        "snow_over_ft_train_images_per_s": _ratio(get(snow, "images_per_s"), get(ft, "images_per_s")),
        "snow_over_ft_train_images_per_cpu_s": _ratio(get(snow, "images_per_cpu_s"), get(ft, "images_per_cpu_s")),
        "ft_over_snow_memory": _ratio(get(ft, "memory_mib"), get(snow, "memory_mib")),
        "ft_over_snow_rss_peak": _ratio(get(ft, "rss_peak_mib"), get(snow, "rss_peak_mib")),
        "snow_minus_fe_top1": snow["top1"] - fe["top1"] if snow and fe else None,
        "snow_minus_ft_top1": snow["top1"] - ft["top1"] if snow and ft else None,
    }
    return {"rows": rows, "target_top1": target, "ratios": ratios,
            "train_images": main[0]["dataset"]["train_images"], "val_images": main[0]["dataset"]["val_images"],
            "val_source": main[0]["dataset"]["val_source"]}


def variant_rows(config: BenchConfig, trained: list[dict]) -> dict[str, list[dict]]:
    """SNOW and its variants on each ablation dataset (default first)."""
    out = {}
    for name in config.ablation_datasets:
        snow = [r for r in trained if r["dataset"]["name"] == name and r["job"]["method"] == "SNOW"]
        snow.sort(key=lambda r: not is_default_snow(r))
        out[name] = [row(r, None) for r in snow]
    return out


def serving_ratios(serve: dict | None) -> dict:
    if not serve:
        return {}
    table = serve["table"]
    out = {"tasks": serve["table_tasks"]}
    for unit in ("images_per_s", "images_per_cpu_s"):
        out |= {
            f"snow_over_ft_serving_{unit}": _ratio(table.get("SNOW", {}).get(unit), table.get("FT", {}).get(unit)),
            f"snow_serving_over_source_alone_{unit}": _ratio(table.get("SNOW", {}).get(unit),
                                                             serve[f"source_{unit}"]),
            f"snow_over_ideal_{unit}": [_ratio(r[f"SNOW_{unit}"], r[f"ideal_snow_{unit}"]) for r in serve["scaling"]],
        }
    return out


def analyse(config: BenchConfig, results: list[dict]) -> dict:
    """Everything the report shows, derived from `results` (failed jobs are listed, not used)."""
    ok = [r for r in results if "error" not in r]
    trained = [r for r in ok if r["job"]["kind"] == "train"]
    serve = next((r for r in ok if r["job"]["kind"] == "serve"), None)
    from benchmarks.speed import speed_analysis

    return {
        "speed": speed_analysis([r for r in ok if r["job"]["kind"] == "speed"]),
        "datasets": {d.name: dataset_analysis(config, d.name, trained) for d in config.datasets},
        "variants": variant_rows(config, trained),
        "serving": serve,
        "serving_ratios": serving_ratios(serve),
        "failed": [{"job": r["job"]["label"], "error": r["error"], "log": r.get("log")}
                   for r in results if "error" in r],
    }
