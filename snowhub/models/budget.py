"""A delta sized to a parameter budget: the width divisor and K ratio whose delta adds the most parameters
per task without exceeding it (``add-task --budget``; issue 28).

The paper sizes the delta by two knobs, the width divisor (8) and K/N (1/8). A user thinks in what a task
costs to store and serve, so :func:`fit_budget` searches a grid of both knobs and counts each candidate's
serving parameters exactly (:meth:`~snowhub.models.delta.Delta.serving_parameter_count`, built on the
``meta`` device: no memory, no initialisation cost).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from snowhub.errors import ConfigError
from snowhub.models.blocks import get_family
from snowhub.models.delta import DeltaShape, _stem
from snowhub.models.sources import Tap

WIDTH_DIVISORS = (1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 16.0, 24.0, 32.0, 48.0, 64.0)
K_RATIOS = (1 / 16, 1 / 8, 1 / 4, 1 / 2)  # K = N (no selection) left out: the paper's subscription is sparse


@dataclass(frozen=True)
class BudgetChoice:
    """What :func:`fit_budget` chose.

    Attributes:
        budget: the parameters asked for.
        width_divisor, k_ratio: the knobs chosen (or given).
        params: serving parameters per task of the resulting delta (≤ `budget`).
        shape: the delta's :class:`~snowhub.models.delta.DeltaShape`.
    """

    budget: int
    width_divisor: float
    k_ratio: float
    params: int
    shape: DeltaShape

    def to_dict(self) -> dict:
        """The choice as the task records it (``budget``, ``budget_width_divisor``, ``budget_k_ratio``,
        ``budget_params``)."""
        return {"budget": self.budget, "budget_width_divisor": self.width_divisor, "budget_k_ratio": self.k_ratio,
                "budget_params": self.params}


@functools.lru_cache(maxsize=4096)
def _count(kind: str, *args) -> int:
    """Parameters of one stem or stage, built once on the ``meta`` device (no memory, no initialisation)."""
    with torch.device("meta"):
        module = _stem(*args) if kind == "stem" else get_family(kind).stage(*args)
    return sum(p.numel() for p in module.parameters())


def delta_parameters(shape: DeltaShape) -> int:
    """Serving parameters of a delta of `shape`: what :meth:`~snowhub.models.delta.Delta.serving_parameter_count`
    counts (stem, stages, classifier and the K selected scores per tap), summed stage by stage."""
    taps, widths, ks = shape.taps, shape.widths, shape.ks
    total = _count("stem", taps[0].stride, widths[0])
    for i in range(1, len(taps)):
        total += _count(shape.block, widths[i - 1] + ks[i - 1], widths[i], taps[i].stride // taps[i - 1].stride,
                        taps[i].blocks)
    return total + (widths[-1] + ks[-1] + 1) * shape.num_classes + sum(ks)


def fit_budget(block: str, taps: Sequence[Tap], num_classes: int, budget: int, *, head_k_ratio: float = 1.0,
               noise_var: float = 1e-3, width_divisor: float | None = None,
               k_ratio: float | None = None) -> BudgetChoice:
    """The largest delta of at most `budget` serving parameters over :data:`WIDTH_DIVISORS` × :data:`K_RATIOS`
    (the last tap, read by the classifier alone, keeps `head_k_ratio`).

    A `width_divisor` or `k_ratio` given by the caller is kept and only the other knob is searched. Ties in
    size go to the narrower K (the paper's subscription is sparse). The search counts at most 72 shapes on
    the ``meta`` device (milliseconds each).

    Raises:
        ConfigError: `budget` is not positive, or even the smallest candidate is larger (the message names
            that size, so the user knows the least this source allows).
    """
    if budget <= 0:
        raise ConfigError(f"`budget` must be a positive number of parameters, got {budget}")
    divisors = (width_divisor,) if width_divisor is not None else WIDTH_DIVISORS
    ratios = (k_ratio,) if k_ratio is not None else K_RATIOS
    best, smallest = None, None
    for wd in divisors:
        for kr in ratios:
            shape = DeltaShape.from_ratios(block, taps, wd, kr, num_classes, noise_var, head_k_ratio)
            params = delta_parameters(shape)
            smallest = params if smallest is None else min(smallest, params)
            if params <= budget and (best is None or params > best.params):
                best = BudgetChoice(budget, wd, kr, params, shape)
    if best is None:
        raise ConfigError(f"`budget` {budget:,} parameters is below the smallest delta for this source and "
                          f"{num_classes} classes ({smallest:,} parameters)")
    return best
