"""Names users type: the default hub directory, the source's own task, and what a task name may be."""

from __future__ import annotations

import os
import re
from pathlib import Path

from snowhub.errors import InvalidNameError, TaskExistsError

DEFAULT_HUB = ".snowhub"
SOURCE_TASK = "imagenet"  # task 0: the source's own classifier, when it has one
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def default_hub_path() -> Path:
    """``$SNOWHUB_HOME`` if set, else ``./.snowhub``."""
    return Path(os.environ.get("SNOWHUB_HOME") or DEFAULT_HUB)


def check_task_name(name: str) -> None:
    """Raises InvalidNameError unless `name` is 1–64 letters, digits, ``_`` or ``-``, starting with a letter or
    digit; TaskExistsError for the source's own task name."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidNameError(
            f"invalid task name {name!r}: use 1-64 letters, digits, '_' or '-', starting with a letter or digit"
        )
    if name == SOURCE_TASK:
        raise TaskExistsError(f"{SOURCE_TASK!r} is the source's own task (task 0); choose another name")
