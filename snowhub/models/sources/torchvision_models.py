"""The ``torchvision:`` source provider: any classification model of ``torchvision.models.get_model``,
tapped at the **last graph node at each stride** (``get_graph_node_names``, one dummy forward through
``create_feature_extractor``), normalised and resized as its default weights' ``transforms()`` say, its
ImageNet head's class names from the weights' ``meta["categories"]``.

Only NCHW maps are found (torchvision's Swin and ViT keep NHWC maps or tokens: use their timm versions).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from snowhub.errors import SourceError
from snowhub.models.sources import _discover
from snowhub.models.sources._spec import SourceSpec, Tap

SCHEME = "torchvision"
HOW = "torchvision.models.list_models() lists every name (e.g. torchvision:resnet18, torchvision:regnet_x_400mf)"
_MAX_STRIDE = 32
_INDEX = re.compile(r"\d+|.*-\d+")  # a block's place in its stage: ``2`` (Sequential), ``block1-0`` (RegNet)


def _names() -> list[str]:
    import torchvision.models as tvm

    return tvm.list_models(module=tvm)


def _build(arch: str) -> nn.Module:
    import torchvision.models as tvm

    return tvm.get_model(arch, weights=None)


def _weights_name(arch: str) -> str | None:
    """``"ResNet18_Weights.IMAGENET1K_V1"``: the arch's default weights, if torchvision has any."""
    import torchvision.models as tvm

    try:
        default = tvm.get_model_weights(arch).DEFAULT
    except (ValueError, AttributeError, KeyError):
        return None
    name = f"{type(default).__name__}.{default.name}"
    return name if hasattr(tvm, type(default).__name__) else None


def _block_count(nodes: Sequence[str], strides: Mapping[str, int]) -> dict[int, int]:
    """Blocks per stride: each block (a node path up to its first index, ``layer1.2``) counts at the stride of
    its last node."""
    last: dict[str, int] = {}
    for node in nodes:
        block = _block_of(node)
        if block is not None and node in strides:
            last[block] = strides[node]
    counts: dict[int, int] = {}
    for stride in last.values():
        counts[stride] = counts.get(stride, 0) + 1
    return counts


def _block_of(node: str) -> str | None:
    """The block a node belongs to: its path up to the first index (``layer1.2.relu_2`` → ``layer1.2``; RegNet's
    ``trunk_output.block1.block1-0.f.a`` → ``trunk_output.block1.block1-0``)."""
    parts = node.split(".")
    index = next((i for i, p in enumerate(parts) if _INDEX.fullmatch(p)), None)
    return None if index is None else ".".join(parts[:index + 1])


def _block_outputs(nodes: Sequence[str]) -> list[str]:
    """The nodes that end a block (the last node of each ``_block_of``) or stand outside any (``relu``), in order:
    the candidates for a tap, so an expansion conv inside a block is never mistaken for the stage's output."""
    last = {_block_of(n): n for n in nodes}
    return [n for n in nodes if _block_of(n) is None or last[_block_of(n)] == n]


def _strides(model: nn.Module, nodes: Sequence[str], image_size: int, source: str) -> dict[str, tuple[int, int]]:
    """node → (stride, channels) of every node whose output is an exact NCHW map at stride 2…32."""
    from torchvision.models.feature_extraction import create_feature_extractor

    try:
        extractor = create_feature_extractor(model.eval(), return_nodes=list(nodes))
        with torch.no_grad():
            outputs = extractor(torch.zeros(1, 3, image_size, image_size))
    except Exception as exc:  # noqa: BLE001 - FX or the model refusing the size
        raise _discover.refused(source, image_size, exc) from None
    found = {}
    for node, out in outputs.items():
        if isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[2] > 0:
            stride = image_size // out.shape[2]
            if 2 <= stride <= _MAX_STRIDE and stride & (stride - 1) == 0 and out.shape[2] * stride == image_size:
                found[node] = (stride, out.shape[1])
    return found


def _optional(model: nn.Module, nodes: Sequence[str], last: str) -> tuple[str, ...]:
    """Modules with weights that only nodes after `last` use (the head): a backbone's file may omit them."""
    before = nodes[:nodes.index(last) + 1]
    return tuple(name for name, m in model.named_modules()
                 if name and any(True for _ in m.parameters(recurse=False))
                 and not any(n == name or n.startswith(name + ".") or name.startswith(n + ".") for n in before))


