"""Line charts of a task's training history as plain geometry, drawn by the task page as an inline SVG.

The server computes every coordinate, so the chart needs no JavaScript and no charting library: the
template only writes ``<polyline>``, ``<circle>`` and ``<text>`` elements from a :class:`Chart`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

WIDTH, HEIGHT = 360, 200  # the SVG's viewBox (it scales to the page's width)
_LEFT, _RIGHT, _TOP, _BOTTOM = 44, 10, 12, 30  # margins around the plot area, viewBox units


@dataclass(frozen=True)
class Point:
    """One recorded value: `x`, `y` in viewBox units, `epoch` and `value` as recorded (for the tooltip)."""

    x: float
    y: float
    epoch: int
    value: float


@dataclass(frozen=True)
class Series:
    """One line: its `key` (the history field, also its CSS class), `label` and points."""

    key: str
    label: str
    points: list[Point]

    @property
    def polyline(self) -> str:
        """The ``points`` attribute of an SVG ``<polyline>``."""
        return " ".join(f"{p.x:.1f},{p.y:.1f}" for p in self.points)


@dataclass(frozen=True)
class Chart:
    """A chart of one or more series over the epochs; ticks are (position in viewBox units, label)."""

    name: str
    title: str
    unit: str
    series: list[Series]
    x_ticks: list[tuple[float, str]] = field(default_factory=list)
    y_ticks: list[tuple[float, str]] = field(default_factory=list)
    width: int = WIDTH
    height: int = HEIGHT
    left: int = _LEFT
    right: int = WIDTH - _RIGHT
    top: int = _TOP
    bottom: int = HEIGHT - _BOTTOM


def _nice_step(span: float, ticks: int) -> float:
    raw = span / max(1, ticks)
    magnitude = 10 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)


def _y_range(values: list[float]) -> tuple[float, float, float]:
    """(low, high, step) covering `values` with about four ticks."""
    low, high = min(values), max(values)
    if high - low < 1e-9:
        pad = abs(high) * 0.05 or 1.0
        low, high = low - pad, high + pad
    step = _nice_step(high - low, 4)
    return math.floor(low / step) * step, math.ceil(high / step) * step, step


def _label(value: float, step: float) -> str:
    decimals = 0  # as many as the step needs: 2.5 → 1, 0.025 → 3
    while decimals < 6 and abs(step * 10 ** decimals - round(step * 10 ** decimals)) > 1e-6:
        decimals += 1
    return f"{value:.{decimals}f}"


def line_chart(name: str, title: str, unit: str, history: list[dict], keys: list[tuple[str, str]]) -> Chart | None:
    """A chart of the history fields `keys` ((field, label) pairs) per epoch, or None if none was recorded.

    Args:
        history: the task's recorded per-epoch dicts (``epoch`` plus the fields; see ``TrainResult.history``).
        unit: shown on the y axis (``%`` for accuracies, empty for losses).
    """
    rows = [h for h in history if isinstance(h.get("epoch"), int)]
    present = [(k, label) for k, label in keys if any(isinstance(h.get(k), (int, float)) for h in rows)]
    if not rows or not present:
        return None
    values = [float(h[k]) for h in rows for k, _ in present if isinstance(h.get(k), (int, float))]
    low, high, step = _y_range(values)
    chart = Chart(name, title, unit, [])
    epochs = [h["epoch"] for h in rows]
    first, last = min(epochs), max(epochs)

    def x_of(epoch: int) -> float:
        return chart.left + (chart.right - chart.left) * ((epoch - first) / (last - first) if last > first else 0.5)

    def y_of(value: float) -> float:
        return chart.bottom - (chart.bottom - chart.top) * (value - low) / (high - low)

    for key, label in present:
        points = [Point(x_of(h["epoch"]), y_of(float(h[key])), h["epoch"], float(h[key]))
                  for h in rows if isinstance(h.get(key), (int, float))]
        chart.series.append(Series(key, label, points))
    every = max(1, math.ceil(len(epochs) / 8))  # at most ~8 epoch labels, so they fit at 360 px
    chart.x_ticks.extend((x_of(e), str(e)) for e in sorted(set(epochs))[::every])
    ticks = round((high - low) / step)
    chart.y_ticks.extend((y_of(low + i * step), _label(low + i * step, step)) for i in range(ticks + 1))
    return chart
