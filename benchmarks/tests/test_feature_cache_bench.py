"""``benchmarks.feature_cache`` (issue 15): FT and the product's SNOW with augmentation, without it, and with
``--cache-features``, side by side in one run, and its report."""

from __future__ import annotations

import json

from benchmarks.feature_cache import main


def test_the_feature_cache_benchmark_runs_every_row_and_reports_the_ratios(tmp_path):
    out = tmp_path / "run"
    assert main(["--config", "smoke", "--out", str(out), "--methods", "FT,SNOW,SNOW no augmentation,SNOW cached"]) == 0
    rows = {p.stem: json.loads(p.read_text()) for p in out.glob("fashion-*.json")}
    assert set(rows) == {"fashion-FT", "fashion-SNOW", "fashion-SNOW_no_augmentation", "fashion-SNOW_cached"}
    cached = rows["fashion-SNOW_cached"]
    assert 0 < cached["cache_seconds"] < cached["train_seconds"]  # filling the cache is training time
    assert all(r["cache_seconds"] == 0 for k, r in rows.items() if k != "fashion-SNOW_cached")
    assert all(0 <= r["top1"] <= 100 and len(r["curve"]) >= 1 for r in rows.values())
    report = (out / "report.md").read_text()
    assert "| SNOW cached |" in report and "FT s ÷ method s" in report and "1.00×" in report
