"""``snowhub evaluate TASK --data DIR``: a task scored on a labelled test folder, and how it is shown."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from snowhub import Hub
from snowhub.serving.evaluating import Evaluation
from snowhub_cli import render
from snowhub_cli.options import DeviceOption, HubOption, JsonOption, RegistryOption, Runtime, one_line_errors
from snowhub_cli.progress import RichProgress


def evaluate(
    task: Annotated[str, typer.Argument(help="Task to score: NAME, NAME@VERSION or NAME@ALIAS.")],
    data: Annotated[Path, typer.Option("--data", help="Labelled test folder: one sub-folder per class, named as "
                                                      "the task's classes (any subset of them).")],
    plot: Annotated[Optional[Path], typer.Option(
        "--plot", metavar="DIR", help="Draw the confusion matrix as DIR/<task>-v<version>-confusion.png.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per forward pass.", min=1)] = 32,
    device: DeviceOption = "auto",
    runtime: Annotated[Runtime, typer.Option("--runtime", help="What runs the forward passes, as for predict.")]
    = Runtime.auto,
    hub: HubOption = None,
    registry: RegistryOption = None,
    as_json: JsonOption = False,
) -> None:
    """Score a task on labelled images: top-1, top-5, per-class accuracy, precision and recall.

    The labels are the ones predict answers (the same preprocessing and models). Every evaluation is
    recorded in the registry (the test set's fingerprint and the numbers) and listed by show.
    """
    with one_line_errors(), Hub.open(hub, registry=registry) as h, RichProgress(render.err) as progress:
        result = h.evaluate(task, data, batch_size, device, runtime.value, plot, progress)
    if as_json:
        render.print_json(result.to_dict())
    else:
        evaluation(result)


def evaluation(result: Evaluation) -> None:
    """The numbers of one evaluation: a summary line, then one row per class of the task."""
    m = result.metrics
    render.line(f"{result.task}@{result.version} on {result.data} ({m.images} images, fingerprint "
                f"{result.fingerprint[:12]}): top-1 {m.top1:.2f} %, top-5 {m.top5:.2f} %, macro precision "
                f"{m.macro_precision:.2f} %, macro recall {m.macro_recall:.2f} %")
    table = Table("class", "images", "accuracy", "precision", "recall")
    for c in m.classes:
        table.add_row(c.name, str(c.images), render.pct(c.recall), render.pct(c.precision), render.pct(c.recall))
    render.out.print(table)
    render.line(f"{m.images} images in {result.seconds:.1f} s ({result.images_per_second:.0f} images/s, "
                f"{result.runtime})" + (f"; confusion matrix: {result.plot}" if result.plot else ""))
