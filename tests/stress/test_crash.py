"""``snowhub add-task`` killed at every crash point, at random steps, and on a disk that fills up.

All crashes hit one hub, one after another, like a machine that keeps failing. Every kill is triggered by
an event, never by a clock, so it provably lands mid-operation: the process either signals itself at a
crash point (``SNOWHUB_FAULT``) or stops itself there (``=SIGSTOP``) and is then killed from outside. Each
test checks that the process died of that signal, that the fault-injection trace ends at the point aimed
at, and that after the next open the hub is exactly as before (``snapshot``: every file's sha256 and the
registry's rows), or, when the kill came after the commit, holds exactly the new task. At the end a last
add-task succeeds and ``verify-forgetting`` proves every task bit-identical.

The random kills draw their points from ``random.Random(SNOWHUB_STRESS_SEED)`` (default 16) and print
them; rerun with the printed seed to repeat a failure.
"""

from __future__ import annotations

import json
import os
import random
import signal
from collections import Counter
from pathlib import Path

import pytest

from fixtures.hubkit import FAST_ARGS, snapshot, task_names
from snowhub.faults import POINTS, TRACE_ENV

SEED = int(os.environ.get("SNOWHUB_STRESS_SEED", "16"))

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
# Kills from outside at a random training step or image, the process held there by SIGSTOP first. The
# signals rotate so that each kind is sent; the points are drawn (see _draw).
RANDOM_KILLS = 12
RANDOM_SIGNALS = [signal.SIGKILL, signal.SIGKILL, signal.SIGTERM, signal.SIGKILL, signal.SIGINT, signal.SIGKILL]
EXIT_STATUS = {signal.SIGKILL: -9, signal.SIGTERM: -15, signal.SIGINT: 130}  # Ctrl-C: the CLI exits 130

# The full-disk run that must stop at the probe file: 64 px images, a narrow delta and half of the images
# held out, so that the probe file (18 images of 64 px, ~220 kB) is larger than the delta (~165 kB) and one
# file-size limit lets the delta through and stops the probe.
DISK_ARGS = ("--epochs", "1", "--image-size", "64", "--batch-size", "16", "--device", "cpu",
             "--width-divisor", "64", "--val-fraction", "0.5")
SHM_BYTES = 32_768  # SQLite's WAL index (hub.db-shm), created on open: any smaller limit fails there


@pytest.fixture(scope="module")
def hub(runner, stress_data, tmp_path_factory) -> dict:
    """One hub for the whole module, the names of the tasks it must hold, and how many times an add-task
    like those of the tests reaches each crash point (traced from the first one)."""
    root = tmp_path_factory.mktemp("crash")
    path = root / "hub"
    done = runner.run("init", "--source", "efficientnet_lite0", "--hub", path)
    assert done["rc"] == 0, done["stderr"]
    done = runner.run("add-task", "base", "--data", stress_data["a"], "--hub", path, *FAST_ARGS,
                      env={"SNOWHUB_FAULT": "", TRACE_ENV: str(root / "base.trace")})
    assert done["rc"] == 0, done["stderr"]
    counts = Counter(line.split()[0] for line in (root / "base.trace").read_text().splitlines())
    assert set(counts) == set(POINTS), counts  # one add-task passes every point
    return {"path": path, "root": root, "tasks": ["base"], "counts": counts, "kills": [], "outcomes": []}


def _files(path: Path) -> set[str]:
    return {p.relative_to(path).as_posix() for d in ("tasks", "staging") for p in (path / d).iterdir()}


def _trace(hub: dict, name: str) -> tuple[Path, dict[str, str]]:
    trace = hub["root"] / f"{name}.trace"
    return trace, {TRACE_ENV: str(trace)}


def _last_point(trace: Path) -> str:
    lines = trace.read_text().splitlines() if trace.exists() else []
    return lines[-1] if lines else "(no crash point reached)"


def _complete_safetensors(path: Path) -> bool:
    """Whether `path` is a whole safetensors file: its header parses and its data ends where the file does."""
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    end = max(v["data_offsets"][1] for k, v in header.items() if k != "__metadata__")
    return len(data) == 8 + size + end


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


