"""Fixtures of the stress suite: real snowhub processes, crashed and run side by side.

The suite takes several minutes, so a plain ``pytest`` skips it; it runs when asked for by path
(``pytest tests/stress``, or one of its files) or with ``SNOWHUB_STRESS=1``. Its tests carry the
``stress`` marker (``pytest -m stress tests/stress``).

``runner`` starts :mod:`forkrunner` once per session; every snowhub command it runs is a forked child,
so a test can start dozens of processes without paying for ``import torch`` each time. Every wait on it
has a timeout (a command, an event such as a process stopping at a crash point, an answer of the
forkrunner itself): a hang fails the test with what the process printed, it does not hang the run.
"""

from __future__ import annotations

import itertools
import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # `fixtures.hubkit` and `conftest_data` when run on their own


def pytest_configure(config):
    config.addinivalue_line("markers", "stress: slow tests with real, crashed and concurrent snowhub processes")


def _asked_for(config) -> bool:
    if os.environ.get("SNOWHUB_STRESS") == "1":
        return True
    for arg in config.args:
        path = Path(config.invocation_params.dir, arg.split("::")[0]).resolve()
        if path == HERE or HERE in path.parents:
            return True
    return False


def pytest_collection_modifyitems(config, items):
    run = _asked_for(config)
    skip = pytest.mark.skip(reason="stress suite (minutes): run `pytest tests/stress` or set SNOWHUB_STRESS=1")
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.stress)
            if not run:
                item.add_marker(skip)


# Seconds a snowhub command may run before the runner kills it and the test fails (a FAST_ARGS add-task
# takes a few seconds; verify-forgetting of the crash hub about ten), and the most any single wait for an
# event (a process stopping at a crash point, a line on its stderr) may take.
COMMAND_TIMEOUT = 240
EVENT_TIMEOUT = 120
STARTUP_TIMEOUT = 300  # the forkrunner's own `import torch`, on a loaded machine


class Runner:
    """Client of a running forkrunner: start/wait/kill/peek snowhub processes, each wait with a timeout."""

    event_timeout = EVENT_TIMEOUT

    def __init__(self):
        self._proc = subprocess.Popen([sys.executable, str(HERE / "forkrunner.py")], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, bufsize=0)
        self._ids = itertools.count()
        self._buffer = b""
        self.pids: dict[str, int] = {}
        self.argv: dict[str, list[str]] = {}
        self._answer("start", STARTUP_TIMEOUT)  # {"ready": true} once it has imported torch and the CLI

    def _ask(self, request: dict, timeout: float = 60) -> dict:
        """Send one request and read its answer, failing (not hanging) if none comes within `timeout` s."""
        if self._proc.poll() is not None:
            raise RuntimeError(f"the forkrunner died (exit {self._proc.returncode})")
        self._proc.stdin.write((json.dumps(request) + "\n").encode())
        answer = self._answer(request["op"], timeout)
        if "error" in answer:
            raise RuntimeError(f"forkrunner could not {request['op']} {request.get('id')}: {answer['error']}")
        return answer

    def _answer(self, what: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                self._proc.kill()
                raise RuntimeError(f"the forkrunner gave no answer to {what} in {timeout} s; killed it")
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                raise RuntimeError("the forkrunner died")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return json.loads(line)

    def start(self, *argv: str, env: dict | None = None, rlimit_fsize: int | None = None) -> str:
        ident = str(next(self._ids))
        self.argv[ident] = [str(a) for a in argv]
        answer = self._ask({"op": "start", "id": ident, "argv": self.argv[ident], "env": env or {},
                            "rlimit_fsize": rlimit_fsize})
        self.pids[ident] = answer["pid"]
        return ident

    def wait(self, ident: str, timeout: float = COMMAND_TIMEOUT) -> dict:
        """The finished process: ``rc`` (negative: the signal that killed it), ``stdout``, ``stderr``.

        Fails the test if it has not finished within `timeout` seconds (it is killed then)."""
        done = self._ask({"op": "wait", "id": ident, "timeout": timeout}, timeout + 60)
        if done["timed_out"]:
            raise AssertionError(f"`snowhub {' '.join(self.argv[ident])}` still ran after {timeout} s; killed. "
                                 f"stderr:\n{done['stderr'][-3000:]}")
        return done

    def kill(self, ident: str, signal: int = 9) -> None:
        self._ask({"op": "kill", "id": ident, "signal": int(signal)})

    def peek(self, ident: str) -> dict:
        """``state`` (a /proc state letter: ``T`` = stopped, ``Z`` = exited) and the output so far."""
        return self._ask({"op": "peek", "id": ident})

    def until(self, ident: str, what: str, ready, timeout: float = EVENT_TIMEOUT) -> dict:
        """Poll the running process until ``ready(peek)`` holds; fail if it exits first or after `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            seen = self.peek(ident)
            if ready(seen):
                return seen
            if seen["state"] in ("Z", "X", "?"):
                raise AssertionError(f"`snowhub {' '.join(self.argv[ident])}` exited before {what}; "
                                     f"stderr:\n{seen['stderr'][-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"`snowhub {' '.join(self.argv[ident])}`: no {what} after {timeout} s "
                                     f"(state {seen['state']}); stderr:\n{seen['stderr'][-3000:]}")
            time.sleep(0.02)

    def until_stopped(self, ident: str, timeout: float = EVENT_TIMEOUT) -> dict:
        """Wait until the process has stopped itself (a ``...=SIGSTOP`` crash point)."""
        return self.until(ident, "stop at its SIGSTOP crash point", lambda s: s["state"] in ("T", "t"), timeout)

    def until_stderr(self, ident: str, text: str, timeout: float = EVENT_TIMEOUT) -> dict:
        return self.until(ident, f"{text!r} on stderr", lambda s: text in s["stderr"], timeout)

    def cleanup(self) -> list[str]:
        """Kill and reap every process nobody waited for (e.g. one left stopped by a failed test)."""
        return self._ask({"op": "cleanup"}, 120)["killed"]

    def run(self, *argv: str, timeout: float = COMMAND_TIMEOUT, **kwargs) -> dict:
        return self.wait(self.start(*argv, **kwargs), timeout)

    def close(self) -> None:
        self._proc.stdin.close()
        try:
            self._proc.wait(60)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(10)
            raise


@pytest.fixture(scope="session")
def runner():
    r = Runner()
    yield r
    r.close()


@pytest.fixture(autouse=True)
def _no_process_left_behind(request):
    """After each test, kill whatever it left running or stopped (a failed test may leave a writer stopped
    while it holds the lock, which would otherwise make every later test wait for it)."""
    yield
    if "runner" in request.fixturenames:
        request.getfixturevalue("runner").cleanup()


@pytest.fixture(scope="session")
def stress_data(tmp_path_factory) -> dict[str, Path]:
    """Small real datasets: three of 3 classes x 20 Fashion-MNIST pictures, one of 2 classes."""
    from fixtures.hubkit import small_dataset

    root = tmp_path_factory.mktemp("stress-data")
    return {"a": small_dataset(root / "a"), "b": small_dataset(root / "b", classes=2, per_class=18),
            "c": small_dataset(root / "c", classes=4, per_class=12)}

