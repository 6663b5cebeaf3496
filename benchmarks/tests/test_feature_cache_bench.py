"""``python -m benchmarks feature-cache`` (issue 15): FT and the product's SNOW with augmentation, without it, and
with ``--cache-features``, side by side in one run, and its report."""

from __future__ import annotations

import pytest

from benchmarks.__main__ import main
from benchmarks.output import read_results

CHANCE = 100 / 10  # the smoke configuration's Fashion-MNIST: 10 classes


def test_the_feature_cache_benchmark_runs_every_row_and_reports_the_ratios(tmp_path):
    out = tmp_path / "run"
    methods = ("FT", "SNOW", "SNOW no augmentation", "SNOW cached")
    assert main(["feature-cache", "--config", "smoke", "--out", str(out), "--methods", ",".join(methods)]) == 0
    envelope = read_results(out, "feature-cache")
    assert envelope["settings"]["name"] == "smoke" and envelope["command"].startswith("python -m benchmarks feature-cache")
    rows = {r["method"]: r for r in envelope["rows"]}
    assert list(rows) == list(methods) and all(r["dataset"] == "fashion" for r in rows.values())
    cached = rows["SNOW cached"]
    assert 0 < cached["cache_seconds"] < cached["train_seconds"]  # filling the cache is training time
    assert all(r["cache_seconds"] == 0 for k, r in rows.items() if k != "SNOW cached")
    for method, r in rows.items():
        assert r["top1"] == r["curve"][-1]["top1"], f"{method}: the final top-1 is the last evaluation's"
        assert r["train_seconds"] == pytest.approx(r["curve"][-1]["train_seconds"], rel=0.05)
    # One epoch on 160 images: every SNOW row learns (55-69 % measured), far above chance; FT at the
    # baselines' lr does not yet (13 %), so it is not held to it.
    assert all(rows[m]["top1"] > 3 * CHANCE for m in methods[1:]), {m: r["top1"] for m, r in rows.items()}
    report = (out / "results.md").read_text()
    for method, r in rows.items():
        speed = rows["FT"]["train_seconds"] / r["train_seconds"]
        assert f"| {method} | {r['top1']:.2f} | {r['top5']:.2f} | {r['train_seconds']:.1f} |" in report
        assert f"| {speed:.2f}× |" in report
