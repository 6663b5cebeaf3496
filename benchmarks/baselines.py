"""The transfer/lifelong baselines of the SNOW paper (Table 1), built on a copy of the same source.

* **FO** (final output only): a new classifier on the frozen source (Yosinski et al., 2014).
* **FE** (shown as **FE-stage**): retrain everything after the second-to-last tap (the source's whole last
  stage) and a new classifier; the rest stays frozen (Whatmough et al., 2019). 2.68 M parameters per task
  on efficientnet_lite0, 19× SNOW's delta.
* **FE-paper** (feature extraction as the SNOW paper sized it, "re-trains a few output layers", Table 4:
  about 0.3 M parameters per task on ResNet-50): new output layers on the frozen second-to-last tap, one
  3×3 convolution (stride 2) + BatchNorm + ReLU, global pooling and a classifier, as wide as keeps the
  task no larger than SNOW's delta (:data:`PAPER_FE_WIDTH`; issue 28).
* **FT** (fine-tuning): retrain the whole copy with a new classifier (Dauphin et al., 2012).
* **MP** (model patch): retrain only the BatchNorm scales and biases (their statistics are re-estimated,
  as in Mudrakarta et al., 2019) and a new classifier.
* **PN** (progressive net): a new, randomly initialised column of the source architecture, fed at every
  tap by a lateral adapter (1×1 convolution + BatchNorm) from the frozen source (Rusu et al., 2016).

Every model takes uint8 images ``(B, 3, H, W)`` and returns logits ``(B, classes)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from benchmarks.backbones import Pretrained, new_head, parameters_after
from snowhub.models.frozen import FrozenSource, InputNormalizer


class FrozenPartsEval(nn.Module):
    """Base class: in train mode, every submodule whose parameters are all frozen runs in eval mode.

    So frozen BatchNorm layers keep their ImageNet statistics and frozen blocks skip stochastic depth,
    while modules with trainable parameters (and parameter-free ones such as dropout) train normally.
    """

    def train(self, mode: bool = True) -> "FrozenPartsEval":
        super().train(mode)
        if mode:
            for module in self.modules():
                params = list(module.parameters())
                if params and not any(p.requires_grad for p in params):
                    module.eval()
        return self


class TransferModel(FrozenPartsEval):
    """A pretrained copy of the source with a new classifier; only the parameters in `trainable` learn.

    Args:
        pretrained: the source and its weights.
        num_classes: classes of the task.
        trainable: ``"head"`` (FO), ``"after_tap"`` (FE), ``"all"`` (FT) or ``"batchnorm"`` (MP).
        fe_tap: tap index after which FE retrains.
    """

    def __init__(self, pretrained: Pretrained, num_classes: int, trainable: str, fe_tap: int = -2):
        super().__init__()
        spec = pretrained.spec
        self.normalizer = InputNormalizer(spec.mean, spec.std)
        self.backbone = pretrained.copy()
        head = new_head(self.backbone, spec, num_classes)
        if trainable == "all":
            learn = {n for n, _ in self.backbone.named_parameters()}
        elif trainable == "after_tap":
            learn = set(parameters_after(self.backbone, spec.taps[fe_tap].name))
        elif trainable == "batchnorm":
            learn = {f"{m}.{p}" for m, mod in self.backbone.named_modules()
                     if isinstance(mod, nn.modules.batchnorm._BatchNorm) for p in ("weight", "bias")}
        elif trainable != "head":
            raise ValueError(f"unknown trainable part {trainable!r}")
        else:
            learn = set()
        learn |= {f"{spec.head}.{n}" for n, _ in head.named_parameters()}
        for name, p in self.backbone.named_parameters():
            p.requires_grad_(name in learn)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.normalizer(images))


class ProgressiveModel(FrozenPartsEval):
    """PN: a new column of the source architecture with lateral adapters from the frozen source.

    The adapter of tap i maps the source's tap ``(B, N_i, h, w)`` to ``(B, N_i, h, w)`` and is added to the
    column's output at the same module (forward hook), so the column sees the source's features at every
    resolution, as in a progressive net's second column.
    """

    def __init__(self, pretrained: Pretrained, source: FrozenSource, num_classes: int):
        super().__init__()
        spec = pretrained.spec
        self.source = source
        self.column = spec.build()  # random initialisation: a new column
        new_head(self.column, spec, num_classes)
        self.laterals = nn.ModuleList(
            nn.Sequential(nn.Conv2d(t.channels, t.channels, 1, bias=False), nn.BatchNorm2d(t.channels))
            for t in spec.taps)
        for lateral in self.laterals:
            nn.init.kaiming_normal_(lateral[0].weight, mode="fan_out", nonlinearity="relu")
        self._taps: Sequence[torch.Tensor] | None = None
        for i, tap in enumerate(spec.taps):
            self.column.get_submodule(tap.name).register_forward_hook(self._add_lateral(i))

    def _add_lateral(self, i: int):
        def hook(_module, _inputs, output):
            return output + self.laterals[i](self._taps[i])

        return hook

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.source.normalizer(images)
        taps, _ = self.source(x)
        return self.from_taps(x, taps)

    def from_taps(self, x: torch.Tensor, taps: Sequence[torch.Tensor]) -> torch.Tensor:
        """Logits from normalised images `x` and the source's `taps` (serving shares one source pass)."""
        self._taps = taps
        try:
            return self.column(x)
        finally:
            self._taps = None


