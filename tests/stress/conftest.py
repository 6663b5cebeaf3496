"""Fixtures of the stress suite: real snowhub processes, crashed and run side by side.

The suite takes several minutes, so a plain ``pytest`` skips it; it runs when asked for by path
(``pytest tests/stress``, or one of its files) or with ``SNOWHUB_STRESS=1``. Its tests carry the
``stress`` marker (``pytest -m stress tests/stress``).

``runner`` starts :mod:`forkrunner` once per session; every snowhub command it runs is a forked child,
so a test can start dozens of processes without paying for ``import torch`` each time.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
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


class Runner:
    """Client of a running forkrunner: start/wait/kill snowhub processes."""

    def __init__(self):
        self._proc = subprocess.Popen([sys.executable, str(HERE / "forkrunner.py")], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True, bufsize=1)
        self._ids = itertools.count()

    def _ask(self, request: dict) -> dict:
        self._proc.stdin.write(json.dumps(request) + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError("the forkrunner died")
        return json.loads(line)

    def start(self, *argv: str, env: dict | None = None, rlimit_fsize: int | None = None) -> str:
        ident = str(next(self._ids))
        self._ask({"op": "start", "id": ident, "argv": [str(a) for a in argv], "env": env or {},
                   "rlimit_fsize": rlimit_fsize})
        return ident

    def wait(self, ident: str) -> dict:
        return self._ask({"op": "wait", "id": ident})

    def kill(self, ident: str, signal: int = 9) -> None:
        self._ask({"op": "kill", "id": ident, "signal": signal})

    def run(self, *argv: str, **kwargs) -> dict:
        return self.wait(self.start(*argv, **kwargs))

    def close(self) -> None:
        self._proc.stdin.close()
        self._proc.wait(30)


@pytest.fixture(scope="session")
def runner():
    r = Runner()
    yield r
    r.close()


@pytest.fixture(scope="session")
def stress_data(tmp_path_factory) -> dict[str, Path]:
    """Small real datasets: three of 3 classes x 20 Fashion-MNIST pictures, one of 2 classes."""
    from fixtures.hubkit import small_dataset

    root = tmp_path_factory.mktemp("stress-data")
    return {"a": small_dataset(root / "a"), "b": small_dataset(root / "b", classes=2, per_class=18),
            "c": small_dataset(root / "c", classes=4, per_class=12)}

