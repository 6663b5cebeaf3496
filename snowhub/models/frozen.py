"""The frozen source: a pretrained network that is only ever run for inference (SNOW, section 2.1).

Its weights and BatchNorm statistics never change: every submodule stays in eval mode even when the
wrapper is put in train mode, no parameter requires a gradient, and the forward pass runs under
``torch.no_grad``. A public reproduction of SNOW failed largely because its "frozen" source still ran
BatchNorm in train mode; ``tests/test_source_frozen.py`` guards against that.
"""

from __future__ import annotations

import copy
import functools
import threading

import torch
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

from snowhub.errors import SourceError
from snowhub.models.sources import SourceSpec, Tap


class InputNormalizer(nn.Module):
    """uint8 images ``(B, 3, H, W)`` in [0, 255] → float ``(B, 3, H, W)``, normalised by mean/std.

    Float input is taken to be in [0, 1] already. Images travel as uint8 until here so that probe sets
    are stored exactly and host→device copies are 4× smaller.
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()
        return (x - self.mean) / self.std


class _HookExtractor(nn.Module):
    """Collects named module outputs with forward hooks, for models FX cannot trace.

    Each thread collects into its own dict, so concurrent forward passes (a server's threads) never mix
    their feature maps.
    """

    def __init__(self, model: nn.Module, names: dict[str, str]):
        super().__init__()
        self.model = model
        self._names = names
        self._local = threading.local()
        modules = dict(model.named_modules())
        for module_name, key in names.items():
            # A bound method, not a closure: a deep copy of the model then calls the copy's hooks.
            modules[module_name].register_forward_hook(functools.partial(self._store, key))

    def _store(self, key: str, _module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        sink = getattr(self._local, "sink", None)
        if sink is not None:
            sink(key, output)
        else:
            self._local.out[key] = output

    def run_with_sink(self, x: torch.Tensor, sink) -> None:
        """Run the model, handing each tap to ``sink(key, tensor)`` as soon as it is computed instead of
        keeping it (``snowhub.models.staged``: the training forward that frees each tap once pooled)."""
        self._local.sink, self._local.out = sink, {}
        try:
            self.model(x)
        finally:
            self._local.sink = self._local.out = None

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self._local.out = out = {}
        try:
            self.model(x)
        finally:
            self._local.out = None
        return out

    def __deepcopy__(self, memo: dict) -> "_HookExtractor":  # thread-local storage is not copied: a copy gets its own
        clone = _HookExtractor.__new__(_HookExtractor)
        memo[id(self)] = clone
        clone.__dict__.update({k: copy.deepcopy(v, memo) for k, v in self.__dict__.items() if k != "_local"})
        clone._local = threading.local()
        return clone


class FrozenSource(nn.Module):
    """A pretrained source model that yields its tapped feature maps (and its own logits, if it has a head).

    Args:
        spec: the source's :class:`SourceSpec`.
        backbone: the architecture with pretrained weights already loaded.
        has_head: whether the backbone's classifier holds real weights (served as task 0).

    Forward:
        x: normalised images ``(B, 3, H, W)``, i.e. ``source.normalizer(uint8 images)``; the delta gets the
        same tensor, so normalisation runs once per batch.
        returns ``(taps, logits)``: a list of tap tensors ``(B, N_i, H/s_i, W/s_i)`` in ``spec.taps`` order
        (NHWC maps and ViT tokens converted: :meth:`Tap.to_map`), and the head's logits ``(B, 1000)`` or None.
    """

    def __init__(self, spec: SourceSpec, backbone: nn.Module, has_head: bool):
        super().__init__()
        self.spec = spec
        self.has_head = has_head
        self.normalizer = InputNormalizer(spec.mean, spec.std)
        nodes = {tap.name: tap.name for tap in spec.taps}
        if has_head:
            nodes[spec.head] = "logits"
        backbone.eval()
        try:
            # FX keeps only the graph needed for the requested nodes (a headless source skips its classifier).
            self.extractor = create_feature_extractor(backbone, return_nodes=nodes)
        except Exception:  # data-dependent control flow (e.g. dynamic "same" padding) cannot be traced
            self.extractor = _HookExtractor(backbone, nodes)
        self._sizes_seen: set[tuple[int, int]] = set()  # image sizes the model has taken (see _extract)
        self.requires_grad_(False)
        self.eval()

    @property
    def taps(self) -> tuple[Tap, ...]:
        return self.spec.taps

    def train(self, mode: bool = True) -> "FrozenSource":
        # The source never trains: BatchNorm must keep using its ImageNet running statistics.
        super().train(False)
        return self

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        with torch.no_grad():
            out = self._extract(x)
        height, width = x.shape[-2:]
        return [tap.to_map(out[tap.name], height, width) for tap in self.spec.taps], out.get("logits")

    def _extract(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The extractor's outputs; the first pass at each image size (outside compilation and export) turns
        the model's refusal of that size (a ViT's patch grid, a fixed-size Swin) into one SourceError line."""
        if torch.compiler.is_compiling() or torch.compiler.is_exporting():
            return self.extractor(x)
        size = (int(x.shape[-2]), int(x.shape[-1]))
        if size in self._sizes_seen:
            return self.extractor(x)
        try:
            out = self.extractor(x)
        except (AssertionError, ValueError, RuntimeError) as exc:
            if isinstance(exc, torch.OutOfMemoryError):
                raise
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise SourceError(f"{self.spec.name} does not take {size[0]}x{size[1]} px images ({first}); "
                              "choose another `image_size`") from None
        self._sizes_seen.add(size)
        return out

    def backbone_state_dict(self) -> dict[str, torch.Tensor]:
        """The parameters and buffers in use, under the backbone's own key names (those of its weights
        file), whichever extractor reads the taps. A traced extractor keeps only the modules it runs."""
        module = self.extractor.model if isinstance(self.extractor, _HookExtractor) else self.extractor
        return module.state_dict()


def check_source(source: FrozenSource, image_size: int) -> None:
    """Run `source` once on a ``(1, 3, S, S)`` zero image and check that every tap is a ``(1, N_i, h, w)`` map
    with its recorded channels: the taps of a discovered source read as they will be served.

    Raises:
        SourceError: the model refuses `image_size` px images, or a tap is not the map it was recorded as.
    """
    name = source.spec.name
    try:
        taps, _ = source(source.normalizer(torch.zeros(1, 3, image_size, image_size, dtype=torch.uint8)))
    except Exception as exc:  # noqa: BLE001 - any failure of a foreign model on this size
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SourceError(f"{name} does not take {image_size} px images ({first}); choose another `image_size`") from None
    for tap, out in zip(source.spec.taps, taps):
        if out.dim() != 4 or out.shape[1] != tap.channels or min(out.shape[2:]) < 1:
            raise SourceError(f"{name}: tap {tap.name!r} gives {tuple(out.shape)} at {image_size} px, not "
                              f"(1, {tap.channels}, h, w); name other taps in `taps`")
