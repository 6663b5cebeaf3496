"""Find the images and labels of a dataset directory passed to ``snowhub add-task NAME --data DIR``.

Three layouts are recognised, checked in this order:

* ``"cub"`` -- the CUB-200-2011 release: ``images.txt``, ``image_class_labels.txt``,
  ``train_test_split.txt``, ``classes.txt`` and ``images/``. The directory that *contains*
  ``CUB_200_2011/`` (how the tarball unpacks) is accepted too.
* ``"train/val"`` -- ``train/`` plus ``val/`` (or ``validation/``, ``valid/``, ``test/``, first found
  wins), each an ImageFolder tree with the same class folders. Other top-level folders are ignored.
  A lone ``train/`` is read as a plain ImageFolder tree with a held-out validation part.
* ``"imagefolder"`` -- one sub-folder per class, images anywhere below it; validation is held out.

Only files with an image extension (torchvision's ``IMG_EXTENSIONS``: .jpg .jpeg .png .ppm .bmp .pgm
.tif .tiff .webp, any case) are used; other files (README, .txt, .csv ...) are ignored silently, as are
hidden files and folders (names starting with ``.``, e.g. ``.ipynb_checkpoints``, macOS ``._*`` forks).
Images are not opened here; unreadable ones are reported when they are loaded
(:func:`snowhub.data.images.load_rgb`).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, has_file_allowed_extension, make_dataset

from snowhub.errors import ConfigError, DataError

Sample = tuple[Path, int]

_VAL_DIR_NAMES = ("val", "validation", "valid", "test")
_CUB_DIR_NAME = "CUB_200_2011"
_CUB_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")


@dataclass(frozen=True)
class DatasetSplit:
    """A discovered dataset, split into training and validation samples.

    ``class_names[i]`` is the name of label ``i``. ``train`` and ``val`` hold ``(absolute image path,
    label)`` pairs sorted by ``(label, path)``. ``root`` is the directory the paths live under (for
    CUB, the directory holding ``images.txt``). ``val_source`` is ``"given"`` when the dataset carried
    its own split and ``"held-out"`` when snowhub drew the validation part from the training images.
    """

    class_names: list[str]
    train: list[Sample]
    val: list[Sample]
    layout: str
    val_source: str
    root: Path


def discover(root: Path | str, val_fraction: float = 0.1, seed: int = 0) -> DatasetSplit:
    """Detect the layout of ``root`` and list its images, labels and train/validation split.

    Without a given split, a stratified validation part is held out: for each class with ``n >= 2``
    images, ``max(1, round(val_fraction * n))`` of them (never all), picked by a ``random.Random(seed)``
    shuffle of the sorted paths, so the same directory and seed always give the same split. A class
    with a single image keeps it in ``train``.

    Raises:
        DataError: ``root`` is missing or is a file; there are no class folders; only one class; a
            class has no images; ``train/`` and ``val/`` disagree on the classes; a CUB metadata file
            is missing or has a malformed line; a CUB-listed image file does not exist.
        ConfigError: ``val_fraction`` is not strictly between 0 and 1.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    path = Path(root).expanduser()
    if not path.exists():
        raise DataError(f"dataset path {path} does not exist; pass `data` an existing directory")
    if not path.is_dir():
        raise DataError(f"dataset path {path} is a file; pass `data` the directory that holds the class folders")
    path = path.resolve()

    cub_root = _find_cub_root(path)
    if cub_root is not None:
        return _discover_cub(cub_root)

    subdirs = set(_visible_subdirs(path))
    val_name = next((n for n in _VAL_DIR_NAMES if n in subdirs), None)
    if "train" in subdirs and val_name is not None:
        return _discover_train_val(path, path / "train", path / val_name)

    folder = path / "train" if subdirs == {"train"} else path
    class_names, samples = _scan_imagefolder(folder)
    train, val = _hold_out(samples, len(class_names), val_fraction, seed)
    return DatasetSplit(class_names, train, val, "imagefolder", "held-out", path)


