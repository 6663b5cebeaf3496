"""Shared fixtures: small real datasets (Fashion-MNIST from the Debian package) and a trained hub.

Training fixtures use the offline efficientnet_lite0 source at 32 px for six tiny epochs, so a task takes a few
seconds on two CPU cores while still learning real images.

In CI (``CI`` set to anything but ``0``/``false``, or ``SNOWHUB_STRESS=1`` as ``scripts/test.sh`` sets it) a
missing dataset fails the tests that need it, and any skipped test fails the run: a green run then means every
test ran. A developer's plain ``pytest`` may still skip, with the reason.
"""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from snowhub import RunOptions

# The registry fixtures (a real PostgreSQL server, registries on both databases), for every test module.
from registry_helpers import fresh_database, postgres_admin_url, registry_hub, registry_url  # noqa: F401

FASHION = Path("/usr/share/datasets/fashion-mnist")
# Visually distinct Fashion-MNIST classes, so a few short epochs learn them well above chance.
CLASSES = {1: "Trouser", 5: "Sandal", 8: "Bag"}
FAST = dict(epochs=6, image_size=32, batch_size=16, seed=0, run=RunOptions(device="cpu", num_workers=0))
# The same training through `snowhub add-task`.
FAST_ARGS = ["--epochs", "6", "--image-size", "32", "--batch-size", "16", "--seed", "0", "--device", "cpu",
             "--workers", "0"]


def strict_ci() -> str | None:
    """Why skipping is not allowed in this run (CI, or the full suite of scripts/test.sh), or None."""
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        return f"CI={os.environ['CI']}"
    if os.environ.get("SNOWHUB_STRESS") == "1":
        return "SNOWHUB_STRESS=1 (scripts/test.sh)"
    return None


class _SkipsFail:
    """Under :func:`strict_ci`, a skipped test is reported as failed (its reason kept), and so is a skipped module."""

    def __init__(self, why: str):
        self.why = why
        self.skipped_modules: list[str] = []

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item, call):
        report = yield
        if report.skipped and not hasattr(report, "wasxfail") and not _no_gpu_for(item):
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            report.outcome = "failed"
            report.longrepr = f"skipped, but {self.why} allows no skips: {reason}"
        return report

    def pytest_collectreport(self, report):
        if report.skipped:
            where = report.longrepr
            self.skipped_modules.append(f"{where[0]}:{where[1]}: {where[2]}" if isinstance(where, tuple)
                                        else f"{report.nodeid}: {where}")

    def pytest_terminal_summary(self, terminalreporter):
        for line in self.skipped_modules:
            terminalreporter.write_line(f"error: skipped at collection, but {self.why} allows no skips: {line}")

    def pytest_sessionfinish(self, session):
        if self.skipped_modules and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _no_gpu_for(item) -> bool:
    """A ``cuda`` test on a machine without a CUDA device: its skip is allowed, in CI too (docs/gpu.md)."""
    import torch

    return item.get_closest_marker("cuda") is not None and not torch.cuda.is_available()


def pytest_runtest_setup(item):
    if _no_gpu_for(item):
        pytest.skip("needs a CUDA GPU (docs/gpu.md: .venv/bin/pytest -m cuda tests/gpu on a GPU machine)")


def pytest_configure(config):
    # A plugin, not conftest hooks: those would only see tests under tests/, and CI also runs benchmarks/tests.
    if (why := strict_ci()) is not None:
        config.pluginmanager.register(_SkipsFail(why), "snowhub-skips-fail")


def pretrained_source(name: str = "efficientnet_lite0"):
    """A new frozen source `name` with its offline ImageNet weights (a fresh copy on every call)."""
    from snowhub.models.frozen import FrozenSource
    from snowhub.models.sources import get_spec
    from snowhub.models.weights import load_source_state, resolve_weights

    spec = get_spec(name)
    backbone = spec.build()
    state, _ = resolve_weights(spec)
    return FrozenSource(spec, backbone, load_source_state(spec, backbone, state))


