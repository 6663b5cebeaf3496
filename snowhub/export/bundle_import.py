"""``snowhub import``: append a ``.snowtask`` bundle's task to this hub, only if it provably works here.

In order, each failure one line and the hub unchanged: the bundle is read and every member checked against
its manifest (:func:`snowhub.export.bundle.read_bundle`); every JSON member is checked against its schema
(:mod:`snowhub.export.bundle_schema`); its signature is checked and its signer must be a key this hub trusts
(:func:`check_signer`; ``--allow-unsigned`` lets an unsigned or untrusted bundle in, never a broken
signature); the name is free (or ``--as`` renames; with ``--new-version`` it must be taken: the bundle becomes
that task's next version); the hub's source has the bundle's weights sha256 and taps; the delta loads into
its recorded DeltaShape and holds the recorded channel pooling indices; then, under the writer lock, the probe set is re-run on this hub's source
on the CPU under :func:`~snowhub.numerics.exact_float32` and must give bit-identical logits. Only then is it
registered through :func:`snowhub.registration.register_trained_delta` (the add-task write path), with its
lineage: where it came from, its original seq and creation time.
"""

from __future__ import annotations

from dataclasses import fields
from datetime import datetime, timezone
from pathlib import Path

import torch

from snowhub.artifacts import Artifacts, build_delta
from snowhub.errors import TaskExistsError, TaskNotFoundError
from snowhub.export.bundle import MAX_BUNDLE_BYTES, Bundle, read_bundle
from snowhub.export import bundle_schema, signing
from snowhub.export.bundle_export import TASK_FIELDS
from snowhub.export.errors import BundleError
from snowhub.models.delta import Delta
from snowhub.names import check_task_name
from snowhub.numerics import numerics_environment
from snowhub.probe import ProbeSet, logits_digest, probe_batch, probe_logits
from snowhub.progress import Progress, SilentProgress
from snowhub.registration import register_trained_delta, remove_orphans
from snowhub.store import HubReadOnlyError, SourceRecord, TaskRecord, writer_lock
from snowhub.store.trust import trusted_keys

CPU = torch.device("cpu")
_HAS_LINEAGE_COLUMN = "lineage" in {f.name for f in fields(TaskRecord)}


def validate_members(bundle: Bundle, where: Path) -> None:
    """Every JSON member of `bundle` against its schema (one-line BundleError for the first value that does not fit)."""
    for member, value, schema in (("snowtask.json", bundle.manifest, bundle_schema.MANIFEST),
                                  ("source.json", bundle.source, bundle_schema.SOURCE),
                                  ("task.json", bundle.task, bundle_schema.TASK),
                                  ("signature.json", bundle.signature, bundle_schema.SIGNATURE)):
        if value is not None:
            bundle_schema.validate(member, value, schema, where)


def check_signer(bundle: Bundle, trusted: dict, where: Path, allow_unsigned: bool) -> dict:
    """Who signed `bundle`, as its lineage records it: ``{"public_key", "fingerprint", "trusted"}``, or
    ``{"unsigned": True}``.

    Raises:
        BundleError: a signature that does not match (always); unsigned, or signed by a key not in `trusted`
            (public key hex → trusted key), unless `allow_unsigned`.
    """
    if bundle.signature is None:
        if not allow_unsigned:
            raise BundleError(f"{where} is not signed; import only signed bundles from keys this hub trusts "
                              "(`snowhub export task --sign KEY`, `snowhub trust add PUBKEY`), or pass "
                              "`allow_unsigned`")
        return {"unsigned": True}
    public_key = signing.check(bundle.signature, bundle.manifest_bytes, where)
    known = public_key in trusted
    if not known and not allow_unsigned:
        raise BundleError(f"{where} is signed by {signing.fingerprint(public_key)}, a key this hub does not trust; "
                          f"trust it with `snowhub trust add {public_key}` if you know whose it is, or pass "
                          "`allow_unsigned`")
    return {"public_key": public_key, "fingerprint": signing.fingerprint(public_key), "trusted": known}


def check_source(bundle: Bundle, source: SourceRecord, where: Path) -> None:
    """Refuse a bundle made on another source: name, weights sha256 and taps must all be this hub's."""
    theirs = bundle.source
    if theirs.get("weights_sha256") != source.weights_file_sha256 or theirs.get("name") != source.name:
        raise BundleError(f"{where} was exported from a hub on {theirs.get('name')} with weights sha256 "
                          f"{theirs.get('weights_sha256')}, but this hub's source {source.name} has weights sha256 "
                          f"{source.weights_file_sha256}; import it into a hub built on the same source weights")
    if theirs.get("taps") != source.taps:
        raise BundleError(f"{where} was exported from a hub that taps {source.name} elsewhere (weights sha256 "
                          f"{source.weights_file_sha256} both); its delta cannot read this hub's taps")


def _delta(bundle: Bundle, where: Path) -> Delta:
    from safetensors.torch import load

    task = bundle.task
    try:
        shape = task["hyperparams"]["delta_shape"]
        delta = build_delta(shape, load(bundle.delta))
        indices = {tap.name: pool.indices.tolist() for tap, pool in zip(delta.shape.taps, delta.pools)}
        fits = all(pool.frozen for pool in delta.pools) and indices == task["cp_indices"] \
            and delta.shape.num_classes == len(task["class_names"])
    except Exception as exc:  # KeyError/TypeError of an edited task.json, RuntimeError of a wrong state dict
        raise BundleError(f"{where}: its delta does not load into its recorded DeltaShape ({type(exc).__name__}); "
                          "the bundle is damaged, export the task again") from None
    if not fits:
        raise BundleError(f"{where}: its delta's channel pooling indices or classes differ from task.json; "
                          "the bundle was edited, export the task again")
    return delta