def _after_the_kill(runner, hub: dict, name: str, before: dict[str, str], committed: bool,
                    cleaned_itself: bool) -> None:
    """After a killed add-task: the next open removes what it left, and the hub is exactly as before,
    or (`committed`) exactly as before plus the new task's two files and row."""
    path = hub["path"]
    leftovers = _files(path) - {k for k in before}
    if committed:
        leftovers -= {f"tasks/{len(hub['tasks']) + 1:04d}-{name}.{k}.safetensors" for k in ("delta", "probe")}
    if cleaned_itself:  # Ctrl-C before the commit: add-task removed its own files on the way out
        assert not leftovers, leftovers
    listed = runner.run("list", "--hub", path)  # the next open: recovery
    assert listed["rc"] == 0, listed["stderr"]
    assert ("removed" in listed["stderr"]) == bool(leftovers), (leftovers, listed["stderr"])
    if committed:
        hub["tasks"].append(name)
    after = snapshot(path)
    if committed:
        new = {f"tasks/{len(hub['tasks']):04d}-{name}.{k}.safetensors" for k in ("delta", "probe")}
        assert set(after) - set(before) == new and set(before) <= set(after)
        assert {k: v for k, v in after.items() if k not in new and k != "hub.db (rows)"} == \
               {k: v for k, v in before.items() if k != "hub.db (rows)"}
        assert after["hub.db (rows)"] != before["hub.db (rows)"]
    else:
        assert after == before
    _check_consistent(runner, hub)


def _aimed_at(fault: str) -> str:
    """The trace line of the hit a SNOWHUB_FAULT spec acts on (``save:mid-write:2=SIGINT``: ``save:mid-write 2``)."""
    spec = fault.partition("=")[0]
    point, _, count = spec.rpartition(":")
    return f"{point} {count}" if point and count.isdigit() else f"{spec} 1"


def test_every_named_point_is_in_the_matrix():
    assert {_aimed_at(spec).split()[0] for spec, _, _ in CRASHES} == set(POINTS)


@pytest.mark.parametrize(("fault", "status", "commits"), CRASHES, ids=[c[0] for c in CRASHES])
def test_crash_at_a_named_point(runner, hub, stress_data, fault, status, commits):
    name = f"t{len(hub['tasks']) + 1}-{len(hub['kills'])}"
    before = snapshot(hub["path"])
    trace, env = _trace(hub, name)
    done = runner.run("add-task", name, "--data", stress_data["a"], "--hub", hub["path"], *FAST_ARGS,
                      env={"SNOWHUB_FAULT": fault, **env})
    assert done["rc"] == status, done["stderr"]
    assert "Traceback" not in done["stderr"]
    assert _last_point(trace) == _aimed_at(fault)  # it died exactly there, not before, not after
    point, hit = _aimed_at(fault).split()
    if point.startswith("save:") and status == -9:  # what the kill left of the file being written
        kind = ("delta", "probe")[int(hit) - 1]
        final = hub["path"] / "tasks" / f"{len(hub['tasks']) + 1:04d}-{name}.{kind}.safetensors"
        temporary = list(final.parent.glob(f".{final.name}.*.tmp"))
        if point == "save:after-rename":
            assert final.exists() and not temporary and _complete_safetensors(final)
        else:  # a half-written or unrenamed file never has the final name
            assert not final.exists() and len(temporary) == 1, sorted(p.name for p in final.parent.iterdir())
    hub["kills"].append(f"{fault}: exit {done['rc']}")
    _after_the_kill(runner, hub, name, before, commits, cleaned_itself=status == 130 and not commits)


def _draw(hub: dict, attempt: int) -> tuple[str, int, signal.Signals]:
    """The `attempt`-th random kill: a training step or a decoded image of a typical add-task."""
    rng = random.Random(f"{SEED}-{attempt}")
    point = rng.choice(["train-step", "load-image"])
    return point, rng.randint(1, hub["counts"][point]), RANDOM_SIGNALS[attempt % len(RANDOM_SIGNALS)]


@pytest.mark.parametrize("attempt", range(RANDOM_KILLS))
def test_killed_from_outside_at_a_random_step(runner, hub, stress_data, attempt):
    """Held (SIGSTOP) at a random step, then killed from outside: the kill provably lands mid-training."""
    point, count, sig = _draw(hub, attempt)
    print(f"seed {SEED}, kill {attempt}: {sig.name} at {point}:{count}")
    name = f"r{attempt}"
    before = snapshot(hub["path"])
    trace, env = _trace(hub, name)
    ident = runner.start("add-task", name, "--data", stress_data["a"], "--hub", hub["path"], *FAST_ARGS,
                         env={"SNOWHUB_FAULT": f"{point}:{count}=SIGSTOP", **env})
    runner.until_stopped(ident)
    assert _last_point(trace) == f"{point} {count}"
    runner.kill(ident, sig)
    if sig != signal.SIGKILL:
        runner.kill(ident, signal.SIGCONT)  # the signal is delivered when it runs again
    done = runner.wait(ident)
    assert done["rc"] == EXIT_STATUS[sig], done["stderr"]
    assert "Traceback" not in done["stderr"]
    hub["kills"].append(f"{sig.name} at {point}:{count} (seed {SEED}): exit {done['rc']}")
    _after_the_kill(runner, hub, name, before, committed=False, cleaned_itself=sig == signal.SIGINT)


