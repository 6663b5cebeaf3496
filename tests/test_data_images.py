"""Tests for snowhub.data.images (load_rgb, ImageListDataset) and snowhub.data.transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest_data import sample_pixels, write_image
from PIL import Image, ImageFile

from snowhub.data import ImageListDataset, eval_transform, load_rgb, train_transform
from snowhub.errors import ConfigError, DataError


def _rgb8(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    arr = np.asarray(image)
    assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3
    return arr


# --- modes -> 8-bit RGB --------------------------------------------------------------------------


def test_grey_image_becomes_rgb_with_equal_channels(tmp_path):
    grey = sample_pixels(1)[0]
    Image.fromarray(grey, mode="L").save(tmp_path / "g.png")
    arr = _rgb8(load_rgb(tmp_path / "g.png"))
    assert arr.shape == (28, 28, 3)
    for c in range(3):
        np.testing.assert_array_equal(arr[..., c], grey)


def test_palette_image_becomes_rgb(tmp_path):
    im = Image.new("P", (4, 2))
    im.putpalette([0, 0, 0, 200, 30, 10] + [0] * 762)
    im.putpixel((1, 0), 1)
    im.save(tmp_path / "p.png")
    arr = _rgb8(load_rgb(tmp_path / "p.png"))
    assert tuple(arr[0, 1]) == (200, 30, 10) and tuple(arr[0, 0]) == (0, 0, 0)


def test_palette_with_transparency_becomes_rgb(tmp_path):
    im = Image.new("P", (3, 3))
    im.putpalette([10, 20, 30, 40, 50, 60] + [0] * 762)
    im.putpixel((0, 0), 1)
    im.save(tmp_path / "t.gif", transparency=0)
    arr = _rgb8(load_rgb(tmp_path / "t.gif"))
    assert tuple(arr[0, 0]) == (40, 50, 60)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_dropped(tmp_path, mode):
    colour = (90, 120, 0) if mode == "RGBA" else (90, 0)
    Image.new(mode, (5, 5), colour).save(tmp_path / "a.png")
    arr = _rgb8(load_rgb(tmp_path / "a.png"))
    expected = (90, 120, 0) if mode == "RGBA" else (90, 90, 90)
    assert tuple(arr[2, 2]) == expected


def test_cmyk_becomes_rgb(tmp_path):
    Image.new("CMYK", (4, 4), (0, 255, 0, 0)).save(tmp_path / "c.tif")  # pure magenta ink
    assert tuple(_rgb8(load_rgb(tmp_path / "c.tif"))[0, 0]) == (255, 0, 255)


def test_16_bit_grey_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 255, 256, 40000, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    arr = _rgb8(load_rgb(tmp_path / "deep.png"))
    np.testing.assert_array_equal(arr[0, :, 0], [0, 0, 1, 156, 255])


def test_32_bit_int_image_is_read_as_16_bit(tmp_path):
    values = np.array([[-5, 256, 40000, 70000]], dtype=np.int32)
    Image.fromarray(values).save(tmp_path / "deep.tif")
    assert Image.open(tmp_path / "deep.tif").mode == "I"
    arr = _rgb8(load_rgb(tmp_path / "deep.tif"))
    np.testing.assert_array_equal(arr[0, :, 1], [0, 1, 156, 255])


def test_animated_gif_gives_first_frame(tmp_path):
    frames = [Image.new("RGB", (6, 6), c) for c in [(255, 0, 0), (0, 0, 255), (0, 255, 0)]]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(tmp_path / "anim.gif").n_frames == 3
    assert tuple(_rgb8(load_rgb(tmp_path / "anim.gif"))[3, 3]) == (255, 0, 0)


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.new("RGB", (20, 10), (0, 128, 0)).save(tmp_path / "phone.jpg", exif=exif)
    assert load_rgb(tmp_path / "phone.jpg").size == (10, 20)


def test_returned_image_is_fully_loaded_and_detached(tmp_path):
    path = write_image(tmp_path / "x.png")
    image = load_rgb(path)
    path.unlink()  # pixels must already be in memory
    assert _rgb8(image).shape == (28, 28, 3)


# --- unreadable files ----------------------------------------------------------------------------


def _read_error(path) -> str:
    with pytest.raises(DataError) as info:
        load_rgb(path)
    message = str(info.value)
    assert message.startswith(f"cannot read image {path}: ")
    assert "\n" not in message
    return message


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    assert "empty" in _read_error(tmp_path / "empty.png")


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_file(tmp_path, suffix):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / f"full{suffix}")
    data = (tmp_path / f"full{suffix}").read_bytes()
    (tmp_path / f"cut{suffix}").write_bytes(data[: len(data) // 2])
    assert "truncated" in _read_error(tmp_path / f"cut{suffix}")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_text_file_with_image_suffix(tmp_path):
    (tmp_path / "notes.jpg").write_text("this is not a picture\nsecond line\n")
    assert "not an image" in _read_error(tmp_path / "notes.jpg")


def test_missing_file(tmp_path):
    assert "No such file" in _read_error(tmp_path / "gone.png")


# --- dataset -------------------------------------------------------------------------------------


def test_image_list_dataset_applies_transform(tmp_path):
    samples = [(write_image(tmp_path / f"{i}.png", i), i % 2) for i in range(3)]
    ds = ImageListDataset(samples, eval_transform(32))
    assert len(ds) == 3
    image, label = ds[2]
    assert label == 0
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32)
    raw, _ = ImageListDataset(samples)[1]
    assert isinstance(raw, Image.Image) and raw.mode == "RGB"


def test_image_list_dataset_reports_bad_image(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"")
    with pytest.raises(DataError, match="bad.png"):
        ImageListDataset([(tmp_path / "bad.png", 0)], eval_transform(8))[0]


# --- transforms ----------------------------------------------------------------------------------


def test_eval_transform_resizes_short_side_then_centre_crops():
    # 100x50 (w x h): short side 50 -> 64 (= round(56 * 256/224)), long side -> 128, crop 56x56 in the centre.
    arr = np.zeros((50, 100, 3), dtype=np.uint8)
    arr[:, :50] = 255  # left half white, right half black
    out = eval_transform(56)(Image.fromarray(arr))
    assert isinstance(out, torch.Tensor) and type(out) is torch.Tensor
    assert out.dtype == torch.uint8 and out.shape == (3, 56, 56)
    # the crop spans columns 36..91 of the 128-wide resize, whose left half (0..63) is white
    assert out[:, :, :20].min() == 255 and out[:, :, -20:].max() == 0


def test_eval_transform_keeps_exact_uint8_values():
    out = eval_transform(16)(Image.new("RGB", (40, 30), (7, 130, 251)))
    assert out.dtype == torch.uint8
    assert out[:, 8, 8].tolist() == [7, 130, 251]


def test_train_transform_shape_dtype_and_flip():
    arr = np.zeros((40, 60, 3), dtype=np.uint8)
    arr[:, :30] = 255
    image = Image.fromarray(arr)
    torch.manual_seed(0)
    outs = [train_transform(24)(image) for _ in range(12)]
    assert all(o.dtype == torch.uint8 and o.shape == (3, 24, 24) for o in outs)
    # with flipping, the white half shows up on the right at least once; without, never
    assert any(o[0, :, -1].float().mean() > o[0, :, 0].float().mean() for o in outs)
    torch.manual_seed(0)
    no_flip = [train_transform(24, hflip=False)(image) for _ in range(12)]
    assert all(o[0, :, -1].float().mean() <= o[0, :, 0].float().mean() for o in no_flip)


@pytest.mark.parametrize("size", [0, -3, 2.5, True])
def test_bad_image_size_is_rejected(size):
    with pytest.raises(ConfigError):
        eval_transform(size)
    with pytest.raises(ConfigError):
        train_transform(size)
