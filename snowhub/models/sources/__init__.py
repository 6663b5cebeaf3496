"""Source models: which pretrained networks snowhub can subscribe to, where they are tapped, and where
their weights come from.

A source is named ``scheme:arch`` (``timm:convnext_atto``, ``torchvision:resnet18``) or by one of the four
built-in names (``resnet50``, ``resnet18``, ``mobilenet_v2``, ``efficientnet_lite0``, written out in
:mod:`.builtin`; every hub made before providers existed records one of them). A :class:`SourceProvider`
per scheme discovers a model's :class:`SourceSpec` (taps, normalisation, head) and rebuilds it from what
a hub recorded. ``docs/sources.md`` is the user's guide.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Callable

from torch import nn

from snowhub.errors import SourceError
from snowhub.models.sources import timm_models, torchvision_models
from snowhub.models.sources._discover import family_of
from snowhub.models.sources._spec import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LEGACY_EVAL_RESIZE,
    SourceSpec,
    Tap,
    imagenet_categories,
)
from snowhub.models.sources.builtin import SOURCES

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "LEGACY_EVAL_RESIZE", "PROVIDERS", "SOURCES", "SourceProvider",
           "SourceSpec", "Tap", "available_sources", "get_spec", "imagenet_categories", "naming_help",
           "recorded_spec", "split_name", "with_family"]


@dataclass(frozen=True)
class SourceProvider:
    """Where the sources of one scheme come from.

    Attributes:
        scheme: the part before ``:`` in a source name (``"timm"``, ``"torchvision"``).
        discover: ``(arch, image_size, taps) → SourceSpec``: builds the model once and finds its taps
            (or checks the named ones); raises :class:`SourceError` on unknown names, untappable models and
            refused image sizes.
        from_record: ``(arch, taps, preprocessing, has_head) → SourceSpec`` as a hub recorded it, without
            discovering anything (the block family is read off the built model by :func:`with_family`).
        how: one sentence on how to list the architectures it knows.
    """

    scheme: str
    discover: Callable[[str, int | None, Sequence[str] | None], SourceSpec]
    from_record: Callable[[str, Sequence[Mapping], Mapping, bool], SourceSpec]
    how: str


PROVIDERS: dict[str, SourceProvider] = {
    p.scheme: p for p in (
        SourceProvider("timm", timm_models.spec, timm_models.from_record, timm_models.HOW),
        SourceProvider("torchvision", torchvision_models.spec, torchvision_models.from_record, torchvision_models.HOW),
    )
}


def available_sources() -> list[str]:
    """The built-in source names ``snowhub init --source`` accepts without a scheme, in their listed order
    (resnet50, resnet18, mobilenet_v2, efficientnet_lite0); any other model is ``timm:<arch>`` or
    ``torchvision:<arch>`` (:func:`naming_help`)."""
    return list(SOURCES)


def naming_help() -> str:
    """One paragraph: the built-in names and how to name any other model."""
    schemes = "; ".join(f"{p.scheme}:<arch> ({p.how})" for p in PROVIDERS.values())
    return f"built-in: {', '.join(SOURCES)}; any other model: {schemes}"


def split_name(name: str) -> tuple[SourceProvider | None, str]:
    """``"timm:convnext_atto"`` → (the timm provider, ``"convnext_atto"``); a built-in name → (None, name).

    Raises:
        SourceError: an unknown scheme, or an unknown bare name (listing the built-in ones and the schemes).
    """
    scheme, sep, arch = name.partition(":")
    if not sep:
        if name not in SOURCES:
            raise SourceError(f"unknown source {name!r}; choose one of: {', '.join(SOURCES)}, "
                              f"or name any model as {' or '.join(p + ':<arch>' for p in PROVIDERS)}")
        return None, name
    if scheme not in PROVIDERS or not arch:
        raise SourceError(f"unknown source {name!r}: the scheme is one of {', '.join(PROVIDERS)} "
                          f"(e.g. timm:convnext_atto), or a built-in name: {', '.join(SOURCES)}")
    return PROVIDERS[scheme], arch


def get_spec(name: str, image_size: int | None = None, taps: Sequence[str] | None = None) -> SourceSpec:
    """The :class:`SourceSpec` called `name`: a built-in one, or discovered from the model (``scheme:arch``).

    Args:
        image_size: the default image size of a discovered source (px; checked by a dummy forward).
        taps: module / graph-node names to tap instead of the discovered ones (discovered sources only).

    Raises:
        SourceError: unknown name (the message lists the known ones or close names), a model that cannot
            be tapped, or an image size it refuses.
    """
    provider, arch = split_name(name)
    if provider is None:
        if taps or image_size:
            raise SourceError(f"{name} is a built-in source with fixed taps and size; use `taps` / `image_size` "
                              "with a timm:<arch> or torchvision:<arch> source")
        return SOURCES[name]
    return provider.discover(arch, image_size, taps)


def recorded_spec(name: str, taps: Sequence[Mapping], preprocessing: Mapping, has_head: bool) -> SourceSpec:
    """The spec of the source a hub recorded (its name, taps, preprocessing), so the hub is served and
    extended as written. Built-in names read exactly as they always have (:meth:`SourceSpec.as_recorded`).

    Raises:
        SourceError: the name is no longer known (e.g. a timm architecture this timm lacks).
    """
    provider, arch = split_name(name)
    if provider is None:
        return SOURCES[name].as_recorded(taps, preprocessing)
    return provider.from_record(arch, taps, preprocessing, has_head)


def with_family(spec: SourceSpec, model: nn.Module) -> SourceSpec:
    """`spec` with its delta block family read off `model` when it has none (a recorded discovered source)."""
    return spec if spec.block else replace(spec, block=family_of(model))
