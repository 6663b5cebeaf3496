"""The hub's cache of per-artifact ONNX graphs (``<hub>/cache/onnx/``), keyed by what they were built from.

Each graph is two files: ``<key>.onnx`` and ``<key>.json``, its manifest (``built_from``, the file's sha256
and size). ``key`` is the sha256 of ``built_from``'s canonical JSON: the sha256 of the weights file it was
exported from, the recorded shapes, the image size, the exporter and its version. A graph is read back only
when its manifest names the same ``built_from`` (else it is a foreign graph) and the bytes hash to the
manifest's sha256 (else it is damaged); the bytes so checked are the ones handed to ONNX Runtime, never the
file again. Both files are written atomically (:func:`~snowhub.store.files.atomic_write`), the manifest last.

The cache holds derived data only: deleting it costs a rebuild, nothing else. A hub that cannot be written
(read-only) still gets its graphs, kept in memory for the process (:attr:`GraphCache.write_problem` says why).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from snowhub.store.files import atomic_write

CACHE_DIR = Path("cache") / "onnx"
FORMAT = 1


def _canonical(built_from: Mapping) -> str:
    return json.dumps(built_from, sort_keys=True, separators=(",", ":"))


def graph_key(built_from: Mapping) -> str:
    """The cache key of a graph: hex sha256 of `built_from` as canonical JSON."""
    return hashlib.sha256(_canonical(built_from).encode()).hexdigest()


@dataclass(frozen=True)
class CachedGraph:
    """One graph's bytes, checked.

    Attributes:
        key: :func:`graph_key` of what it was built from. model: the ONNX file's bytes.
        sha256: hex sha256 of `model`. built: True when exported just now, False when read from the cache.
    """

    key: str
    model: bytes
    sha256: str
    built: bool


class GraphCache:
    """Per-artifact graphs of one hub (see the module docstring). Thread-safe.

    Args:
        directory: the cache directory, usually ``<hub>/cache/onnx`` (created on first write).
    """

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.write_problem: str | None = None  # why graphs are kept in memory only, if they are
        self._lock = threading.Lock()

    def paths(self, key: str) -> tuple[Path, Path]:
        """(graph file, manifest file) of `key`."""
        return self.directory / f"{key}.onnx", self.directory / f"{key}.json"

    def read(self, built_from: Mapping) -> tuple[CachedGraph | None, str]:
        """The cached graph of `built_from`, or None and why not (missing, foreign, damaged)."""
        key = graph_key(built_from)
        model_path, manifest_path = self.paths(key)
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            model = model_path.read_bytes()
        except FileNotFoundError:
            return None, "not cached"
        except (OSError, ValueError) as error:
            return None, f"its cache files are unreadable ({error})"
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or \
                _canonical(manifest.get("built_from", {})) != _canonical(built_from):
            return None, f"{model_path.name} was built from something else (a foreign graph)"
        digest = hashlib.sha256(model).hexdigest()
        if digest != manifest.get("sha256"):
            recorded = str(manifest.get("sha256"))[:12]
            return None, f"{model_path.name} has sha256 {digest[:12]}…, its manifest {recorded}… (damaged)"
        return CachedGraph(key, model, digest, built=False), ""

    def build(self, built_from: Mapping, export: Callable[[Path], None]) -> CachedGraph:
        """Export a graph with ``export(path)``, keep it in the cache, and return its bytes.

        Raises:
            whatever `export` raises (ExportError); nothing is cached then.
        """
        key = graph_key(built_from)
        with tempfile.TemporaryDirectory(prefix="snowhub-graph-") as tmp:
            path = Path(tmp) / "model.onnx"
            export(path)
            model = path.read_bytes()
        graph = CachedGraph(key, model, hashlib.sha256(model).hexdigest(), built=True)
        manifest = {"format": FORMAT, "key": key, "built_from": dict(built_from), "sha256": graph.sha256,
                    "bytes": len(model)}
        model_path, manifest_path = self.paths(key)
        with self._lock:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                with atomic_write(model_path) as tmp_model:
                    tmp_model.write_bytes(model)
                with atomic_write(manifest_path) as tmp_manifest:
                    tmp_manifest.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
                self.write_problem = None
            except OSError as error:
                self.write_problem = f"cannot write {self.directory} ({error.strerror or error}); graphs are rebuilt " \
                                     "in every process"
        return graph

    def discard(self, built_from: Mapping) -> None:
        """Remove the graph of `built_from` from the cache (manifest first), if it is there."""
        for path in reversed(self.paths(graph_key(built_from))):
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass
