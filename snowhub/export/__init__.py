"""Tasks out of the hub: ONNX export of source + deltas, and portable task bundles between hubs."""

from snowhub.export.bundle_export import BundleInfo, export_task
from snowhub.export.bundle_import import import_task
from snowhub.export.errors import BundleError, ExportError
from snowhub.export.onnx_export import OnnxExport, export_onnx

__all__ = ["BundleError", "BundleInfo", "ExportError", "OnnxExport", "export_onnx", "export_task", "import_task"]
