"""Bad input, through the CLI: each is one ``error:`` line, exit status 1, and an unchanged hub.

Non-image files in a dataset are *ignored* when their name has no image extension (README.txt,
labels.csv, .DS_Store) and *reported* (DataError naming the file) when it has one (a text file called
``x.png``); see ``docs/reliability.md``.
"""

from __future__ import annotations

import os
import pickle
import shutil
import struct
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import snowhub.hub as hub_module
from fixtures.hubkit import (
    FAST_ARGS,
    assert_one_line_error,
    cached_training,
    make_read_only,
    make_writable,
    run_cli,
    small_dataset,
    snapshot,
    write_16bit_png,
    write_cmyk_jpeg,
)
from snowhub_cli.main import app



def cli(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def hub(hub_copy):
    """A hub with two tasks; every test checks it is unchanged afterwards."""
    before = snapshot(hub_copy)
    yield hub_copy
    assert snapshot(hub_copy) == before, "the hub changed"


def _png_header(width: int, height: int) -> bytes:
    """A valid PNG signature and header claiming `width` x `height`, with almost no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


def _put(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _dataset_with(root: Path, name: str, content: bytes | None = None, make=None) -> Path:
    data = small_dataset(root / "data", per_class=8)
    target = data / "class1" / name
    if make is not None:
        make(target)
    else:
        target.write_bytes(content)
    return data


# -- the dataset -----------------------------------------------------------------------------------------


def test_missing_data_folder(hub, tmp_path):
    assert_one_line_error(cli("add-task", "t", "--data", tmp_path / "nope", "--hub", hub), "does not exist")


def test_empty_data_folder(hub, tmp_path):
    (tmp_path / "empty").mkdir()
    assert_one_line_error(cli("add-task", "t", "--data", tmp_path / "empty", "--hub", hub), "no class folders")


def test_data_folder_that_is_a_file(hub, tmp_path):
    (tmp_path / "file").write_text("x")
    assert_one_line_error(cli("add-task", "t", "--data", tmp_path / "file", "--hub", hub),
                          "is a file; pass --data the directory")


def test_a_single_class(hub, tmp_path):
    data = small_dataset(tmp_path / "one", classes=1, per_class=5)
    assert_one_line_error(cli("add-task", "t", "--data", data, "--hub", hub), "only one class")


def test_a_class_folder_without_images(hub, tmp_path):
    data = small_dataset(tmp_path / "d", classes=2, per_class=5)
    (data / "empty_class").mkdir()
    (data / "empty_class" / "notes.txt").write_text("no pictures here")
    assert_one_line_error(cli("add-task", "t", "--data", data, "--hub", hub), "empty_class has no images")


@pytest.mark.parametrize(("name", "content", "reason"), [
    ("zero.png", b"", "file is empty (0 bytes)"),
    ("truncated.png", None, "truncated"),
    ("text.png", b"this is not a picture\n", "not an image in a supported format"),
    ("garbage.jpg", os.urandom(2048), "not an image in a supported format"),
    ("huge.png", _png_header(20_000, 20_000), "image is too large (400000000 pixels"),
    ("bomb-warning.png", _png_header(10_000, 9_000), "image is too large (90000000 pixels"),
], ids=lambda v: v if isinstance(v, str) and v.endswith(("png", "jpg")) else "")
def test_an_unreadable_image_in_the_dataset(hub, tmp_path, name, content, reason):
    if content is None:
        good = small_dataset(tmp_path / "src", classes=1, per_class=1)
        content = next(good.rglob("*.png")).read_bytes()[:200]
    data = _dataset_with(tmp_path, name, content)
    error = assert_one_line_error(cli("add-task", "t", "--data", data, "--hub", hub, *FAST_ARGS), reason)
    assert name in error and "replace or delete the file" in error


def test_non_image_files_are_ignored_and_odd_images_are_used(hub_copy, tmp_path, monkeypatch):
    """README/CSV/hidden files are skipped; 16-bit PNGs and CMYK JPEGs are converted and used."""
    monkeypatch.setattr(hub_module, "train_delta", cached_training)
    data = small_dataset(tmp_path / "data", per_class=8)
    for extra in ("README.txt", "labels.csv", ".DS_Store", "class0/notes.md", "class1/._0000.png"):
        (data / extra).write_bytes(b"\x00\x01 not an image")
    write_16bit_png(data / "class0" / "deep.png")
    write_cmyk_jpeg(data / "class2" / "print.jpg")
    result = cli("add-task", "odd", "--data", data, "--hub", hub_copy, "--json", *FAST_ARGS)
    assert result.exit_code == 0, result.stderr
    from snowhub import Hub

    with Hub.open(hub_copy) as hub:
        summary = hub.task("odd").details["dataset"]
    assert summary["train_images"] + summary["val_images"] == 3 * 8 + 2


# -- predict -----------------------------------------------------------------------------------------------


def test_predict_takes_animations_multipage_16bit_and_cmyk(hub, tmp_path):
    frames = [Image.new("RGB", (30, 30), colour) for colour in ("red", "green", "blue")]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=40, loop=0)
    frames[0].save(tmp_path / "pages.tiff", save_all=True, append_images=frames[1:])
    assert Image.open(tmp_path / "anim.gif").n_frames == 3 and Image.open(tmp_path / "pages.tiff").n_frames == 3
    images = [tmp_path / "anim.gif", tmp_path / "pages.tiff", write_16bit_png(tmp_path / "deep.png"),
              write_cmyk_jpeg(tmp_path / "cmyk.jpg")]
    result = cli("predict", *images, "--task", "fashion", "--hub", hub, "--json", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("make", "reason"), [
    (lambda d: d, "is a directory"),
    (lambda d: d / "missing.png", "No such file or directory"),
    (lambda d: _put(d / "zero.png", b""), "file is empty"),
    (lambda d: _put(d / "huge.png", _png_header(30_000, 30_000)), "too large"),
], ids=["directory", "missing", "zero-byte", "huge"])
def test_predict_bad_image_arguments(hub, tmp_path, make, reason):
    assert_one_line_error(cli("predict", make(tmp_path), "--hub", hub, "--device", "cpu"), reason)


def test_predict_never_runs_a_program_named_by_the_file(hub, tmp_path):
    """Pillow would hand PostScript to Ghostscript whatever the file is called; snowhub must refuse it."""
    marker = tmp_path / "ghostscript-ran"
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "gs").write_text(f"#!/bin/sh\ntouch {marker}\necho 10.0\n")
    (bindir / "gs").chmod(0o755)
    eps = tmp_path / "cat.png"
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto showpage\n%%EOF\n")
    path = os.environ["PATH"]
    os.environ["PATH"] = f"{bindir}:{path}"
    try:
        result = cli("predict", eps, "--hub", hub, "--device", "cpu")
    finally:
        os.environ["PATH"] = path
    assert_one_line_error(result, "not an image in a supported format")
    assert not marker.exists()


def test_unknown_task(hub, tmp_path):
    image = Image.new("RGB", (8, 8))
    image.save(tmp_path / "x.png")
    assert_one_line_error(cli("predict", tmp_path / "x.png", "--task", "nope", "--hub", hub),
                          "no task named 'nope'; known tasks: fashion, fashion2")


# -- names and options ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "reason"), [
    ("", "invalid task name"), ("x" * 65, "invalid task name"), ("a/b", "invalid task name"),
    ("a\\b", "invalid task name"), ("..", "invalid task name"), ("../escape", "invalid task name"),
    ("tâche", "invalid task name"), ("new\nline", "invalid task name"), ("fashion", "already exists"),
    ("imagenet", "source's own task"),
], ids=["empty", "too-long", "slash", "backslash", "dotdot", "traversal", "unicode", "newline", "taken", "source"])
def test_bad_task_names(hub, fashion_dir, name, reason):
    assert_one_line_error(cli("add-task", name, "--data", fashion_dir, "--hub", hub), reason)
    assert not (hub.parent / "escape").exists() and not list(hub.parent.glob("*escape*"))


@pytest.mark.parametrize(("option", "value", "reason"), [
    ("--k-ratio", "0", "--k-ratio"), ("--k-ratio", "1.5", "--k-ratio"), ("--k-ratio", "nan", "--k-ratio"),
    ("--k-ratio", "-0.1", "--k-ratio"), ("--head-k-ratio", "0", "--head-k-ratio"),
    ("--head-k-ratio", "1.01", "--head-k-ratio"), ("--width-divisor", "0.5", "--width-divisor"),
    ("--width-divisor", "65", "--width-divisor"), ("--width-divisor", "nan", "--width-divisor"),
    ("--epochs", "0", "--epochs"), ("--epochs", "-3", "--epochs"), ("--batch-size", "0", "--batch-size"),
    ("--image-size", "8", "--image-size"), ("--lr", "inf", "--lr"), ("--val-fraction", "1", "--val-fraction"),
    ("--device", "tpu", "device"),
])
def test_options_out_of_range(hub, fashion_dir, option, value, reason):
    assert_one_line_error(cli("add-task", "t", "--data", fashion_dir, "--hub", hub, option, value), reason)


# -- the hub directory -------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["list"], ["add-task", "t", "--data", "."], ["predict", "x.png"],
                                     ["verify-forgetting"], ["doctor"], ["init", "--source", "efficientnet_lite0"]])
def test_a_hub_path_that_is_a_file(tmp_path, command):
    (tmp_path / "hubfile").write_text("not a hub")
    assert_one_line_error(cli(*command, "--hub", tmp_path / "hubfile"), "is a file")
    assert (tmp_path / "hubfile").read_text() == "not a hub"


@pytest.mark.parametrize("command", [["list"], ["doctor"], ["show", "x"]])
def test_no_hub_there(tmp_path, command):
    assert_one_line_error(cli(*command, "--hub", tmp_path / "nothing"), "snowhub init --source")
    assert not (tmp_path / "nothing").exists()


def test_a_read_only_hub_lists_but_refuses_writes(hub, fashion_dir, tmp_path):
    """Real permissions, in another process (as root, without the capabilities that bypass them).

    Serving a read-only hub is tested in-process in tests/test_migrations.py.
    """
    make_read_only(hub)
    try:
        listed = run_cli("list", "--hub", str(hub), "--json", read_only_root=True)
        assert listed.returncode == 0, listed.stderr
        assert [t["name"] for t in __import__("json").loads(listed.stdout)["tasks"]] == \
            ["imagenet", "fashion", "fashion2"]
        added = run_cli("add-task", "t", "--data", str(fashion_dir), "--hub", str(hub), *FAST_ARGS,
                        read_only_root=True)
        assert_one_line_error(added, "is read-only; make it writable")
    finally:
        make_writable(hub)


def test_init_under_a_read_only_directory(tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    make_read_only(parent)
    try:
        result = run_cli("init", "--source", "efficientnet_lite0", "--hub", str(parent / "hub"),
                         read_only_root=True)
    finally:
        make_writable(parent)
    assert_one_line_error(result, "read-only")
    assert list(parent.iterdir()) == []


# -- --weights ------------------------------------------------------------------------------------------


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("kind", ["wrong-architecture", "code-pickle", "torch-save-code", "garbage", "directory",
                                  "truncated-safetensors"])
def test_bad_weights_files(tmp_path, kind):
    marker = tmp_path / "code-ran"
    weights = tmp_path / "weights.pt"
    if kind == "wrong-architecture":
        torch.save(torch.nn.Linear(3, 3).state_dict(), weights)
        reason = "do not fit efficientnet_lite0"
    elif kind == "code-pickle":
        weights.write_bytes(pickle.dumps({"weight": _RunsCode(marker)}))
        reason = "not a weights-only file"
    elif kind == "torch-save-code":
        torch.save({"weight": _RunsCode(marker)}, weights)
        reason = "not a weights-only file"
    elif kind == "garbage":
        weights.write_bytes(os.urandom(4096))
        reason = str(weights)  # torch calls random bytes an unsafe pickle: refused, if not for the best reason
    elif kind == "directory":
        weights.mkdir()
        reason = "weights"
    else:
        from safetensors.torch import save_file

        weights = tmp_path / "weights.safetensors"
        save_file({"x": torch.zeros(1000)}, str(weights))
        weights.write_bytes(weights.read_bytes()[:500])
        reason = "cannot read safetensors file"
    result = cli("init", "--source", "efficientnet_lite0", "--weights", weights, "--hub", tmp_path / "hub")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[-1].startswith("error: ") and reason in lines[-1], result.stderr
    assert not marker.exists(), "unpickling the weights ran code"
    assert not (tmp_path / "hub").exists()


def test_nothing_is_written_outside_the_hub(hub_copy, tmp_path, monkeypatch):
    """A full add-task (real files, cached training) creates files only inside the hub directory."""
    monkeypatch.setattr(hub_module, "train_delta", cached_training)
    data = small_dataset(tmp_path / "data", per_class=8)
    outside = {p for p in tmp_path.rglob("*")} - {p for p in hub_copy.rglob("*")}
    result = cli("add-task", "inside", "--data", data, "--hub", hub_copy, *FAST_ARGS)
    assert result.exit_code == 0, result.stderr
    assert {p for p in tmp_path.rglob("*")} - {p for p in hub_copy.rglob("*")} == outside
    shutil.rmtree(data)
