"""The ``snowhub`` console script: starts ``add-task`` with malloc's huge pages on, then runs the command line.

A low-memory training returns freed blocks of 1 MiB and more to the OS (:mod:`snowhub.malloc`), which is
cheap only when glibc's malloc asks for transparent huge pages, and glibc reads that setting
(``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``) only when a process starts. So before anything heavy is imported,
``snowhub add-task`` executes itself again, once, with it added, as PyTorch's own CPU launcher
(``torch.backends.xeon.run_cpu``) sets the allocator's environment before it starts a program. It changes
nothing else: at 64 px (low memory off) the quickstart's add-task trained as fast with it as without.
Left as started: other commands, a C library other than glibc 2.35+, a kernel with transparent huge pages
off, ``GLIBC_TUNABLES`` that already sets ``glibc.malloc.hugetlb``, and ``SNOWHUB_MALLOC=default``.
This module imports only the standard library until it hands over to :mod:`snowhub_cli.main`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

_COMMANDS = {"add-task"}
_HUGE_PAGES = "glibc.malloc.hugetlb=1"
_THP_MODES = "/sys/kernel/mm/transparent_hugepage/enabled"


def _glibc_version() -> tuple[int, int] | None:
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()  # e.g. "glibc 2.36"
        major, minor = version.split(".")[:2]
        return (int(major), int(minor)) if name == "glibc" else None
    except (AttributeError, OSError, ValueError):  # not glibc, or not Linux
        return None


def _kernel_thp() -> bool:
    try:
        with open(_THP_MODES) as f:
            return "[never]" not in f.read()
    except OSError:
        return False


def relaunch_environment(argv: Sequence[str], environ: Mapping[str, str], glibc: tuple[int, int] | None,
                         kernel_thp: bool) -> dict[str, str] | None:
    """The environment to start `argv` again in, or None to run it as it is (see the module's docstring).

    Args:
        argv: the command line (``sys.argv``); the command is ``argv[1]``.
        environ: this process's environment. glibc: the C library's version, None when not glibc.
        kernel_thp: whether the kernel grants transparent huge pages on request (``madvise`` or ``always``).
    """
    if len(argv) < 2 or argv[1] not in _COMMANDS or environ.get("SNOWHUB_MALLOC") == "default":
        return None
    tunables = environ.get("GLIBC_TUNABLES", "")
    if glibc is None or glibc < (2, 35) or not kernel_thp or "glibc.malloc.hugetlb=" in tunables:
        return None
    return dict(environ) | {"GLIBC_TUNABLES": f"{tunables}:{_HUGE_PAGES}" if tunables else _HUGE_PAGES}


def main() -> None:
    """Console-script entry point (``snowhub``, ``python -m snowhub_cli``)."""
    env = relaunch_environment(sys.argv, os.environ, _glibc_version(), _kernel_thp())
    if env is not None:
        # sys.orig_argv is how this interpreter was started (its options, the script or -m module, the args).
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    from snowhub_cli.main import main as run

    run()
