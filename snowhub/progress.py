"""Progress reporting without a UI dependency.

Long operations (training, evaluation, verification) take a :class:`Progress` object and report through
it. The library ships a silent implementation; the CLI passes one that draws Rich progress bars.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """Receiver of progress events for one long operation."""

    def start(self, description: str, total: int | None) -> None:
        """A new phase begins; `total` is the number of steps, or None if unknown."""

    def advance(self, steps: int = 1, **info: float | str) -> None:
        """`steps` more steps are done; `info` carries live values (loss, accuracy) to show."""

    def finish(self, message: str | None = None) -> None:
        """The current phase ended; `message` is an optional one-line summary."""


class SilentProgress:
    """A :class:`Progress` that reports nothing (the default for the Python API)."""

    def start(self, description: str, total: int | None) -> None:
        pass

    def advance(self, steps: int = 1, **info: float | str) -> None:
        pass

    def finish(self, message: str | None = None) -> None:
        pass
