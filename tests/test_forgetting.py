"""The forgetting checker's verdicts across numerics environments (bit-identical, within tolerance, changed).

The end-to-end tests re-verify a real hub in a subprocess that runs other CPU kernels
(``ONEDNN_MAX_CPU_ISA=SSE41``: oneDNN's SSE4.1 convolutions instead of the AVX2/AVX-512 ones), and nudge one
weight of a delta and re-seal its records, as someone with the code could, so only the probe re-run can
tell.
"""

from __future__ import annotations

import json

import pytest
import torch

from fixtures.hubkit import rewrite_task_file, run_cli, sql
from snowhub import Hub
from snowhub.checks.forgetting import BIT_IDENTICAL, CHANGED, WITHIN_TOLERANCE, judge_logits
from snowhub.numerics import describe_environment, numerics_environment, same_environment
from snowhub.probe import LEGACY_PROBE_BATCH, LOGIT_TOLERANCE, PROBE_BATCH, probe_batch, probe_logits

OTHER_KERNELS = {"ONEDNN_MAX_CPU_ISA": "SSE41"}


def _logits() -> torch.Tensor:
    return torch.tensor([[4.0, 1.0, -2.0], [0.5, 3.0, 1.0]])


# -- the verdict itself -------------------------------------------------------------------------------


@pytest.mark.parametrize("same_env", [True, False, None])
def test_equal_logits_are_bit_identical_anywhere(same_env):
    assert judge_logits(_logits(), _logits().clone(), same_env) == (BIT_IDENTICAL, None)


def test_any_difference_in_the_same_environment_is_a_change():
    verdict, problem = judge_logits(_logits(), _logits() + 1e-6, same_env=True)
    assert verdict == CHANGED and "in the environment they were recorded in" in problem


@pytest.mark.parametrize("same_env", [False, None])  # None: recorded before environments were (schema < 0003)
def test_a_small_difference_elsewhere_is_within_tolerance(same_env):
    assert judge_logits(_logits(), _logits() + LOGIT_TOLERANCE / 2, same_env) == (WITHIN_TOLERANCE, None)


def test_strict_demands_bit_identical_elsewhere_too():
    verdict, problem = judge_logits(_logits(), _logits() + 1e-6, same_env=False, strict=True)
    assert verdict == CHANGED and "--strict" in problem


def test_drift_beyond_the_tolerance_elsewhere_is_a_change():
    verdict, problem = judge_logits(_logits(), _logits() + 2 * LOGIT_TOLERANCE, same_env=False)
    assert verdict == CHANGED and "beyond the tolerance" in problem


def test_a_changed_label_is_a_change_even_within_the_tolerance():
    recorded = torch.tensor([[1.0, 1.0 - LOGIT_TOLERANCE / 4]])
    now = torch.tensor([[1.0 - LOGIT_TOLERANCE / 4, 1.0]])  # tiny drift, but the top-1 label flipped
    verdict, problem = judge_logits(recorded, now, same_env=False)
    assert verdict == CHANGED and "1 probe label(s) changed" in problem


def test_the_environment_names_the_kernels_and_compares_whole():
    env = numerics_environment(torch.device("cpu"))
    assert env["device"] == "cpu" and env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert env["torch"] == torch.__version__ and "kernel_limits" in env
    assert same_environment(env, dict(env)) is True
    assert same_environment(env, env | {"kernel_limits": OTHER_KERNELS}) is False
    assert same_environment(None, env) is None
    assert describe_environment(None) == "not recorded" and env["cpu_capability"] in describe_environment(env)


# -- end to end ---------------------------------------------------------------------------------------


def _verify(hub, *extra: str, env: dict | None = None) -> tuple[int, dict]:
    result = run_cli("verify-forgetting", "--hub", str(hub), "--device", "cpu", "--json", *extra, env=env)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, json.loads(result.stdout)


def test_a_task_records_where_its_probe_logits_were_computed(trained_hub):
    with Hub.open(trained_hub) as hub:
        recorded = hub.task("fashion").details["probe_environment"]
        report = hub.verify_forgetting(device="cpu")
    assert recorded == numerics_environment(torch.device("cpu"))
    assert report.ok and report.checked_environment == recorded
    assert [(t.verdict, t.same_environment, t.bit_identical) for t in report.tasks] == [(BIT_IDENTICAL, True, True)] * 2


