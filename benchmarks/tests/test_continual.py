"""``python -m benchmarks continual --config smoke``: snowhub and Avalanche's Naive on two tiny tasks of Split
Fashion-MNIST (real images, 32 px, 1 epoch), through the suite's own entry point, in this process."""

from __future__ import annotations

import json

from benchmarks.__main__ import main


def test_the_smoke_configuration_writes_matrices_with_snowhub_forgetting_nothing(tmp_path):
    out = tmp_path / "run"
    assert main(["continual", "--config", "smoke", "--in-process", "--out", str(out),
                 "--data", str(tmp_path / "data")]) == 0
    results = json.loads((out / "results.json").read_text())
    rows = {row["method"]: row for row in results["rows"]}
    assert set(rows) == {"snowhub", "Naive"}
    for row in rows.values():
        (run,) = row["runs"]
        assert [len(r) for r in run["matrix"]] == [1, 2], run["matrix"]  # R[i][j] for j <= i, two tasks
        assert all(0 <= a <= 100 for r in run["matrix"] for a in r)
        assert len(run["train_seconds"]) == 2 and run["bytes"]["per_task"] > 0
    summary = {s["method"]: s for s in results["summary"]["methods"]}
    snow = rows["snowhub"]["runs"][0]["matrix"]
    assert snow[1][0] == snow[0][0] and summary["snowhub"]["bwt"]["mean"] == 0.0  # nothing forgotten, exactly
    assert summary["snowhub"]["forgetting"]["mean"] == 0.0
    report = (out / "results.md").read_text()
    assert "| snowhub |" in report and "| Naive |" in report and "python -m benchmarks continual" in report
    assert (out / "continual-split-fashion-matrix.png").stat().st_size > 0
    assert (out / "continual-accuracy-vs-bytes.png").stat().st_size > 0
