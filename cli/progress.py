"""Rich progress bars behind the library's :class:`snowhub.progress.Progress` protocol."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class RichProgress:
    """Draws one bar per phase on stderr (so ``--json`` output on stdout stays clean)."""

    def __init__(self, console: Console):
        self._console = console
        self._bar = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=console, transient=True,
        )
        self._task = None

    def __enter__(self) -> "RichProgress":
        self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.stop()

    def start(self, description: str, total: int | None) -> None:
        self._task = self._bar.add_task(description, total=total, info="")

    def advance(self, steps: int = 1, **info: float | str) -> None:
        if self._task is None:
            return
        text = "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in info.items())
        self._bar.update(self._task, advance=steps, info=text)

    def finish(self, message: str | None = None) -> None:
        if self._task is not None:
            self._bar.remove_task(self._task)
            self._task = None
        if message:
            self._console.print(message, markup=False, highlight=False)