def fingerprint(split: DatasetSplit) -> str:
    """Return a sha256 hex digest (64 chars) identifying the dataset as split.

    Hashed: the layout, the class names, and for every sample its path relative to ``split.root``
    (POSIX form), file size in bytes, label and split (``"train"``/``"val"``), in sorted order.
    File *contents* are not hashed -- reading every image would be too slow for large sets -- so an
    image rewritten in place with the same size goes unnoticed. The held-out part depends on the
    seed, so another seed (almost always) gives another fingerprint.

    Raises:
        DataError: an image listed in ``split`` no longer exists.
    """
    entries = []
    for part, samples in (("train", split.train), ("val", split.val)):
        for path, label in samples:
            try:
                size = path.stat().st_size
            except OSError as exc:
                raise DataError(f"cannot stat image {path}: {exc.strerror}; re-run discovery on the dataset") from None
            entries.append((Path(os.path.relpath(path, split.root)).as_posix(), size, label, part))
    entries.sort()
    payload = {"format": 1, "layout": split.layout, "class_names": list(split.class_names), "samples": entries}
    blob = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


# --- folder layouts -------------------------------------------------------------------------------


def _visible_subdirs(directory: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))


def _is_image_file(path: str) -> bool:
    # Hidden files are skipped: macOS leaves "._name.jpg" resource forks that are not images.
    return not os.path.basename(path).startswith(".") and has_file_allowed_extension(path, IMG_EXTENSIONS)


def _scan_imagefolder(directory: Path) -> tuple[list[str], list[Sample]]:
    """List one ImageFolder tree: sorted class names and (path, label) samples sorted by (label, path)."""
    try:
        classes, _ = find_classes(directory)
    except FileNotFoundError:
        classes = []
    classes = [c for c in classes if not c.startswith(".")]
    if not classes:
        raise DataError(
            f"no class folders in {directory}; put each class's images in its own sub-folder"
            f" (e.g. {directory / 'cat' / '1.jpg'})"
        )
    if len(classes) == 1:
        raise DataError(
            f"only one class folder ({classes[0]!r}) in {directory}; a classifier needs at least two classes"
        )
    class_to_idx = {name: i for i, name in enumerate(classes)}
    # allow_empty=True: we report empty classes ourselves, by name and path.
    found = make_dataset(directory, class_to_idx, is_valid_file=_is_image_file, allow_empty=True)
    samples = sorted(((Path(p), label) for p, label in found), key=_sample_key)
    present = {label for _, label in samples}
    empty = [classes[i] for i in range(len(classes)) if i not in present]
    if empty:
        raise DataError(
            f"class folder {directory / empty[0]} has no images"
            + (f" (nor do {len(empty) - 1} other class folders)" if len(empty) > 1 else "")
            + f"; add images ({', '.join(IMG_EXTENSIONS)}) or remove the folder"
        )
    return classes, samples


def _discover_train_val(root: Path, train_dir: Path, val_dir: Path) -> DatasetSplit:
    train_classes = _visible_subdirs(train_dir)
    val_classes = _visible_subdirs(val_dir)
    if train_classes != val_classes:
        only_train = sorted(set(train_classes) - set(val_classes))
        only_val = sorted(set(val_classes) - set(train_classes))
        detail = "; ".join(
            s
            for s in (
                f"only in {train_dir.name}/: {', '.join(only_train)}" if only_train else "",
                f"only in {val_dir.name}/: {', '.join(only_val)}" if only_val else "",
            )
            if s
        )
        raise DataError(
            f"{train_dir} and {val_dir} have different class folders ({detail}); give both the same classes"
        )
    class_names, train = _scan_imagefolder(train_dir)
    _, val = _scan_imagefolder(val_dir)
    return DatasetSplit(class_names, train, val, "train/val", "given", root)


