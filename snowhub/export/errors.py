"""Errors of exporting and importing tasks (both :class:`~snowhub.errors.SnowhubError`: one line, what to do).

Defined in :mod:`snowhub.errors` with every other public error; named here for the export modules.
"""

from snowhub.errors import BundleError, ExportError

__all__ = ["BundleError", "ExportError"]
