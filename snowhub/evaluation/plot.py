"""The confusion matrix of an evaluation as a PNG (matplotlib, imported only when a plot is asked for)."""

from __future__ import annotations

from pathlib import Path

from snowhub.errors import ConfigError
from snowhub.evaluation.metrics import Metrics

_MAX_ANNOTATED = 20  # classes up to which each cell shows its count


def require_matplotlib() -> None:
    """Check that a plot can be drawn. Raises ConfigError (how to install matplotlib) when it cannot."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ConfigError("the confusion matrix plot (`plot`) needs matplotlib; "
                          "install it with pip install 'snowhub[plot]'") from None


def plot_confusion(metrics: Metrics, path: Path, title: str) -> Path:
    """Draw `metrics`' confusion matrix (rows: true class, columns: predicted; each row's share of its images
    in colour, counts written in the cells up to 20 classes) to the PNG `path`, and return `path`.

    The figure grows with the number of classes so that every label stays readable (rotated on the x axis).

    Raises:
        ConfigError: matplotlib is not installed (``pip install 'snowhub[plot]'``).
        OSError: `path` cannot be written.
    """
    require_matplotlib()
    from matplotlib.figure import Figure  # a Figure alone draws with the Agg canvas: no GUI backend chosen
    names, counts = metrics.class_names, metrics.confusion
    n = len(names)
    rows = [[c / max(1, sum(row)) for c in row] for row in counts]
    side = min(40.0, max(5.0, 0.45 * n + 2.5))
    figure = Figure(figsize=(side + 1.5, side), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(rows, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, label="share of the true class's images", shrink=0.8)
    font = 10 if n <= 20 else max(4, 10 - n // 25)
    axes.set_xticks(range(n), names, rotation=60, ha="right", rotation_mode="anchor", fontsize=font)
    axes.set_yticks(range(n), names, fontsize=font)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title(f"{title}\ntop-1 {metrics.top1:.1f} %, top-5 {metrics.top5:.1f} %, {metrics.images} images")
    if n <= _MAX_ANNOTATED:
        for i in range(n):
            for j in range(n):
                if counts[i][j]:
                    axes.text(j, i, str(counts[i][j]), ha="center", va="center", fontsize=font - 1,
                              color="white" if rows[i][j] > 0.5 else "black")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path
