"""The issue-28 front harness: how its method names read, and the gaps its report pairs by seed."""

from __future__ import annotations

import pytest

from benchmarks.research.front import parse_budget, split_rate
from benchmarks.research.front_report import gap_summary, tables


def test_method_names_carry_the_rate_and_the_budget():
    assert split_rate("FO lr0.1") == ("FO", {"lr": 0.1})
    assert split_rate("SNOW gate lr0.05") == ("SNOW gate", {"snow_lr": 0.05})
    assert split_rate("SNOW clf-lr") == ("SNOW clf-lr", {})  # a variant's name, not a rate
    assert split_rate("FE-paper") == ("FE-paper", {})
    assert [parse_budget(t) for t in ("500k", "2.68M", "140000")] == [500_000, 2_680_000, 140_000]


def _row(method: str, seed: int, top1: float, params: int, dataset: str = "digits", epochs: int = 2) -> dict:
    return {"method": method, "dataset": dataset, "seed": seed, "epochs": epochs, "image_size": 32, "top1": top1,
            "curve": [top1 - 5, top1], "params": {"task": params}, "train_images": 600, "val_images": 179}


def test_gaps_are_paired_by_seed_and_only_over_the_seeds_both_ran():
    rows = [_row("SNOW", 0, 80.0, 140_694), _row("SNOW", 1, 90.0, 140_694), _row("SNOW", 2, 70.0, 140_694),
            _row("FE-paper", 0, 85.0, 130_570), _row("FE-paper", 1, 84.0, 130_570),  # seed 2 did not run
            _row("SNOW", 0, 60.0, 140_694, dataset="fashion30", epochs=10)]
    summary = gap_summary(rows).splitlines()
    assert summary[0] == "| gap, points: mean (min – max), seeds | digits 2 ep | fashion30 10 ep |"
    fe_paper = next(line for line in summary if line.startswith("| SNOW − FE-paper |"))
    assert fe_paper == "| SNOW − FE-paper | +0.50 (-5.00 – +6.00), 2 | — |"  # (80-85, 90-84)
    assert not any(line.startswith("| SNOW − FT |") for line in summary)  # a gap no column has is left out

    table = tables(rows, {"SNOW": 1_310_000, "FE-paper": 260_000})
    digits = table.split("### ")[1]
    assert digits.index("| FE-paper | 130.6 k | 0.26 | 84.50 (84.00 – 85.00) | 2 |") \
        < digits.index("| SNOW | 140.7 k | 1.31 | 80.00 (70.00 – 90.00) | 3 |")  # ordered by parameters per task
    assert "| SNOW − FE-paper | 0.50 (-5.00 – 6.00) | 2 |" in digits  # and the same gap under its dataset


@pytest.mark.parametrize("bad", ["fast", "1.5x"])
def test_a_budget_that_is_not_a_number_is_refused(bad):
    with pytest.raises(ValueError):
        parse_budget(bad)