def _probe(bundle: Bundle, where: Path, image_size: int, classes: int) -> ProbeSet:
    from safetensors.torch import load

    try:
        probe = ProbeSet.from_tensors(load(bundle.probe), batch_size=probe_batch(bundle.task["hyperparams"]))
        count = len(probe.labels)
        ok = probe.images.dtype == torch.uint8 and tuple(probe.images.shape) == (count, 3, image_size, image_size) \
            and probe.labels.dtype == torch.int64 and tuple(probe.logits.shape) == (count, classes) \
            and probe.logits.dtype == torch.float32 and count > 0 and probe.batch_size >= 1
    except Exception as exc:
        raise BundleError(f"{where}: its probe set cannot be read ({type(exc).__name__}); export the task again") from None
    if not ok:
        raise BundleError(f"{where}: its probe set has the wrong shapes for the task; export the task again")
    return probe


def _fields(bundle: Bundle, where: Path, path: Path, signer: dict) -> dict:
    task = bundle.task
    try:
        out = {k: task[k] for k in TASK_FIELDS if k not in ("probe_environment", "probe_size", "probe_top1",
                                                             "probe_logits_sha256")}
        lineage = {"imported_from": path.name, "bundle_sha256": bundle.sha256, "hub": task.get("hub"),
                   "name": task["name"], "version": int(task.get("version", 1)), "seq": int(task["seq"]),
                   "created_at": task["created_at"],
                   "exported_at": task.get("exported_at"), "delta_sha256": task.get("delta_sha256"),
                   "probe_environment": task.get("probe_environment"),
                   "imported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   "signer": signer, "earlier": task.get("lineage")}
        out["metrics"] = dict(out["metrics"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{where}: task.json lacks or mangles {exc}; the bundle is damaged, export it again") from None
    if _HAS_LINEAGE_COLUMN:
        out["lineage"] = lineage
    else:  # before schema 0005: kept with the metrics, sealed the same
        out["metrics"]["lineage"] = lineage
    return out


def import_task(artifacts: Artifacts, path: Path | str, new_name: str | None = None,
                progress: Progress | None = None, wait_for_lock: bool = True,
                limit: int = MAX_BUNDLE_BYTES, allow_unsigned: bool = False, new_version: bool = False) -> TaskRecord:
    """Append the task in bundle `path` to the hub behind `artifacts` (CPU artifacts), as `new_name` if given;
    with `new_version`, as the next version of the task of that name here (which must exist), its earlier
    versions untouched (``docs/lifecycle.md``).

    The bundle must be signed by a key the hub trusts unless `allow_unsigned`; its signer goes into the
    task's lineage.

    Returns:
        The committed, sealed record.

    Raises:
        BundleError: unreadable, unsafe, oversized (over `limit` bytes unpacked), edited or damaged bundle (a
            value that does not fit its schema included); unsigned or untrusted (without `allow_unsigned`), or a
            signature that does not match; another source or other taps; probe logits not bit-identical here.
        InvalidNameError, TaskExistsError: bad or taken name (``--as NEWNAME``) without `new_version`.
        TaskNotFoundError: `new_version` for a name that has no task here.
        HubLockedError, HubReadOnlyError, HubWriteError: the hub cannot be written now.
        Any failure or interrupt leaves the hub exactly as it was.
    """
    progress = progress or SilentProgress()
    where = Path(path)
    registry = artifacts.registry
    if registry.read_only:
        raise HubReadOnlyError(f"the hub at {registry.layout.root} is read-only; make it writable to import tasks")
    bundle = read_bundle(where, limit)
    validate_members(bundle, where)
    signer = check_signer(bundle, trusted_keys(registry), where, allow_unsigned)
    name = new_name if new_name is not None else str(bundle.task.get("name", ""))
    check_task_name(name)
    _check_name_free(registry, name, new_version)
    check_source(bundle, artifacts.source_record(), where)
    delta = _delta(bundle, where)
    image_size = int(bundle.task["hyperparams"].get("image_size", 0))
    probe = _probe(bundle, where, image_size, delta.shape.num_classes)
    record_fields = _fields(bundle, where, where.absolute(), signer)
    with writer_lock(registry, wait=wait_for_lock, progress=progress):  # the lock its database calls for
        remove_orphans(registry)
        _check_name_free(registry, name, new_version)  # another writer may have taken it while we waited
        progress.start("re-running the probe set", None)
        now = probe_logits(artifacts.source(), delta, probe.images, CPU, probe.batch_size)
        progress.finish()
        if not torch.equal(now, probe.logits):
            drift = float((now - probe.logits).abs().max())
            raise BundleError(f"{where}: on this hub its probe logits differ by up to {drift:.3g} from those it was "
                              f"exported with (recorded: {logits_digest(probe.logits)[:12]}…, here: "
                              f"{logits_digest(now)[:12]}…); they must be bit-identical on the CPU, not imported")
        here = ProbeSet(probe.images, probe.labels, now, numerics_environment(CPU), probe.batch_size)
        return register_trained_delta(registry, name, delta.state_dict(), here, record_fields, new_version)


def _check_name_free(registry, name: str, new_version: bool) -> None:
    """A new task needs a free name; a new version needs a task of that name (TaskExistsError, TaskNotFoundError)."""
    taken = registry.has_task(name)
    if taken and not new_version:
        raise TaskExistsError(f"a task named {name!r} already exists in {registry.layout.root}; import it under "
                              "another name (`new_name`), or as its next version (`new_version`)")
    if not taken and new_version:
        raise TaskNotFoundError(f"no task named {name!r} in {registry.layout.root} to add a version to; import it "
                                "as a new task (without `new_version`)")
