"""A labelled test folder for ``snowhub evaluate TASK --data DIR``: one sub-folder per class, named as the
task's classes are (any subset of them, one class allowed), images anywhere below it.

Unlike :func:`snowhub.data.discover` (training data), nothing is held out, a single class is fine and an
empty class folder is skipped; image files are recognised as discovery recognises them.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from torchvision.datasets.folder import make_dataset

from snowhub.data.layouts import _is_image_file, _visible_subdirs, _sample_key
from snowhub.errors import DataError


@dataclass(frozen=True)
class LabelledImages:
    """The images of a labelled folder.

    Attributes:
        root: the folder (absolute). class_names: its class folders with at least one image, sorted.
        samples: ``(absolute image path, index into class_names)``, sorted by (label, path).
    """

    root: Path
    class_names: list[str]
    samples: list[tuple[Path, int]]

    def counts(self) -> dict[str, int]:
        """Class name → its number of images."""
        counts = dict.fromkeys(self.class_names, 0)
        for _, label in self.samples:
            counts[self.class_names[label]] += 1
        return counts

    def fingerprint(self) -> str:
        """sha256 hex digest (64 chars) of the class names and, per image, its path relative to :attr:`root`,
        size in bytes and class (contents are not read, as :func:`snowhub.data.fingerprint`).

        Raises:
            DataError: an image no longer exists.
        """
        entries = []
        for path, label in self.samples:
            try:
                size = path.stat().st_size
            except OSError as exc:
                raise DataError(f"cannot stat image {path}: {exc.strerror}") from None
            entries.append((Path(os.path.relpath(path, self.root)).as_posix(), size, self.class_names[label]))
        blob = json.dumps({"format": 1, "samples": sorted(entries)}, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def labelled_folder(root: Path | str) -> LabelledImages:
    """List the images of the labelled folder `root` (see the module docstring).

    Raises:
        DataError: `root` is missing or a file, has no class folders, or no image in any of them.
    """
    path = Path(root).expanduser()
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is a file"
        raise DataError(f"test data {path} {what}; pass `data` a directory with one sub-folder per class")
    path = path.resolve()
    folders = _visible_subdirs(path)
    if not folders:
        raise DataError(f"no images in {path}: no class folders; put each class's images in a sub-folder named "
                        f"as the task's class (e.g. {path / 'cat' / '1.jpg'})")
    found = make_dataset(path, {name: i for i, name in enumerate(folders)}, is_valid_file=_is_image_file,
                         allow_empty=True)
    present = sorted({folders[label] for _, label in found})
    if not present:
        raise DataError(f"no images in {path}: its class folders hold no image files; nothing to evaluate")
    index = {name: i for i, name in enumerate(present)}
    samples = sorted(((Path(p), index[folders[label]]) for p, label in found), key=_sample_key)
    return LabelledImages(path, present, samples)
