"""Shared fixtures: small real datasets (Fashion-MNIST from the Debian package) and a trained hub.

Training fixtures use the offline efficientnet_lite0 source at 32 px for six tiny epochs, so a task takes a few
seconds on two CPU cores while still learning real images.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

FASHION = Path("/usr/share/datasets/fashion-mnist")
# Visually distinct Fashion-MNIST classes, so a few short epochs learn them well above chance.
CLASSES = {1: "Trouser", 5: "Sandal", 8: "Bag"}
FAST = dict(epochs=6, image_size=32, batch_size=16, seed=0, device="cpu", num_workers=0)


def _fashion(split: str) -> tuple[np.ndarray, np.ndarray]:
    if not FASHION.is_dir():
        pytest.skip("needs the Debian package dataset-fashion-mnist (scripts/bootstrap.sh installs it)")
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
def trained_hub(tmp_path_factory, fashion_dir, fashion_other_dir) -> Path:
    """A hub (efficientnet_lite0) with two tasks; tests that change it must work on a copy (`hub_copy`)."""
    from snowhub import Hub, TrainConfig

    path = tmp_path_factory.mktemp("hubs") / "hub"
    with Hub.init(path, "efficientnet_lite0") as hub:
        hub.add_task("fashion", fashion_dir, TrainConfig(**FAST))
        hub.add_task("fashion2", fashion_other_dir, TrainConfig(**FAST))
    return path


@pytest.fixture
def hub_copy(trained_hub, tmp_path) -> Path:
    """A private copy of `trained_hub` that a test may alter."""
    target = tmp_path / "hub"
    shutil.copytree(trained_hub, target)
    return target
