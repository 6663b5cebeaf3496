"""The continual-learning literature's summary numbers of an accuracy matrix (Lopez-Paz & Ranzato, 2017;
Chaudhry et al., 2018).

``R[i][j]``: top-1 accuracy (%) on task j's test images after training task i (``j <= i``; None above the
diagonal: a task-incremental model has no head for a task it has not seen). T tasks.
"""

from __future__ import annotations

from collections.abc import Sequence

Matrix = Sequence[Sequence[float | None]]


def average_accuracy(r: Matrix) -> float:
    """Mean over every task j of ``R[T-1][j]``, %: what the model knows after the last task."""
    return sum(r[-1]) / len(r[-1])


def backward_transfer(r: Matrix) -> float | None:
    """BWT, points: mean over j < T-1 of ``R[T-1][j] - R[j][j]`` (negative: forgetting); None for one task."""
    t = len(r)
    return None if t < 2 else sum(r[t - 1][j] - r[j][j] for j in range(t - 1)) / (t - 1)


def forgetting(r: Matrix) -> float | None:
    """Average forgetting, points: mean over j < T-1 of ``max_{j<=i<T-1} R[i][j] - R[T-1][j]``."""
    t = len(r)
    if t < 2:
        return None
    return sum(max(r[i][j] for i in range(j, t - 1)) - r[t - 1][j] for j in range(t - 1)) / (t - 1)


def transfer_vs_reference(r: Matrix, reference: Matrix) -> float:
    """Mean over j of ``R[j][j] - Ref[j][j]``, points: accuracy on a task just learned against a reference that
    learned it alone (here one fine-tuned copy of the source per task); the forward transfer this multi-head
    setting defines (a task has no head before it is learned)."""
    return sum(r[j][j] - reference[j][j] for j in range(len(r))) / len(r)