def test_probe_logits_are_rerun_in_the_batch_they_were_recorded_in(trained_hub):
    """Logits can depend on the batch in their last bits, so the batch is recorded with the task (tasks from
    before it was recorded ran 64 at a time) and every re-run uses it."""
    with Hub.open(trained_hub) as hub:
        row = hub.registry.get_task("fashion")
        artifacts = hub.artifacts(torch.device("cpu"))
        probe = artifacts.probe(row)
        rerun = probe_logits(artifacts.source(), artifacts.delta(row), probe.images, torch.device("cpu"),
                             probe.batch_size)
    assert row.hyperparams["probe_batch"] == PROBE_BATCH == probe.batch_size < len(probe.labels)  # > 1 pass
    assert torch.equal(rerun, probe.logits)
    assert probe_batch({}) == LEGACY_PROBE_BATCH == 64 and probe_batch({"probe_batch": 8}) == 8


def test_other_cpu_kernels_verify_within_tolerance_not_changed(trained_hub):
    code, report = _verify(trained_hub, env=OTHER_KERNELS)
    assert code == 0 and report["ok"] and report["bwt"] == 0.0
    assert report["checked_environment"]["kernel_limits"] == OTHER_KERNELS
    for task in report["tasks"]:
        # The kernels really differ (else this test proves nothing), and the difference is tolerated.
        assert task["verdict"] == WITHIN_TOLERANCE and task["same_environment"] is False, task
        assert 0 < task["max_logit_diff"] <= LOGIT_TOLERANCE and not task["bit_identical"]
    code, strict = _verify(trained_hub, "--strict", env=OTHER_KERNELS)
    assert code == 2 and not strict["ok"] and {t["verdict"] for t in strict["tasks"]} == {CHANGED}


def _nudge_delta(hub_dir, seq: int, delta: float, tensor: str = "classifier.bias") -> None:
    """Add `delta` to one element of one tensor of task `seq`'s delta file, with hashes and seals redone."""
    def nudge(tensors):
        tensors[tensor].view(-1)[0] += delta
        return tensors

    rewrite_task_file(hub_dir, seq, "delta", nudge)


@pytest.mark.parametrize("env", [None, OTHER_KERNELS], ids=["same-kernels", "other-kernels"])
def test_a_nudged_and_resealed_delta_is_changed_in_either_environment(hub_copy, env):
    _nudge_delta(hub_copy, 1, 0.05)  # one class's logit moves by 0.05
    code, report = _verify(hub_copy, env=env)
    fashion, fashion2 = report["tasks"]
    assert code == 2 and not report["ok"] and fashion["verdict"] == CHANGED, fashion
    assert fashion2["verdict"] == (BIT_IDENTICAL if env is None else WITHIN_TOLERANCE)
    result = run_cli("verify-forgetting", "--hub", str(hub_copy), "--device", "cpu", env=env)
    assert result.returncode == 2 and "task 'fashion': " in result.stderr and "FAILED" in result.stdout


def test_a_drift_below_the_tolerance_is_caught_in_the_same_environment(hub_copy):
    _nudge_delta(hub_copy, 2, 1e-4)
    with Hub.open(hub_copy) as hub:
        report = hub.verify_forgetting(device="cpu")
    fashion2 = report.tasks[1]
    assert fashion2.verdict == CHANGED and 0 < fashion2.max_logit_diff < LOGIT_TOLERANCE
    assert fashion2.problems == [f"probe logits differ by up to {fashion2.max_logit_diff:.3g} "
                                 "in the environment they were recorded in"]


def test_an_edited_recorded_environment_is_caught_by_its_seal(hub_copy):
    sql(hub_copy, "UPDATE task SET probe_environment = NULL WHERE seq = 1")  # claim "unknown": a weaker check
    with Hub.open(hub_copy) as hub:
        report = hub.verify_forgetting(device="cpu")
    assert [t.verdict for t in report.tasks] == ["damaged", BIT_IDENTICAL]
    assert "record was changed after it was written" in report.tasks[0].problems[0]
