"""Image transforms: RGB PIL image in, ``(3, H, W)`` uint8 tensor out.

They stop at uint8 on purpose: mean/std normalisation to float happens inside the model, so the
same tensors can be stored exactly (e.g. probe sets) and fed to any source model.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, v2

from snowhub.errors import ConfigError

# Resize-then-crop ratio of the usual ImageNet evaluation recipe (resize 256, crop 224); every source uses it
# today (its own is SourceSpec.eval_resize_ratio).
DEFAULT_RESIZE_RATIO = 256 / 224


def eval_transform(image_size: int,
                   resize_ratio: float = DEFAULT_RESIZE_RATIO) -> Callable[[Image.Image], torch.Tensor]:
    """Deterministic transform for validation and ``predict``.

    Resizes the shorter side to ``round(image_size * resize_ratio)`` pixels (bilinear, antialiased; the
    source's ratio is :attr:`snowhub.models.sources.SourceSpec.eval_resize_ratio`), takes the centre
    ``image_size`` x ``image_size`` crop, and returns a ``torch.uint8`` tensor of shape
    ``(3, image_size, image_size)`` with values 0..255. Input: an RGB PIL image (see
    :func:`snowhub.data.images.load_rgb`).

    Raises:
        ConfigError: ``image_size`` is not a positive integer, or ``resize_ratio`` is below 1.
    """
    return v2.Compose([eval_resize_crop(image_size, resize_ratio), v2.PILToTensor()])


def eval_resize_crop(image_size: int,
                     resize_ratio: float = DEFAULT_RESIZE_RATIO) -> Callable[[Image.Image], Image.Image]:
    """:func:`eval_transform` without its last step: the resized, centre-cropped RGB PIL image (PIL only,
    no torch operation), ``image_size`` x ``image_size`` pixels.

    Raises:
        ConfigError: as :func:`eval_transform`.
    """
    image_size = _check_size(image_size)
    if not resize_ratio >= 1:
        raise ConfigError(f"resize_ratio must be at least 1 (resize, then crop), got {resize_ratio!r}")
    return v2.Compose(
        [
            v2.Resize(round(image_size * resize_ratio), interpolation=InterpolationMode.BILINEAR, antialias=True),
            v2.CenterCrop(image_size),
        ]
    )


def train_transform(image_size: int, hflip: bool = True) -> Callable[[Image.Image], torch.Tensor]:
    """Random augmentation for training.

    ``RandomResizedCrop(image_size, scale=(0.35, 1.0))`` (bilinear, antialiased), then a horizontal flip
    with probability 0.5 if ``hflip`` (turn it off for classes that are mirror images of each other,
    e.g. arrows or some digits). Returns a ``torch.uint8`` tensor of shape ``(3, image_size,
    image_size)``. Randomness comes from torch's global RNG, so ``torch.manual_seed`` makes it
    repeatable.

    Raises:
        ConfigError: ``image_size`` is not a positive integer.
    """
    image_size = _check_size(image_size)
    steps: list = [
        v2.RandomResizedCrop(
            image_size, scale=(0.35, 1.0), interpolation=InterpolationMode.BILINEAR, antialias=True
        )
    ]
    if hflip:
        steps.append(v2.RandomHorizontalFlip(p=0.5))
    steps.append(v2.PILToTensor())
    return v2.Compose(steps)


def _check_size(image_size: int) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, numbers.Integral) or image_size <= 0:
        raise ConfigError(f"image_size must be a positive integer, got {image_size!r}")
    return int(image_size)