@pytest.fixture(scope="module")
def disk_sizes(runner, hub, stress_data) -> dict[str, int]:
    """The sizes of the files the full-disk runs write, measured: ``delta`` from the module's first task
    (the runs that stop at the delta are the same add-task), ``probe-run delta`` and ``probe-run probe``
    from a successful add-task with DISK_ARGS under a generous limit (which also shows that a limit by
    itself breaks nothing)."""
    stem = hub["path"] / "tasks" / "0001-base"
    sizes = {"delta": Path(f"{stem}.delta.safetensors").stat().st_size}
    name = "disk-fits"
    done = runner.run("add-task", name, "--data", stress_data["b"], "--hub", hub["path"], *DISK_ARGS,
                      rlimit_fsize=16_000_000)
    assert done["rc"] == 0, done["stderr"]
    hub["tasks"].append(name)
    stem = hub["path"] / "tasks" / f"{len(hub['tasks']):04d}-{name}"
    for kind in ("delta", "probe"):
        sizes[f"probe-run {kind}"] = Path(f"{stem}.{kind}.safetensors").stat().st_size
    # What the limits below rely on: the WAL index (32 kB) and the intent (< 1 kB) fit well under half a
    # delta, and the probe-run's probe file is clearly larger than its delta.
    assert sizes["delta"] // 2 > 2 * SHM_BYTES, sizes
    assert sizes["probe-run probe"] > 1.2 * sizes["probe-run delta"], sizes
    _check_consistent(runner, hub)
    hub["outcomes"].append(f"full-disk file sizes: {sizes}")
    return sizes


# The write that must fail: (add-task options, the file its error names, a crash point the trace must
# show passed (everything before that write succeeded), one it must not show (that write failed)).
DISK_CASES = {
    "open": (FAST_ARGS, "hub.db", None, "add-task:start 1"),  # the registry's WAL index, before anything
    "delta": (FAST_ARGS, ".delta.safetensors", "add-task:trained 1", "save:mid-write 1"),
    "probe": (DISK_ARGS, ".probe.safetensors", "save:after-rename 1", "save:mid-write 2"),
    "commit": (FAST_ARGS, "hub.db", "registry:before-commit 1", "registry:after-commit 1"),
}


@pytest.mark.parametrize("write", DISK_CASES)
def test_a_full_disk(runner, hub, stress_data, disk_sizes, write):
    """A disk that is full at one chosen write: exit 1, one clear error line naming that write, no
    traceback, and the hub exactly as before, cleaned up by the failed add-task itself.

    `open`, `delta` and `probe` put a file-size limit on the whole add-task (RLIMIT_FSIZE: a write past it
    fails with EFBIG, as on a full disk), measured so that this write is the first to cross it: 16 kB (under
    the 32 kB WAL index SQLite creates when it opens hub.db), half the delta, half-way between the delta
    and the (larger) probe file. No limit can reach the registry commit that way (its WAL is 8-25 kB,
    smaller than the files written before it), so `commit` fills the disk just before it: the fault
    ``add-task:files-written=FSIZE:4096`` (the WAL's first 4 kB page frame does not fit).
    """
    args, names, reached, not_reached = DISK_CASES[write]
    name = f"disk-{write}"
    limit = {"open": SHM_BYTES // 2, "delta": disk_sizes["delta"] // 2,
             "probe": (disk_sizes["probe-run delta"] + disk_sizes["probe-run probe"]) // 2}.get(write)
    fault = "add-task:files-written=FSIZE:4096" if write == "commit" else ""
    data = stress_data["a" if write == "delta" else "b"]
    before = snapshot(hub["path"])
    trace, env = _trace(hub, name)
    done = runner.run("add-task", name, "--data", data, "--hub", hub["path"], *args, rlimit_fsize=limit,
                      env={"SNOWHUB_FAULT": fault, **env})
    lines = [line for line in done["stderr"].splitlines() if line.strip()]
    hub["outcomes"].append(f"disk full at the {write} ({f'limit {limit} B' if limit else fault}): exit "
                           f"{done['rc']}: {lines[-1] if lines else ''}")
    assert done["rc"] == 1 and "Traceback" not in done["stderr"], done["stderr"]
    assert [line for line in lines if line.startswith("error: ")] == [lines[-1]], done["stderr"]
    assert lines[-1].startswith("error: cannot ") and "free some disk space" in lines[-1], lines[-1]
    assert names in lines[-1].split(" (")[0], lines[-1]  # the error names the write the limit was for
    traced = trace.read_text().splitlines() if trace.exists() else []
    assert reached is None or reached in traced, traced[-3:]
    assert not_reached not in traced, traced[-3:]
    # add-task removed what it had written itself, before any other open could.
    assert _files(hub["path"]) == {k for k in before if k.startswith(("tasks/", "staging/"))}
    assert snapshot(hub["path"]) == before
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
    print(f"\n{len(hub['kills'])} kills landed; tasks: {hub['tasks']}", *hub["kills"], *hub["outcomes"], sep="\n")
