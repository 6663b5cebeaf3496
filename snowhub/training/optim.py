"""The update rule: SGD with momentum 0.9 and weight decay as in the paper, a short linear warm-up and a cosine
decay per step (a few epochs reach good accuracy; the paper's 90-epoch step schedule is for ImageNet-scale
budgets), AMP on CUDA. The channel pooling scores get their own learning rate and no decay."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from snowhub.device import amp_dtype, autocast
from snowhub.models.channel_pooling import ChannelPooling
from snowhub.models.delta import Delta


def delta_param_groups(delta: Delta, lr: float, score_lr_scale: float, weight_decay: float) -> list[dict]:
    """SGD parameter groups of a delta: every weight at `lr` with `weight_decay`; the channel pooling
    scores at ``lr × score_lr_scale`` without decay (they start from scratch and must separate by more
    than the noise σ; decay would move unselected scores). Subscription modules that are not
    :class:`ChannelPooling` (the benchmarks' alternatives) train with the weights."""
    scores = [pool.scores for pool in delta.pools if isinstance(pool, ChannelPooling)]
    score_ids = {id(p) for p in scores}
    groups = [{"params": [p for p in delta.parameters() if id(p) not in score_ids], "weight_decay": weight_decay,
               "lr": lr}]
    if scores:
        groups.append({"params": scores, "weight_decay": 0.0, "lr": lr * score_lr_scale})
    return groups


def _warmup_cosine(total_steps: int, warmup_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


class SGDSteps:
    """The product's update rule: SGD with momentum 0.9, linear warm-up then cosine decay per step, AMP
    (with loss scaling for float16) on CUDA. The benchmark harness trains every method with it.

    Args:
        param_groups: SGD groups, each with its peak ``lr`` and ``weight_decay``.
        total_steps: steps of the whole schedule; warmup_steps: steps of the linear warm-up (>= 1).
        device: where the model runs.

    Attributes:
        amp_dtype: the autocast dtype on `device` (:func:`snowhub.device.amp_dtype`: bfloat16 on sm80 and
            later, float16 on older GPUs such as the V100 and T4), None on the CPU.
        loss_scaling: whether the loss is scaled (float16 only: its range is too small for the gradients).
    """

    def __init__(self, param_groups: list[dict], total_steps: int, warmup_steps: int, device: torch.device):
        self.device = device
        self.optimizer = torch.optim.SGD(param_groups, lr=param_groups[0]["lr"], momentum=0.9)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _warmup_cosine(total_steps, warmup_steps))
        self.amp_dtype = amp_dtype(device)
        self.loss_scaling = self.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.loss_scaling)

    def step(self, forward, images: torch.Tensor, labels: torch.Tensor) -> float:
        """One step on a batch: `forward` maps images ``(B, 3, H, W)`` to logits ``(B, C)``; returns the
        batch's mean cross-entropy (nats) as a float."""
        with autocast(self.device):
            loss = F.cross_entropy(forward(images).float(), labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return loss.detach().item()
