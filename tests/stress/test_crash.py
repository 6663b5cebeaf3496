"""``snowhub add-task`` killed with SIGKILL at every crash point, at random moments and on a full disk.

All crashes hit one hub, one after another, like a machine that keeps failing. After each: the hub opens,
``list`` shows exactly the tasks committed before, no leftover survives the next open, ``doctor`` finds
nothing wrong; at the end a last add-task succeeds and ``verify-forgetting`` proves every task intact.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest

from fixtures.hubkit import FAST_ARGS, task_names
from snowhub.faults import POINTS

# (SNOWHUB_FAULT, expected exit status, whether the task is committed)
CRASHES = [
    ("add-task:start", -9, False),
    ("add-task:data-found", -9, False),
    ("add-task:locked", -9, False),
    ("load-image:1", -9, False),
    ("load-image:40", -9, False),
    ("train-step:1", -9, False),
    ("train-step:3", -9, False),
    ("train-step:2=SIGTERM", -15, False),
    ("add-task:trained", -9, False),
    ("save:mid-write", -9, False),
    ("save:mid-write:2", -9, False),
    ("save:before-rename", -9, False),
    ("save:before-rename:2", -9, False),
    ("save:after-rename", -9, False),
    ("save:after-rename:2", -9, False),
    ("add-task:files-written", -9, False),
    ("add-task:files-written=SIGINT", 130, False),
    ("registry:before-commit", -9, False),
    ("registry:after-commit", -9, True),
    ("registry:after-commit=SIGINT", 130, True),
]
RANDOM_KILLS = 5
# Bytes a file may grow to: too little for SQLite's WAL index (fails at open), for the delta (after
# training), and enough for everything.
DISK_LIMITS = [2_000, 40_000, 300_000, 4_000_000]


@pytest.fixture(scope="module")
def hub(runner, stress_data, tmp_path_factory) -> dict:
    """One hub for the whole module, and the names of the tasks it must hold."""
    path = tmp_path_factory.mktemp("crash") / "hub"
    done = runner.run("init", "--source", "efficientnet_lite0", "--hub", path)
    assert done["rc"] == 0, done["stderr"]
    done = runner.run("add-task", "base", "--data", stress_data["a"], "--hub", path, *FAST_ARGS)
    assert done["rc"] == 0, done["stderr"]
    return {"path": path, "tasks": ["base"], "crashes": 0, "outcomes": []}


def _check_consistent(runner, state: dict) -> None:
    """The hub holds exactly the committed tasks, cleans up on open, and the doctor is satisfied."""
    path: Path = state["path"]
    listed = runner.run("list", "--json", "--hub", path)
    assert listed["rc"] == 0, listed["stderr"]
    assert "Traceback" not in listed["stderr"]
    assert [t["name"] for t in json.loads(listed["stdout"])["tasks"]] == ["imagenet", *state["tasks"]]
    assert task_names(path) == state["tasks"]
    # The open above removed every leftover: only the committed tasks' files remain.
    files = sorted(p.name for p in (path / "tasks").iterdir())
    assert files == sorted(f"{i:04d}-{n}.{k}.safetensors" for i, n in enumerate(state["tasks"], 1)
                           for k in ("delta", "probe"))
    assert list((path / "staging").iterdir()) == []
    assert [p.name for p in (path / "source").iterdir()] == ["efficientnet_lite0.safetensors"]
    doctor = runner.run("doctor", "--hub", path)
    assert doctor["rc"] == 0 and doctor["stderr"] == "", doctor["stderr"] + doctor["stdout"]


def test_every_named_point_is_in_the_matrix():
    assert {spec.split("=")[0].rsplit(":", 1)[0] if spec.split("=")[0].rsplit(":", 1)[-1].isdigit()
            else spec.split("=")[0] for spec, _, _ in CRASHES} == set(POINTS)


@pytest.mark.parametrize(("fault", "status", "commits"), CRASHES, ids=[c[0] for c in CRASHES])
def test_crash_at_a_named_point(runner, hub, stress_data, fault, status, commits):
    name = f"t{len(hub['tasks']) + 1}-{hub['crashes']}"
    done = runner.run("add-task", name, "--data", stress_data["a"], "--hub", hub["path"], *FAST_ARGS,
                      env={"SNOWHUB_FAULT": fault})
    hub["crashes"] += 1
    assert done["rc"] == status, done["stderr"]
    assert "Traceback" not in done["stderr"]
    if commits:
        hub["tasks"].append(name)
    _check_consistent(runner, hub)


@pytest.mark.parametrize("attempt", range(RANDOM_KILLS))
def test_killed_at_a_random_moment(runner, hub, stress_data, attempt):
    """kill -9 from outside, at a moment drawn between start-up and the end of a typical add-task."""
    delay = random.Random(attempt).uniform(0.2, 6.0 + 3 * attempt)
    name = f"r{attempt}"
    ident = runner.start("add-task", name, "--data", stress_data["c"], "--hub", hub["path"], *FAST_ARGS)
    time.sleep(delay)
    runner.kill(ident)
    done = runner.wait(ident)
    hub["crashes"] += 1
    hub["outcomes"].append(f"kill after {delay:.1f} s: exit {done['rc']}")
    assert done["rc"] in (-9, 0), done["stderr"]
    if done["rc"] == 0:  # it finished before the kill arrived
        hub["tasks"].append(name)
    _check_consistent(runner, hub)


@pytest.mark.parametrize("limit", DISK_LIMITS)
def test_a_full_disk(runner, hub, stress_data, limit):
    """Every write past `limit` bytes fails (EFBIG, as on a full disk): weight files or the registry."""
    name = f"disk{limit}"
    done = runner.run("add-task", name, "--data", stress_data["b"], "--hub", hub["path"], *FAST_ARGS,
                      rlimit_fsize=limit)
    assert "Traceback" not in done["stderr"]
    hub["outcomes"].append(f"files limited to {limit} B: exit {done['rc']} "
                           f"{done['stderr'].strip().splitlines()[-1] if done['rc'] else ''}")
    if done["rc"] == 0:
        hub["tasks"].append(name)
    else:
        lines = done["stderr"].strip().splitlines()
        assert done["rc"] == 1 and lines[-1].startswith("error: cannot "), done["stderr"]
        assert "free some disk space" in lines[-1]
    _check_consistent(runner, hub)


def test_after_all_that_the_hub_still_learns_and_forgot_nothing(runner, hub, stress_data):
    done = runner.run("add-task", "survivor", "--data", stress_data["a"], "--hub", hub["path"], *FAST_ARGS)
    assert done["rc"] == 0, done["stderr"]
    hub["tasks"].append("survivor")
    _check_consistent(runner, hub)
    verified = runner.run("verify-forgetting", "--json", "--device", "cpu", "--hub", hub["path"])
    assert verified["rc"] == 0, verified["stderr"]
    report = json.loads(verified["stdout"])
    assert report["ok"] and report["bwt"] == 0.0
    assert [t["name"] for t in report["tasks"]] == hub["tasks"]
    assert all(t["bit_identical"] for t in report["tasks"])
    print(f"\n{hub['crashes']} crashes survived; tasks: {hub['tasks']}", *hub["outcomes"], sep="\n")
