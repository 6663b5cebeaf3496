"""Errors of exporting and importing tasks (both :class:`~snowhub.errors.SnowhubError`: one line, what to do)."""

from snowhub.errors import SnowhubError


class ExportError(SnowhubError):
    """An export could not be written or did not verify (ONNX Runtime disagrees with PyTorch); nothing was left."""


class BundleError(SnowhubError):
    """A task bundle is unreadable, damaged, unsafe, or does not fit this hub; the hub was not changed."""
