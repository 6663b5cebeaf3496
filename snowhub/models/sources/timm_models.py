"""The ``timm:`` source provider: any ``timm.create_model`` architecture, tapped where its ``feature_info``
says (one tap per stage: the deepest module at each reduction), normalised as its ``pretrained_cfg`` says.

Vision transformers report every block at one reduction (16 for patch 16): they are tapped at the last
block of each of four equal groups, their tokens folded back into maps (``Tap.layout == "NLC"``), and built
with ``dynamic_img_size=True`` so any image size the patch grid allows works. NHWC stages (Swin, MambaOut)
are permuted at the tap. Weights: ``--weights FILE``, ``--weights random``, or timm's pretrained weights
from the Hugging Face cache (downloaded when online). ``docs/sources.md`` shows it end to end.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from snowhub.errors import SourceError
from snowhub.models.sources import _discover
from snowhub.models.sources._spec import SourceSpec, Tap

SCHEME = "timm"
HOW = "timm.list_models() lists every name (e.g. timm:convnext_atto, timm:vit_tiny_patch16_224)"


def _timm():
    try:
        import timm
    except ImportError:  # pragma: no cover - timm is a core dependency
        raise SourceError("timm: sources need the timm package: pip install timm") from None
    return timm


def _build(arch: str, kwargs: tuple[tuple[str, Any], ...]) -> nn.Module:
    return _timm().create_model(arch, pretrained=False, **dict(kwargs))


def _create(arch: str, image_size: int | None, default_size: int) -> tuple[nn.Module, tuple[tuple[str, Any], ...]]:
    """The model with random weights, and the keyword arguments it took: ``dynamic_img_size=True`` where the
    model has it (ViTs), else ``img_size`` when another size than its own is asked for (Swin)."""
    for kwargs in ({"dynamic_img_size": True},
                   {"img_size": image_size} if image_size and image_size != default_size else {}, {}):
        try:
            return _build(arch, tuple(kwargs.items())), tuple(sorted(kwargs.items()))
        except TypeError:
            continue
    raise SourceError(f"timm:{arch} cannot be built")  # pragma: no cover - the last try takes no kwargs


def _cached_weights(arch: str, cfg: Mapping) -> tuple[dict[str, torch.Tensor], str] | None:
    """timm's pretrained weights from the Hugging Face cache, or downloaded unless ``HF_HUB_OFFLINE`` is set."""
    repo = cfg.get("hf_hub_id")
    if not repo:
        return None
    import huggingface_hub
    from huggingface_hub import constants

    for filename in ("model.safetensors", "pytorch_model.bin"):
        path = huggingface_hub.try_to_load_from_cache(repo, filename)
        if isinstance(path, str):
            return _read(path), f"timm:{repo}"
    if constants.HF_HUB_OFFLINE:
        return None
    try:
        path = huggingface_hub.hf_hub_download(repo, "model.safetensors")
    except Exception:  # offline, no such file, HTTP errors
        return None
    return _read(path), f"timm:{repo}"


