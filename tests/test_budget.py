"""`add-task --budget PARAMS` (issue 28): the width divisor and K ratio of the largest delta that fits the
budget, printed and recorded with the task; --width-divisor / --k-ratio, when given, are kept."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from conftest import FAST_ARGS
from fixtures.hubkit import assert_one_line_error
from snowhub.errors import ConfigError
from snowhub.models.budget import K_RATIOS, WIDTH_DIVISORS, delta_parameters, fit_budget
from snowhub.models.delta import Delta, DeltaShape
from snowhub.models.sources import get_spec
from snowhub_cli.main import app


@pytest.mark.parametrize("source", ["efficientnet_lite0", "resnet18"])
@pytest.mark.parametrize("budget", [200_000, 500_000, 2_000_000])
def test_fit_budget_picks_the_largest_delta_that_fits(source, budget):
    spec = get_spec(source)
    choice = fit_budget(spec.block, spec.taps, 10, budget)
    assert choice.params <= budget
    assert choice.params == Delta(choice.shape).serving_parameter_count()  # the count is the real delta's
    every = [delta_parameters(DeltaShape.from_ratios(spec.block, spec.taps, w, k, 10))
             for w in WIDTH_DIVISORS for k in K_RATIOS]
    assert choice.params == max(p for p in every if p <= budget)
    kept = fit_budget(spec.block, spec.taps, 10, budget, width_divisor=16.0)
    assert kept.width_divisor == 16.0 and kept.params <= budget


def test_a_budget_below_the_smallest_delta_is_refused():
    spec = get_spec("efficientnet_lite0")
    with pytest.raises(ConfigError, match=r"`budget` 1,000 parameters is below the smallest delta .*\(\d[\d,]* parameters\)"):
        fit_budget(spec.block, spec.taps, 10, 1_000)


def _cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_add_task_budget_is_printed_recorded_and_given_knobs_win(hub_copy, fashion_dir):
    fast = [a for a in FAST_ARGS] + ["--hub", hub_copy]
    fast[fast.index("--epochs") + 1] = "1"
    added = _cli("add-task", "b60k", "--data", fashion_dir, "--budget", "60k", *fast)
    assert added.exit_code == 0, added.output
    task = json.loads(_cli("show", "b60k", "--hub", hub_copy, "--json").output)
    h = task["hyperparams"]
    assert h["budget"] == 60_000 and h["budget_params"] <= 60_000
    assert h["budget_params"] == task["delta_params"] + task["k_total"]  # the delta and its K selected scores
    assert (h["width_divisor"], h["k_ratio"]) != (8.0, 1 / 8)  # chosen, not the defaults
    assert f"budget 60.0 k: width divisor {h['width_divisor']:g}, K ratio {h['k_ratio']:g}" in added.output

    given = _cli("add-task", "b2m", "--data", fashion_dir, "--budget", "2M", "--width-divisor", "16", *fast)
    assert given.exit_code == 0, given.output
    h = json.loads(_cli("show", "b2m", "--hub", hub_copy, "--json").output)["hyperparams"]
    assert h["width_divisor"] == 16.0 and h["budget_keeps"] == ["width_divisor"] and h["k_ratio"] == K_RATIOS[-1]

    too_small = _cli("add-task", "tiny", "--data", fashion_dir, "--budget", "1k", *fast)
    assert_one_line_error(too_small, "--budget 1,000 parameters is below the smallest delta")
    assert "tiny" not in _cli("list", "--hub", hub_copy).output
    not_a_number = _cli("add-task", "x", "--data", fashion_dir, "--budget", "lots", *fast)
    assert not_a_number.exit_code == 2 and "'lots' is not a number of parameters" in not_a_number.output
