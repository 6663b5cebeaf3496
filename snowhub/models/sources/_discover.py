"""Tap discovery helpers shared by the timm and torchvision providers: one dummy forward pass that reads the
candidate maps' shapes, their layout, the source's block counts and which weights feed only its head."""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from snowhub.errors import SourceError
from snowhub.models.blocks import dispatch_family
from snowhub.models.sources._spec import Tap

# Equal-reduction models (vision transformers): this many taps, at the ends of equal groups of blocks.
VIT_TAPS = 4


def unknown(kind: str, arch: str, known: Iterable[str], how: str) -> SourceError:
    """``unknown timm architecture 'x'; did you mean a, b?`` (close names by difflib), one line."""
    close = difflib.get_close_matches(arch, list(known), n=4, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; {how}"
    return SourceError(f"unknown {kind} architecture {arch!r}{hint}")


def refused(source: str, image_size: int, exc: BaseException) -> SourceError:
    """The model raised on a dummy image of `image_size` px: one line naming the size."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return SourceError(f"{source} does not take {image_size} px images ({first}); choose another `image_size`")


def hooked_forward(model: nn.Module, names: Sequence[str], image_size: int, source: str
                   ) -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
    """Run `model` once on a ``(1, 3, S, S)`` zero image, keeping the outputs of the modules `names`.

    Returns:
        (module name → output, module names with parameters that first ran after the last of `names` had
        finished: they feed only the head, so a backbone's state dict may leave them out).

    Raises:
        SourceError: a name is not a module of the model, or the model refuses S px images.
    """
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise SourceError(f"{source} has no module {missing[0]!r} to tap; name modules of the model in `taps`")
    outputs: dict[str, torch.Tensor] = {}
    first_call: dict[str, int] = {}
    done_at: dict[str, int] = {}
    handles = []
    def seen(name: str) -> None:
        first_call.setdefault(name, len(first_call) + len(done_at))

    for name, module in modules.items():
        handles.append(module.register_forward_pre_hook(lambda _m, _i, name=name: seen(name)))
    for name in names:
        def keep(_m, _i, out, name=name):
            outputs[name] = out
            done_at[name] = len(first_call) + len(done_at)
        handles.append(modules[name].register_forward_hook(keep))
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, image_size, image_size))
    except Exception as exc:  # noqa: BLE001 - any failure of a foreign model on this size is the user's size
        raise refused(source, image_size, exc) from None
    finally:
        for h in handles:
            h.remove()
    last = max(done_at.values())
    after = tuple(n for n, order in first_call.items()
                  if order > last and n and any(True for _ in modules[n].parameters(recurse=False)))
    return outputs, after


def layout_of(out: object, channels: int | None, model_format: str | None, source: str, name: str
              ) -> tuple[str, int, int]:
    """(layout, channels, map height) of one module output ``out`` (a square input).

    `channels`: what the model's feature_info says, if it says; `model_format`: timm's ``output_fmt``.

    Raises:
        SourceError: the output is not a 3-d token tensor or a 4-d map.
    """
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        out = out[0]
    if not isinstance(out, torch.Tensor) or out.dim() not in (3, 4):
        raise SourceError(f"{source} cannot be tapped at {name!r}: its output is not a feature map "
                          "(B, C, H, W) or tokens (B, L, C); name other modules in `taps`")
    if out.dim() == 3:
        return "NLC", out.shape[2], 0
    nchw = out.shape[1] == channels if channels else out.shape[2] == out.shape[3]
    if channels and out.shape[-1] == channels and not nchw:
        return "NHWC", channels, out.shape[1]
    if not channels and model_format == "NHWC":
        return "NHWC", out.shape[3], out.shape[1]
    return "NCHW", out.shape[1], out.shape[2]


def stage_blocks(model: nn.Module, name: str) -> int:
    """How many blocks the stage `name` of the model holds: a Sequential's length, a stage's ``blocks``, else
    the children with parameters (at least 1)."""
    module = model.get_submodule(name)
    if isinstance(module, (nn.Sequential, nn.ModuleList)):
        return max(1, len(module))
    inner = getattr(module, "blocks", None)
    if isinstance(inner, (nn.Sequential, nn.ModuleList)):
        return max(1, len(inner))
    return max(1, sum(1 for c in module.children() if any(True for _ in c.parameters())))


def equal_reduction_picks(count: int) -> list[int]:
    """Indices of :data:`VIT_TAPS` taps among `count` equal-reduction blocks: the last block of each of
    VIT_TAPS equal groups (``[2, 5, 8, 11]`` of 12)."""
    taps = min(VIT_TAPS, count)
    return [math.ceil(count * (i + 1) / taps) - 1 for i in range(taps)]


def check_taps(taps: Sequence[Tap], source: str) -> tuple[Tap, ...]:
    """`taps` if the delta can be wired to them: at least one, strides ≥ 1, each a multiple of the one before.

    Raises:
        SourceError: otherwise (one line naming the first bad tap).
    """
    if not taps:
        raise SourceError(f"{source} cannot be tapped: no feature maps found; name modules in `taps`")
    for before, tap in zip(taps, taps[1:]):
        if tap.stride < before.stride or tap.stride % before.stride:
            raise SourceError(f"{source}: tap {tap.name!r} (stride {tap.stride}) cannot follow {before.name!r} "
                              f"(stride {before.stride}); taps go in forward order, each stride a multiple of the last")
    if taps[0].stride < 1:
        raise SourceError(f"{source}: tap {taps[0].name!r} is larger than the image")
    return tuple(taps)


def family_of(model: nn.Module) -> str:
    """The delta's block family for `model` (:func:`snowhub.models.blocks.dispatch_family`)."""
    return dispatch_family(model.modules())
