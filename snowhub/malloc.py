"""The C allocator under a low-memory training: freed blocks of 1 MiB and more go back to the OS at once.

On Linux, PyTorch's CPU tensors come from glibc's ``malloc``, which serves blocks under its mmap threshold
(128 KiB, raised by itself up to 32 MiB as larger blocks are freed) from heaps it keeps: a freed tensor's
memory stays in the process. At the paper's geometry that retention, not what backward keeps, set
``add-task``'s peak (ResNet-50, 224 px, batch 32: +800 to +1,100 MiB above the imports with the default,
+430 with a fixed 1 MiB threshold; docs/benchmarks.md, "Low memory by default"). A block served by ``mmap``
costs a page fault per 4 KiB page when first written, which cost a quarter of the step's time there, unless
malloc asks the kernel for transparent huge pages (``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``, glibc 2.35+,
read only when the process starts: ``snowhub add-task`` starts itself with it, see
:mod:`snowhub_cli.entry`). So the threshold is set only where huge pages are on.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Mapping

# mallopt's parameter number for the mmap threshold (malloc.h: M_MMAP_THRESHOLD).
_M_MMAP_THRESHOLD = -3
# Blocks at least this large are mapped and unmapped on their own under a low-memory training.
LOW_MEMORY_MMAP_THRESHOLD = 1 << 20


def malloc_huge_pages(environ: Mapping[str, str] | None = None) -> bool:
    """Whether glibc's malloc in this process asks for transparent huge pages (``glibc.malloc.hugetlb`` is 1
    or 2 in ``GLIBC_TUNABLES``, which glibc reads at process start)."""
    tunables = (os.environ if environ is None else environ).get("GLIBC_TUNABLES", "")
    return any(part.strip() in ("glibc.malloc.hugetlb=1", "glibc.malloc.hugetlb=2") for part in tunables.split(":"))


def return_freed_blocks(threshold: int = LOW_MEMORY_MMAP_THRESHOLD) -> str:
    """Serve every block of `threshold` bytes or more by ``mmap`` for the rest of the process, so that it goes
    back to the OS when freed (glibc's ``mallopt(M_MMAP_THRESHOLD)``; it also stops glibc raising the threshold
    by itself). Done only under glibc with malloc's huge pages on (:func:`malloc_huge_pages`).

    Returns:
        What the allocator now does, one line, as recorded with the task.
    """
    if not malloc_huge_pages():
        return "glibc's default (no malloc huge pages in this process: GLIBC_TUNABLES=glibc.malloc.hugetlb=1)"
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        applied = libc.mallopt(_M_MMAP_THRESHOLD, threshold) == 1
    except (OSError, AttributeError):  # not glibc
        applied = False
    if not applied:
        return "the C library's default (it has no glibc mallopt)"
    return f"blocks of {threshold >> 20} MiB and more mapped on their own, with huge pages"