def _read(path: str) -> dict[str, torch.Tensor]:
    """A cached checkpoint: safetensors, or a weights-only torch file (never an arbitrary pickle)."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    return torch.load(path, map_location="cpu", weights_only=True)


def _pick_taps(info: Sequence[Mapping]) -> list[tuple[Mapping, int]]:
    """(feature_info entry, blocks) of each tap: the deepest entry at each reduction; for equal reductions
    (a ViT) the ends of :data:`_discover.VIT_TAPS` equal groups."""
    if len({d["reduction"] for d in info}) == 1 and len(info) > 1:
        picks = _discover.equal_reduction_picks(len(info))
        return [(info[i], i - (picks[j - 1] if j else -1)) for j, i in enumerate(picks)]
    deepest: dict[int, Mapping] = {}
    for d in info:
        deepest[d["reduction"]] = d
    return [(d, 0) for d in deepest.values()]


def _discover_taps(model: nn.Module, arch: str, image_size: int, names: Sequence[str] | None
                   ) -> tuple[tuple[Tap, ...], tuple[str, ...]]:
    source = f"timm:{arch}"
    info = list(getattr(model, "feature_info", None) or [])
    if names:
        chosen = [({"module": n}, 0) for n in names]
    elif not info:
        raise SourceError(f"{source} cannot be tapped: timm gives it no feature_info; name its taps in `taps`")
    else:
        chosen = _pick_taps(info)
    modules = [str(d["module"]) for d, _ in chosen]
    outputs, after = _discover.hooked_forward(model, modules, image_size, source)
    prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
    taps = []
    for (d, blocks), name in zip(chosen, modules):
        layout, channels, height = _discover.layout_of(outputs[name], d.get("num_chs"), getattr(model, "output_fmt", None),
                                                       source, name)
        stride = int(d["reduction"]) if "reduction" in d else (image_size // height if height else 0)
        if layout == "NLC" and "reduction" not in d:
            patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
            stride = int(patch[0]) if patch else 0
        if stride < 1:
            raise SourceError(f"{source}: cannot tell the stride of tap {name!r} at {image_size} px")
        taps.append(Tap(name, int(channels), stride, blocks or _discover.stage_blocks(model, name), layout,
                        prefix if layout == "NLC" else 0))
    return _discover.check_taps(taps, source), after


def _head(model: nn.Module, cfg: Mapping) -> str | None:
    """Module name of the ImageNet-1k classifier, or None (another label set, or no head)."""
    classifier = cfg.get("classifier")
    if not isinstance(classifier, str) or getattr(model, "num_classes", 0) != 1000:
        return None
    try:
        model.get_submodule(classifier)
    except AttributeError:
        return None
    return classifier


def spec(arch: str, image_size: int | None = None, taps: Sequence[str] | None = None) -> SourceSpec:
    """Discover the :class:`SourceSpec` of ``timm:<arch>`` (builds the model once, one dummy forward).

    Args:
        arch: a timm model name, with or without a pretrained tag (``convnext_atto.d2_in1k``).
        image_size: the hub's default image size in px (default: the pretrained config's input size).
        taps: module names to tap instead of the discovered ones, in forward order.

    Raises:
        SourceError: unknown architecture (close names suggested), no taps, or the size is refused.
    """
    timm = _timm()
    if not timm.is_model(arch):
        raise _discover.unknown("timm", arch, timm.list_models(), HOW)
    cfg = timm.models.get_pretrained_cfg(arch) or {}
    cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    default_size = int(cfg.get("input_size", (3, 224, 224))[-1])
    size = image_size or default_size
    model, kwargs = _create(arch, size, default_size)
    found, after = _discover_taps(model, arch, size, taps)
    head = _head(model, cfg)
    return recorded(arch, found, size, kwargs, cfg, head, _discover.family_of(model), after)


def recorded(arch: str, taps: Sequence[Tap], image_size: int, kwargs: tuple[tuple[str, Any], ...], cfg: Mapping,
             head: str | None, block: str, optional: tuple[str, ...] = ()) -> SourceSpec:
    """The spec of ``timm:<arch>`` from what is known already (a hub's record): no model is built."""
    crop_pct = float(cfg.get("crop_pct") or 0.875)
    return SourceSpec(
        name=f"{SCHEME}:{arch}", block=block, taps=tuple(taps), head=head,
        mean=tuple(float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(float(v) for v in cfg.get("std", (0.229, 0.224, 0.225))),
        image_size=image_size, build=functools.partial(_build, arch, tuple(kwargs)),
        wheel_weights=functools.partial(_cached_weights, arch, dict(cfg)),
        eval_resize=(round(image_size / crop_pct), image_size), model_kwargs=tuple(kwargs),
        interpolation=cfg.get("interpolation"), optional_prefixes=optional,
        no_weights_hint=(f"timm's pretrained weights ({cfg.get('hf_hub_id') or 'none published'}) are not in the "
                         "Hugging Face cache and could not be downloaded; pass `weights` FILE or `weights` random"),
    )


def from_record(arch: str, taps: Sequence[Mapping], preprocessing: Mapping, has_head: bool) -> SourceSpec:
    """The spec a hub recorded for ``timm:<arch>``: its taps, normalisation, sizes and model kwargs. Its
    block family is left empty: :func:`snowhub.models.sources.with_family` reads it off the built model."""
    timm = _timm()
    cfg = timm.models.get_pretrained_cfg(arch) if timm.is_model(arch) else None
    cfg = (cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)) if cfg else {}
    kwargs = tuple(sorted(dict(preprocessing.get("model_kwargs") or {}).items()))
    base = recorded(arch, [Tap.from_dict(t) for t in taps], int(preprocessing["image_size"]), kwargs, cfg,
                    cfg.get("classifier") if has_head else None, "")
    return base.as_recorded(taps, preprocessing)
