"""Helpers that build small image datasets on disk for the snowhub.data tests.

Images are real Fashion-MNIST pictures when the Debian package ``dataset-fashion-mnist`` is installed,
seeded noise otherwise, so the tests run on any machine.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
from PIL import Image

FASHION_T10K = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")

_cache: list[np.ndarray] = []


def sample_pixels(n: int) -> list[np.ndarray]:
    """``n`` distinct 28x28 uint8 grey images."""
    if len(_cache) < n:
        _cache[:] = _load(max(n, 64))
    return _cache[:n]


def _load(n: int) -> list[np.ndarray]:
    if FASHION_T10K.is_file():
        with gzip.open(FASHION_T10K) as fh:
            fh.read(16)  # IDX header: magic, count, rows, cols
            raw = fh.read(n * 28 * 28)
        return list(np.frombuffer(raw, dtype=np.uint8).reshape(n, 28, 28))
    rng = np.random.default_rng(0)
    return list(rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8))


def write_image(path: Path, index: int = 0) -> Path:
    """Write picture number ``index`` as an RGB image at ``path`` (format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sample_pixels(index + 1)[index], mode="L").convert("RGB").save(path)
    return path


def make_imagefolder(root: Path, counts: dict[str, int], suffix: str = ".png") -> Path:
    """``root/<class>/<i><suffix>`` for each class and count; returns ``root``."""
    k = 0
    for name, n in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            write_image(root / name / f"{i:03d}{suffix}", k % 64)
            k += 1
    return root


def make_cub(root: Path, class_names: list[str], per_class: int = 4, test_every: int = 2) -> Path:
    """A miniature CUB-200-2011 release in ``root``; every ``test_every``-th image of a class is a test image.

    Image ids run class by class, as in the real release. Returns ``root``.
    """
    images, labels, split, classes = [], [], [], []
    image_id = 0
    for class_id, name in enumerate(class_names, 1):
        folder = f"{class_id:03d}.{name}"
        classes.append(f"{class_id} {folder}")
        for i in range(per_class):
            image_id += 1
            rel = f"{folder}/{name}_{i:04d}.jpg"
            write_image(root / "images" / rel, image_id % 64)
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {class_id}")
            split.append(f"{image_id} {0 if i % test_every == 0 else 1}")
    for fname, lines in (
        ("images.txt", images),
        ("image_class_labels.txt", labels),
        ("train_test_split.txt", split),
        ("classes.txt", classes),
    ):
        (root / fname).write_text("\n".join(lines) + "\n")
    return root