def _fashion(split: str) -> tuple[np.ndarray, np.ndarray]:
    if not FASHION.is_dir():
        need = "needs the Debian package dataset-fashion-mnist (scripts/bootstrap.sh installs it)"
        if (why := strict_ci()) is not None:
            pytest.fail(f"{need}; it is missing, and {why} allows no skips", pytrace=False)
        pytest.skip(need)
    with gzip.open(FASHION / f"{split}-images-idx3-ubyte.gz") as fh:
        images = np.frombuffer(fh.read()[16:], dtype=np.uint8).reshape(-1, 28, 28)
    with gzip.open(FASHION / f"{split}-labels-idx1-ubyte.gz") as fh:
        labels = np.frombuffer(fh.read()[8:], dtype=np.uint8)
    return images, labels


def write_fashion(root: Path, split: str, per_class: int, classes: dict[int, str] = CLASSES, offset: int = 0) -> Path:
    """Write `per_class` real Fashion-MNIST images of each class as ``root/<class>/<i>.png``."""
    images, labels = _fashion(split)
    for label, name in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i, index in enumerate(np.flatnonzero(labels == label)[offset:offset + per_class]):
            Image.fromarray(images[index]).save(root / name / f"{i:04d}.png")
    return root


@pytest.fixture(scope="session")
def fashion_dir(tmp_path_factory) -> Path:
    """Fashion-MNIST, 3 classes, ``train/`` 40 per class and ``val/`` 12 per class."""
    root = tmp_path_factory.mktemp("fashion")
    write_fashion(root / "train", "train", 40)
    write_fashion(root / "val", "t10k", 12)
    return root


@pytest.fixture(scope="session")
def fashion_other_dir(tmp_path_factory) -> Path:
    """A second task: other Fashion-MNIST classes, one ImageFolder tree (snowhub holds out validation)."""
    return write_fashion(tmp_path_factory.mktemp("fashion2"), "train", 30,
                         {0: "T-shirt_top", 7: "Sneaker", 9: "Ankle_boot"}, offset=100)


@pytest.fixture(scope="session")
def trained_hub_made(tmp_path_factory, fashion_dir, fashion_other_dir) -> dict:
    """`trained_hub`, made with the command line as a user would, and what each command printed.

    ``{"path": Path, "init": output, "fashion": add-task --json output, "fashion2": output}``. The two
    tasks are trained with `FAST` (the ``add-task`` options `FAST_ARGS`), so the hub is the one
    ``Hub.add_task(name, data, TrainConfig(**FAST))`` writes, file for file.
    """
    from typer.testing import CliRunner

    from snowhub_cli.main import app

    path = tmp_path_factory.mktemp("hubs") / "hub"
    made: dict = {"path": path}
    for key, argv in (("init", ["init", "--source", "efficientnet_lite0"]),
                      ("fashion", ["add-task", "fashion", "--data", fashion_dir, *FAST_ARGS, "--json"]),
                      ("fashion2", ["add-task", "fashion2", "--data", fashion_other_dir, *FAST_ARGS])):
        result = CliRunner().invoke(app, [*map(str, argv), "--hub", str(path)], catch_exceptions=False)
        assert result.exit_code == 0, f"snowhub {' '.join(map(str, argv))}:\n{result.output}"
        made[key] = result
    return made


@pytest.fixture(scope="session")
def trained_hub(trained_hub_made) -> Path:
    """A hub (efficientnet_lite0) with two tasks, 'fashion' and 'fashion2', shared by the whole session.

    Only read it: a test that changes a hub works on `hub_copy` (`_shared_hub_unchanged` checks).
    """
    return trained_hub_made["path"]


@pytest.fixture
def hub_copy(trained_hub, tmp_path) -> Path:
    """A private copy of `trained_hub` that a test may alter."""
    target = tmp_path / "hub"
    shutil.copytree(trained_hub, target)
    return target


def _hub_state(hub: Path) -> tuple:
    """Cheap fingerprint of a hub: size and mtime of every file, and the registry's rows."""
    from fixtures.hubkit import _VOLATILE, registry_dump

    files = sorted((p.relative_to(hub).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
                   for p in hub.rglob("*") if p.is_file() and p.name not in _VOLATILE)
    return tuple(files), registry_dump(hub) if (hub / "hub.db").is_file() else "hub.db is gone"


@pytest.fixture(autouse=True)
def _shared_hub_unchanged(request):
    """Every test that uses the session hub (directly or through `hub_copy`) leaves it as it found it."""
    if "trained_hub" not in request.fixturenames:
        yield
        return
    hub = request.getfixturevalue("trained_hub")
    before = _hub_state(hub)
    yield
    assert _hub_state(hub) == before, "this test changed the shared session hub (trained_hub): use hub_copy"
