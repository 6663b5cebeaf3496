"""``snowhub export task``: one registered task of a hub as a ``.snowtask`` bundle (:mod:`snowhub.export.bundle`)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

from snowhub.artifacts import Artifacts
from snowhub.errors import ConfigError, IntegrityError
from snowhub.export import card, signing
from snowhub.export.bundle import write_bundle
from snowhub.names import SOURCE_TASK
from snowhub.store import SourceRecord, TaskRecord

# The task record's fields a bundle carries as they are (files, hashes and seals are the hub's own).
TASK_FIELDS = ("class_names", "hyperparams", "cp_indices", "delta_params", "cp_params", "val_top1", "val_top5",
               "val_loss", "train_seconds", "train_images_per_s", "metrics", "dataset_fingerprint",
               "dataset_summary", "probe_environment", "probe_size", "probe_top1", "probe_logits_sha256")


@dataclass
class BundleInfo:
    """A written bundle: its path, the task, the file's size (bytes), every member's size and sha256, and the
    fingerprint of the key that signed it (None: unsigned)."""

    path: Path
    task: str
    size: int
    members: dict
    signer: str | None = None

    def to_dict(self) -> dict:
        return {"path": str(self.path), "task": self.task, "size": self.size, "members": self.members,
                "signer": self.signer}


def source_identity(source: SourceRecord) -> dict:
    """What a hub's source must match for a bundle to import: name, taps, weights sha256 (and tensor digest)."""
    return {"name": source.name, "taps": source.taps, "weights_sha256": source.weights_file_sha256,
            "tensors_sha256": source.tensors_sha256, "preprocessing": source.preprocessing}


def _verified_bytes(artifacts: Artifacts, relative: str, sha256: str) -> bytes:
    path = artifacts.registry.layout.resolve(relative)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise IntegrityError(f"{path} is missing from the hub; run `snowhub doctor`") from None
    if hashlib.sha256(data).hexdigest() != sha256:
        raise IntegrityError(f"{path} does not match its recorded sha256; run `snowhub verify-forgetting`")
    return data


def task_document(record: TaskRecord, hub: Path) -> dict:
    """``task.json``: the record's portable fields, the original name, version, seq and time, and its own lineage."""
    doc = {k: getattr(record, k) for k in TASK_FIELDS}
    lineage = getattr(record, "lineage", None) if "lineage" in {f.name for f in fields(TaskRecord)} else None
    return doc | {"name": record.name, "version": record.version, "seq": record.seq,
                  "created_at": record.created_at.isoformat(),
                  "delta_sha256": record.weights_file_sha256, "probe_sha256": record.probe_file_sha256,
                  "hub": str(hub), "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "lineage": lineage or record.metrics.get("lineage")}


def export_task(artifacts: Artifacts, name: str, output: Path | str,
                sign_with: Path | str | None = None) -> BundleInfo:
    """Write the task `name` names (a reference: ``birds`` = the version alias ``production`` points to, else the
    latest not retired; ``birds@2``; ``birds@staging``) of the hub behind `artifacts` to the new file `output`
    (a ``.snowtask`` zip); ``task.json`` records its name and version.

    The delta and probe files go in byte for byte, each checked against its recorded sha256 first, and the
    task's registry record against its seal. With `sign_with` (an Ed25519 private key file), the manifest is
    signed (:mod:`snowhub.export.signing`).

    Raises:
        TaskNotFoundError: no such task, version or alias, or a retired version. InvalidNameError: a malformed
        reference. ConfigError: `name` is the source's own head (task 0).
        IntegrityError: a record or file changed since registration. BundleError: `output` exists or
        cannot be written. ConfigError: `sign_with` is not an Ed25519 private key file.
    """
    key = None if sign_with is None else signing.load_private_key(sign_with)
    registry = artifacts.registry
    if name == SOURCE_TASK and registry.source().head_classes is not None:
        raise ConfigError(f"{SOURCE_TASK!r} is the source's own head (task 0); every hub on this source has it")
    record = registry.resolve(name)
    registry.check_record(record)
    source = artifacts.source_record()
    delta = _verified_bytes(artifacts, record.weights_file, record.weights_file_sha256)
    probe = _verified_bytes(artifacts, record.probe_file, record.probe_file_sha256)
    path = Path(output).expanduser().absolute()
    manifest = write_bundle(path, task_document(record, registry.layout.root), source_identity(source), delta, probe,
                            card.bundle_card(source, record), None if key is None else partial(signing.sign, key))
    signer = None if key is None else signing.fingerprint(signing.sign(key, b"")["public_key"])
    return BundleInfo(path, record.reference, path.stat().st_size, manifest["members"], signer)