def spec(arch: str, image_size: int | None = None, taps: Sequence[str] | None = None) -> SourceSpec:
    """Discover the :class:`SourceSpec` of ``torchvision:<arch>`` (builds the model once, one dummy forward).

    Raises:
        SourceError: unknown architecture (close names suggested), nothing tappable, or the size is refused.
    """
    from torchvision.models.feature_extraction import get_graph_node_names

    source = f"{SCHEME}:{arch}"
    if arch not in _names():
        raise _discover.unknown("torchvision", arch, _names(), HOW)
    weights = _weights_name(arch)
    base = _base(arch, weights, (), 224, None, "")
    size = image_size or base.image_size
    model = _build(arch)
    try:
        nodes = [n for n in get_graph_node_names(model.eval())[1] if n != "x"]
    except Exception as exc:  # noqa: BLE001 - a model FX cannot trace
        raise SourceError(f"{source} cannot be tapped: torch.fx cannot trace it ({str(exc).splitlines()[0]})") from None
    unknown = [t for t in taps or () if t not in nodes]
    if unknown:
        raise SourceError(f"{source} has no graph node {unknown[0]!r}; get_graph_node_names lists them")
    found = _strides(model, list(taps) if taps else nodes, size, source)
    if taps:
        missing = [t for t in taps if t not in found]
        if missing:
            raise SourceError(f"{source} cannot be tapped at {missing[0]!r}: not a feature map at stride 2 to 32")
        chosen = list(taps)
    else:
        at: dict[int, str] = {}
        for node in _block_outputs(nodes):
            if node in found:
                at[found[node][0]] = node  # the last block output at each stride
        chosen = sorted(at.values(), key=nodes.index)
    blocks = _block_count(nodes, {n: s for n, (s, _) in found.items()})
    tap_list = [Tap(n, int(found[n][1]), found[n][0], blocks.get(found[n][0], 1)) for n in chosen]
    checked = _discover.check_taps(tap_list, source)
    head = nodes[-1] if weights else None
    return _base(arch, weights, checked, size, head, _discover.family_of(model), _optional(model, nodes, chosen[-1]))


def _base(arch: str, weights: str | None, taps: Sequence[Tap], image_size: int | None, head: str | None,
          block: str, optional: tuple[str, ...] = ()) -> SourceSpec:
    from snowhub.models.sources._spec import IMAGENET_MEAN, IMAGENET_STD, _weights_enum

    mean, std, native, crop_pct, interpolation = IMAGENET_MEAN, IMAGENET_STD, 224, 224 / 256, None
    if weights is not None:
        recipe = _weights_enum(weights).transforms()
        mean, std = tuple(recipe.mean), tuple(recipe.std)
        native, crop_pct = int(recipe.crop_size[0]), recipe.crop_size[0] / recipe.resize_size[0]
        interpolation = str(recipe.interpolation.value)
    size = image_size or native
    return SourceSpec(
        name=f"{SCHEME}:{arch}", block=block, taps=tuple(taps), head=head, mean=mean, std=std, image_size=size,
        build=functools.partial(_build, arch), torchvision_weights=weights,
        eval_resize=(round(size / crop_pct), size), interpolation=interpolation, optional_prefixes=optional,
        no_weights_hint=None if weights else "torchvision publishes no weights for it; pass `weights` FILE or `weights` random",
    )


def from_record(arch: str, taps: Sequence[Mapping], preprocessing: Mapping, has_head: bool) -> SourceSpec:
    """The spec a hub recorded for ``torchvision:<arch>`` (no model is built; the block family is left empty
    for :func:`snowhub.models.sources.with_family`)."""
    weights = _weights_name(arch)
    head = None
    if has_head:
        from torchvision.models.feature_extraction import get_graph_node_names

        head = get_graph_node_names(_build(arch).eval())[1][-1]
    base = _base(arch, weights, [Tap.from_dict(t) for t in taps], int(preprocessing["image_size"]), head, "")
    return base.as_recorded(taps, preprocessing)