PAPER_FE_WIDTH = 128  # efficientnet_lite0: 112·9·128 + 2·128 + 129·classes = 130.6 k for 10 classes (delta 140.7 k)


class PaperFeatureExtraction(FrozenPartsEval):
    """FE-paper: a few new output layers on the frozen source's second-to-last tap (issue 28).

    ``(B, N, h, w)`` tap → 3×3 conv (N → `width`, stride 2) + BatchNorm + ReLU → global average pool →
    linear (`width` → classes). Only the new layers train; the source is shared with every other task
    when served, so a task adds just these layers' parameters and FLOPs.
    """

    def __init__(self, source: FrozenSource, num_classes: int, tap: int = -2, width: int = PAPER_FE_WIDTH):
        super().__init__()
        self.source, self.tap = source, tap
        channels = source.taps[tap].channels
        self.layers = nn.Sequential(nn.Conv2d(channels, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width),
                                    nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.classifier = nn.Linear(width, num_classes)
        nn.init.kaiming_normal_(self.layers[0].weight, mode="fan_out", nonlinearity="relu")
        nn.init.normal_(self.classifier.weight, 0, 0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        taps, _ = self.source(self.source.normalizer(images))
        return self.from_taps(taps)

    def from_taps(self, taps: Sequence[torch.Tensor]) -> torch.Tensor:
        """Logits from the source's `taps` (serving shares one source pass)."""
        return self.classifier(self.layers(taps[self.tap]))


def set_bn_momentum(model: nn.Module, momentum: float | None) -> None:
    """Give every BatchNorm with trainable parameters this running-statistics momentum (None: leave as is)."""
    if momentum is None:
        return
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.weight is not None \
                and module.weight.requires_grad:
            module.momentum = momentum


def build_baseline(method: str, pretrained: Pretrained, num_classes: int, fe_tap: int = -2,
                   source: FrozenSource | None = None) -> nn.Module:
    """The FO/FE/FE-paper/FT/MP/PN model for a task of `num_classes` classes (PN and FE-paper read the frozen
    `source`)."""
    if method == "PN":
        return ProgressiveModel(pretrained, source or pretrained.frozen_source(), num_classes)
    if method == "FE-paper":
        return PaperFeatureExtraction(source or pretrained.frozen_source(), num_classes, fe_tap)
    trainable = {"FO": "head", "FE": "after_tap", "FT": "all", "MP": "batchnorm"}[method]
    return TransferModel(pretrained, num_classes, trainable, fe_tap)
