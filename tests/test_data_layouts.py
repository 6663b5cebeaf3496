"""Tests for snowhub.data.layouts: layout detection, held-out split, fingerprint, errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest_data import make_cub, make_imagefolder, write_image

from snowhub.data import DatasetSplit, discover, fingerprint
from snowhub.errors import ConfigError, DataError


def _rel(split: DatasetSplit, samples) -> list[tuple[str, int]]:
    return [(p.relative_to(split.root).as_posix(), label) for p, label in samples]


# --- ImageFolder --------------------------------------------------------------------------------


def test_imagefolder_lists_sorted_classes_and_ignores_non_images(tmp_path):
    make_imagefolder(tmp_path, {"shirt": 5, "bag": 5, "coat": 5})
    (tmp_path / "bag" / "README.txt").write_text("not an image")
    (tmp_path / "coat" / "labels.csv").write_text("a,b")
    write_image(tmp_path / "coat" / "._000.png")  # macOS resource fork
    write_image(tmp_path / ".ipynb_checkpoints" / "x.png")  # hidden folder, not a class
    (tmp_path / "notes.txt").write_text("top-level file")

    split = discover(tmp_path)

    assert split.layout == "imagefolder"
    assert split.val_source == "held-out"
    assert split.root == tmp_path.resolve()
    assert split.class_names == ["bag", "coat", "shirt"]
    everything = split.train + split.val
    assert len(everything) == 15
    assert all(p.suffix == ".png" and not p.name.startswith(".") for p, _ in everything)
    for path, label in everything:
        assert path.is_absolute() and path.parent.name == split.class_names[label]
    assert split.train == sorted(split.train, key=lambda s: (s[1], str(s[0])))


def test_images_in_nested_subfolders_belong_to_their_class(tmp_path):
    make_imagefolder(tmp_path, {"a": 2, "b": 2})
    write_image(tmp_path / "b" / "deeper" / "x.jpg")
    split = discover(tmp_path)
    nested = [label for p, label in split.train + split.val if p.name == "x.jpg"]
    assert nested == [1]


def test_held_out_split_is_stratified_and_deterministic(tmp_path):
    make_imagefolder(tmp_path, {"a": 20, "b": 20, "c": 2, "d": 10})

    first = discover(tmp_path, val_fraction=0.25, seed=7)
    again = discover(tmp_path, val_fraction=0.25, seed=7)
    other = discover(tmp_path, val_fraction=0.25, seed=8)

    assert first == again
    assert first.val != other.val
    per_class = {name: sum(1 for _, l in first.val if l == i) for i, name in enumerate(first.class_names)}
    # round(0.25 * n), at least one, never the whole class
    assert per_class == {"a": 5, "b": 5, "c": 1, "d": 2}
    train_paths = {p for p, _ in first.train}
    val_paths = {p for p, _ in first.val}
    assert not train_paths & val_paths
    assert len(train_paths | val_paths) == 52


def test_class_with_one_image_stays_in_train(tmp_path):
    make_imagefolder(tmp_path, {"a": 1, "b": 10})
    split = discover(tmp_path, val_fraction=0.5)
    assert [label for _, label in split.train].count(0) == 1
    assert [label for _, label in split.val] == [1] * 5


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_val_fraction_out_of_range_is_rejected(tmp_path, fraction):
    make_imagefolder(tmp_path, {"a": 2, "b": 2})
    with pytest.raises(ConfigError, match="val_fraction"):
        discover(tmp_path, val_fraction=fraction)


# --- train/val ----------------------------------------------------------------------------------


@pytest.mark.parametrize("val_name", ["val", "test"])
def test_train_val_layout_uses_the_given_split(tmp_path, val_name):
    make_imagefolder(tmp_path / "train", {"cat": 4, "dog": 3})
    make_imagefolder(tmp_path / val_name, {"cat": 2, "dog": 1})

    split = discover(tmp_path)

    assert (split.layout, split.val_source) == ("train/val", "given")
    assert split.class_names == ["cat", "dog"]
    assert len(split.train) == 7 and len(split.val) == 3
    assert all(p.relative_to(tmp_path).parts[0] == "train" for p, _ in split.train)
    assert all(p.relative_to(tmp_path).parts[0] == val_name for p, _ in split.val)
    assert _rel(split, split.val) == [
        (f"{val_name}/cat/000.png", 0),
        (f"{val_name}/cat/001.png", 0),
        (f"{val_name}/dog/000.png", 1),
    ]


def test_train_val_class_mismatch_names_the_classes(tmp_path):
    make_imagefolder(tmp_path / "train", {"cat": 2, "dog": 2, "fox": 2})
    make_imagefolder(tmp_path / "val", {"cat": 1, "dog": 1, "owl": 1})
    with pytest.raises(DataError, match=r"only in train/: fox; only in val/: owl") as info:
        discover(tmp_path)
    assert "\n" not in str(info.value)


def test_lone_train_folder_gets_a_held_out_split(tmp_path):
    make_imagefolder(tmp_path / "train", {"cat": 4, "dog": 4})
    split = discover(tmp_path)
    assert (split.layout, split.val_source) == ("imagefolder", "held-out")
    assert split.class_names == ["cat", "dog"]
    assert len(split.val) == 2


# --- CUB-200-2011 -------------------------------------------------------------------------------

CUB_CLASSES = ["Black_footed_Albatross", "Laysan_Albatross", "Sooty_Albatross"]


def test_cub_layout_reads_labels_names_and_split(tmp_path):
    make_cub(tmp_path, CUB_CLASSES, per_class=4, test_every=2)

    split = discover(tmp_path)

    assert (split.layout, split.val_source) == ("cub", "given")
    assert split.class_names == CUB_CLASSES
    assert len(split.train) == 6 and len(split.val) == 6
    # image i of each class is a test image when i is even; class id k -> label k - 1
    assert _rel(split, split.val)[:2] == [
        ("images/001.Black_footed_Albatross/Black_footed_Albatross_0000.jpg", 0),
        ("images/001.Black_footed_Albatross/Black_footed_Albatross_0002.jpg", 0),
    ]
    assert [label for _, label in split.train] == [0, 0, 1, 1, 2, 2]
    assert all(p.parent.name.split(".", 1)[1] == split.class_names[label] for p, label in split.train + split.val)


def test_cub_parent_directory_is_accepted(tmp_path):
    make_cub(tmp_path / "CUB_200_2011", CUB_CLASSES)
    (tmp_path / "attributes.txt").write_text("1 has_bill_shape::curved\n")  # as the tarball unpacks

    split = discover(tmp_path)

    assert split.layout == "cub"
    assert split.root == (tmp_path / "CUB_200_2011").resolve()
    assert split.class_names == CUB_CLASSES
    assert len(split.train) + len(split.val) == 12


def test_cub_malformed_line_names_file_and_line(tmp_path):
    make_cub(tmp_path, CUB_CLASSES)
    labels = tmp_path / "image_class_labels.txt"
    lines = labels.read_text().splitlines()
    lines[2] = "3 three"
    labels.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"image_class_labels\.txt line 3: expected"):
        discover(tmp_path)


def test_cub_missing_metadata_file_is_named(tmp_path):
    make_cub(tmp_path, CUB_CLASSES)
    (tmp_path / "train_test_split.txt").unlink()
    with pytest.raises(DataError, match=r"train_test_split\.txt is missing"):
        discover(tmp_path)


def test_cub_image_without_split_line_is_named(tmp_path):
    make_cub(tmp_path, CUB_CLASSES)
    split_txt = tmp_path / "train_test_split.txt"
    split_txt.write_text("\n".join(split_txt.read_text().splitlines()[:-1]) + "\n")
    with pytest.raises(DataError, match=r"train_test_split\.txt has no line for image id 12"):
        discover(tmp_path)


def test_cub_listed_image_that_is_missing_is_named(tmp_path):
    make_cub(tmp_path, CUB_CLASSES)
    gone = tmp_path / "images" / "002.Laysan_Albatross" / "Laysan_Albatross_0001.jpg"
    gone.unlink()
    with pytest.raises(DataError, match="Laysan_Albatross_0001.jpg listed in .*images.txt does not exist"):
        discover(tmp_path)


# --- fingerprint --------------------------------------------------------------------------------


def test_fingerprint_is_stable_and_location_independent(tmp_path):
    make_imagefolder(tmp_path / "a", {"x": 3, "y": 3})
    fp = fingerprint(discover(tmp_path / "a"))
    assert len(fp) == 64 and int(fp, 16) >= 0
    assert fingerprint(discover(tmp_path / "a")) == fp
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    assert fingerprint(discover(tmp_path / "b")) == fp


def test_fingerprint_changes_when_a_file_is_added(tmp_path):
    make_imagefolder(tmp_path, {"x": 3, "y": 3})
    before = fingerprint(discover(tmp_path))
    write_image(tmp_path / "y" / "new.png", 9)
    assert fingerprint(discover(tmp_path)) != before


def test_fingerprint_changes_with_file_size_and_split(tmp_path):
    make_imagefolder(tmp_path, {"x": 10, "y": 10})
    before = fingerprint(discover(tmp_path, seed=0))
    assert fingerprint(discover(tmp_path, seed=1)) != before
    with (tmp_path / "x" / "000.png").open("ab") as fh:
        fh.write(b"\0")
    assert fingerprint(discover(tmp_path, seed=0)) != before


def test_fingerprint_of_cub_split(tmp_path):
    make_cub(tmp_path, CUB_CLASSES)
    before = fingerprint(discover(tmp_path))
    split_txt = tmp_path / "train_test_split.txt"
    split_txt.write_text(split_txt.read_text().replace("1 0\n", "1 1\n", 1))
    assert fingerprint(discover(tmp_path)) != before


# --- errors -------------------------------------------------------------------------------------


def _error(path) -> str:
    with pytest.raises(DataError) as info:
        discover(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_path(tmp_path):
    message = _error(tmp_path / "nope")
    assert str(tmp_path / "nope") in message and "does not exist" in message


def test_file_instead_of_directory(tmp_path):
    file = write_image(tmp_path / "one.png")
    message = _error(file)
    assert str(file) in message and "is a file; pass `data` the directory" in message


def test_empty_directory(tmp_path):
    assert "no class folders" in _error(tmp_path)


def test_flat_folder_of_images_has_no_classes(tmp_path):
    write_image(tmp_path / "a.png")
    write_image(tmp_path / "b.png")
    assert "no class folders" in _error(tmp_path)


def test_single_class(tmp_path):
    make_imagefolder(tmp_path, {"only": 3})
    message = _error(tmp_path)
    assert "only one class" in message and "'only'" in message


def test_empty_class_folder_is_named(tmp_path):
    make_imagefolder(tmp_path, {"a": 2, "b": 2})
    (tmp_path / "ghost").mkdir()
    (tmp_path / "ghost" / "readme.txt").write_text("no images here")
    message = _error(tmp_path)
    assert str(tmp_path.resolve() / "ghost") in message and "has no images" in message


def test_empty_class_folder_in_val_is_named(tmp_path):
    make_imagefolder(tmp_path / "train", {"a": 2, "b": 2})
    make_imagefolder(tmp_path / "val", {"a": 1, "b": 0})
    assert f"{Path('val') / 'b'} has no images" in _error(tmp_path)