def _hold_out(
    samples: list[Sample], n_classes: int, val_fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Stratified, seeded split of ``samples`` into (train, val)."""
    by_class: list[list[Path]] = [[] for _ in range(n_classes)]
    for path, label in samples:
        by_class[label].append(path)
    rng = random.Random(seed)
    train: list[Sample] = []
    val: list[Sample] = []
    for label, paths in enumerate(by_class):
        paths = sorted(paths)  # shuffle from a canonical order, so file-system order cannot leak in
        rng.shuffle(paths)
        n = len(paths)
        n_val = min(max(1, round(val_fraction * n)), n - 1) if n >= 2 else 0
        val += [(p, label) for p in paths[:n_val]]
        train += [(p, label) for p in paths[n_val:]]
    return sorted(train, key=_sample_key), sorted(val, key=_sample_key)


def _sample_key(sample: Sample) -> tuple[int, str]:
    return sample[1], str(sample[0])


# --- CUB-200-2011 ---------------------------------------------------------------------------------


def _find_cub_root(path: Path) -> Path | None:
    for candidate in (path, path / _CUB_DIR_NAME):
        # Any one metadata file marks the layout, so a half-copied release gets a CUB error, not an
        # ImageFolder one about "images" being the only class.
        if any((candidate / f).is_file() for f in _CUB_FILES):
            return candidate
    return None


def _read_table(path: Path, columns: tuple[str, ...], int_columns: int) -> list[tuple]:
    """Parse a whitespace-separated CUB metadata file; the first ``int_columns`` fields are integers.

    The last column takes the rest of the line, so image paths may contain spaces. Blank lines are skipped.
    """
    if not path.is_file():
        raise DataError(f"CUB metadata file {path} is missing; restore it from the CUB_200_2011 release")
    expected = " ".join(f"<{c}>" for c in columns)
    rows = []
    with path.open(encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            fields = line.split(maxsplit=len(columns) - 1)
            try:
                if len(fields) != len(columns):
                    raise ValueError
                row = tuple(int(f) if i < int_columns else f.strip() for i, f in enumerate(fields))
            except ValueError:
                raise DataError(
                    f"{path} line {lineno}: expected '{expected}', got {line.strip()[:80]!r}; fix or restore the file"
                ) from None
            rows.append(row)
    if not rows:
        raise DataError(f"CUB metadata file {path} is empty; restore it from the CUB_200_2011 release")
    return rows


def _unique_map(rows: list[tuple], path: Path) -> dict[int, object]:
    mapping: dict[int, object] = {}
    for key, value in rows:
        if key in mapping:
            raise DataError(f"{path}: id {key} is listed twice; fix or restore the file")
        mapping[key] = value
    return mapping


def _discover_cub(root: Path) -> DatasetSplit:
    classes_txt, images_txt = root / "classes.txt", root / "images.txt"
    labels_txt, split_txt = root / "image_class_labels.txt", root / "train_test_split.txt"

    classes = _unique_map(_read_table(classes_txt, ("class_id", "class_name"), 1), classes_txt)
    ids = sorted(classes)
    if ids != list(range(1, len(ids) + 1)):
        raise DataError(f"{classes_txt}: class ids must run 1..{len(ids)} without gaps; fix or restore the file")
    # "001.Black_footed_Albatross" -> "Black_footed_Albatross"
    class_names = [_strip_cub_number(str(classes[i])) for i in ids]
    if len(class_names) < 2:
        raise DataError(f"{classes_txt} lists only one class; a classifier needs at least two classes")

    images = _unique_map(_read_table(images_txt, ("image_id", "path"), 1), images_txt)
    labels = _unique_map(_read_table(labels_txt, ("image_id", "class_id"), 2), labels_txt)
    is_train = _unique_map(_read_table(split_txt, ("image_id", "is_training_image"), 2), split_txt)

    train: list[Sample] = []
    val: list[Sample] = []
    for image_id in sorted(images):
        rel = str(images[image_id])
        if image_id not in labels:
            raise DataError(f"{labels_txt} has no line for image id {image_id} ({rel}); fix or restore the file")
        if image_id not in is_train:
            raise DataError(f"{split_txt} has no line for image id {image_id} ({rel}); fix or restore the file")
        class_id, flag = labels[image_id], is_train[image_id]
        if class_id not in classes:
            raise DataError(
                f"{labels_txt}: image id {image_id} has class id {class_id}, not in {classes_txt.name}; fix the file"
            )
        if flag not in (0, 1):
            raise DataError(
                f"{split_txt}: image id {image_id} has split flag {flag}, expected 1 (train) or 0 (test); fix the file"
            )
        image_path = root / "images" / rel
        if not image_path.is_file():
            raise DataError(f"image {image_path} listed in {images_txt} does not exist; restore it or remove its lines")
        (train if flag == 1 else val).append((image_path, int(class_id) - 1))

    present = {label for _, label in train + val}
    empty = [name for i, name in enumerate(class_names) if i not in present]
    if empty:
        raise DataError(
            f"class {empty[0]!r} in {classes_txt} has no images in {images_txt}; add them or drop the class"
        )
    return DatasetSplit(class_names, sorted(train, key=_sample_key), sorted(val, key=_sample_key), "cub", "given", root)


def _strip_cub_number(name: str) -> str:
    prefix, dot, rest = name.partition(".")
    return rest if dot and prefix.isdigit() and rest else name
