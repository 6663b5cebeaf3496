"""Writing to a hub: creating it around a source, and adding a task (train, probe, register: the add-task
orchestration of :func:`train_and_register` and :func:`train_on_workers`, behind ``Hub.add_task``).

Both are atomic. ``init`` removes exactly what it created if anything fails. Appending a task follows one
order, so that a crash at any point leaves either the old hub or the new task, never half of one
(``docs/reliability.md``): reserve the next ``seq`` → write an *intent* naming the files about to be
created → write each file atomically (temporary name, fsync, rename) → commit the sealed registry row →
clear the intent. The caller holds the writer lock throughout (:func:`snowhub.store.writer_lock`);
a multi-process training run calls :func:`register_task` from rank 0 only.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import torch

from snowhub._version import __version__
from snowhub.data import DatasetSplit, discover, fingerprint
from snowhub.device import pick_device
from snowhub.errors import ConfigError, DataError, HubReadOnlyError, TaskExistsError, TaskNotFoundError
from snowhub.faults import crash_point
from snowhub.models.budget import delta_parameters, fit_budget
from snowhub.models.frozen import FrozenSource, check_source
from snowhub.models.sources import get_spec
from snowhub.models.weights import RANDOM, load_source_state, resolve_weights
from snowhub.names import check_task_name
from snowhub.probe import ProbeSet, build_probe_set, logits_digest
from snowhub.progress import Progress
from snowhub.store import (
    HubLayout,
    Registry,
    RegistryStore,
    SourceRecord,
    TaskRecord,
    atomic_save_safetensors,
    clean_if_idle,
    tensor_digest,
    writer_lock,
)
from snowhub.store.files import write_error
from snowhub.store.recovery import clear_intent, remove_leftovers, remove_new_hub, write_intent
from snowhub.training import (
    TrainConfig,
    TrainResult,
    check_processes,
    join_process_group,
    run_workers,
    this_worker,
    worker_device_type,
)


def _library_versions(source: str) -> dict[str, str]:
    import torchvision

    versions = {"snowhub": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
                "python": platform.python_version()}
    if source.startswith("timm:"):
        import timm

        versions["timm"] = timm.__version__
    return versions


def create_hub(root: Path, source: str, weights: Path | str | None = None, registry_url: str | None = None,
               image_size: int | None = None, taps: Sequence[str] | None = None) -> Registry:
    """Create a hub at `root` around the pretrained `source` and return its open registry.

    Args:
        source: a built-in name (``resnet50``, …) or any model as ``timm:<arch>`` / ``torchvision:<arch>``.
        weights: a weights file (safetensors or weights-only torch; the whole model's state dict or its
            backbone's), ``"random"``, or None for the source's pretrained weights.
        registry_url: where the registry lives (:mod:`snowhub.store.url`; default ``root/hub.db``).
        image_size: the hub's default image size in px (discovered sources; checked by a dummy forward).
        taps: module / graph-node names to tap instead of the discovered ones.

    The source's weights are copied into the hub (safetensors), so the hub is self-contained and the
    recorded hashes always refer to the exact tensors served. Its taps, normalisation and architecture id
    are recorded, so the hub rebuilds its source without discovering anything again.

    Raises:
        SourceError: unknown source, a model that cannot be tapped, an image size it refuses, or weights
            that cannot be found or do not fit; nothing is written.
        HubExistsError: a hub already exists at `root`.
    """
    layout = HubLayout(root)
    spec = get_spec(source, image_size, taps)
    state, origin = resolve_weights(spec, weights)
    backbone = spec.build()
    has_head = load_source_state(spec, backbone, state) and origin != RANDOM
    if ":" in spec.name:  # a discovered source: its taps read through the extractor it will be served with
        check_source(FrozenSource(spec, backbone, has_head), spec.image_size)
    state = {k: v.contiguous() for k, v in backbone.state_dict().items()}
    created_dir = not layout.root.exists()
    registry = Registry.create(layout.root, registry_url)
    weights_path = layout.source_dir / f"{spec.name.replace(':', '-')}.safetensors"
    try:
        with writer_lock(registry, wait=False):
            file_sha = atomic_save_safetensors(state, weights_path, metadata={"source": spec.name})
            registry.set_source(SourceRecord(
                name=spec.name, weights_origin=origin, weights_file=layout.relative(weights_path),
                weights_file_sha256=file_sha, tensors_sha256=tensor_digest(state),
                parameter_count=sum(v.numel() for v in backbone.parameters()),
                taps=[t.to_dict() for t in spec.taps], preprocessing=spec.preprocessing,
                head_classes=spec.head_categories() if has_head else None,
                library_versions=_library_versions(spec.name),
            ))
    except BaseException:
        registry.close()
        remove_new_hub(layout, created_dir, registry)
        raise
    return registry


def remove_orphans(registry: RegistryStore) -> list[Path]:
    """Delete files a crashed writer left behind (see :mod:`snowhub.store.recovery`); call under the lock.

    Unreferenced files that are not provably leftovers (e.g. a task file whose registry row was deleted) are
    kept for ``snowhub doctor``.
    """
    return remove_leftovers(registry.layout, registry.source(), registry.tasks())


def register_task(registry: RegistryStore, name: str, trained: TrainResult, probe: ProbeSet, split: DatasetSplit,
                  dataset_fingerprint: str, hyperparams: dict, new_version: bool = False) -> TaskRecord:
    """Append the trained task `name` to the hub; the caller holds the writer lock.

    Args:
        trained: the training result (delta on the CPU, channel pooling frozen).
        probe: the probe set built with that delta.
        split, dataset_fingerprint: the data it was trained on, fingerprinted when it was discovered.
        hyperparams: every option of the run, recorded with the task.
        new_version: append the next version of the existing task `name` (schema 0007) instead of a new task.

    Returns:
        The committed, sealed record.

    Raises:
        TaskExistsError: the name was taken meanwhile (TaskNotFoundError with `new_version`: it is gone).
        HubWriteError: a file or the registry cannot be written.
        Any failure or interrupt removes what was written: the hub is left exactly as it was.
    """
    delta_params, cp_params = trained.delta.parameter_counts()
    fields = dict(
        class_names=split.class_names, hyperparams=hyperparams,
        cp_indices=trained.cp_indices, delta_params=delta_params, cp_params=cp_params,
        val_top1=trained.val.top1, val_top5=trained.val.top5, val_loss=trained.val.loss,
        train_seconds=trained.train_seconds, train_images_per_s=trained.images_per_s,
        metrics={"history": trained.history, "serving_params": trained.delta.serving_parameter_count()}
        | ({"cache_seconds": trained.cache_seconds} if trained.cache_seconds else {}),
        dataset_fingerprint=dataset_fingerprint,
        dataset_summary={"root": str(split.root), "layout": split.layout, "val_source": split.val_source,
                         "train_images": len(split.train), "val_images": len(split.val)},
    )
    return _append(registry, name, trained.delta.state_dict(), probe, fields, new_version)


def register_trained_delta(registry: RegistryStore, name: str, delta_state: dict[str, torch.Tensor], probe: ProbeSet,
                           fields: dict, new_version: bool = False) -> TaskRecord:
    """Append an already-trained delta as task `name` (e.g. imported from a task bundle); the caller holds the
    writer lock and has checked the delta against this hub's source (its probe logits re-run here).

    Args:
        delta_state: the delta's state dict (channel pooling frozen). probe: its probe set, logits of this hub.
        fields: every :class:`~snowhub.store.TaskRecord` field except ``seq``, ``name``, the file names and
            hashes and the probe summary (``probe_size``, ``probe_top1``, ``probe_logits_sha256``), which are
            set here exactly as for a trained task.
        new_version: append it as the next version of the existing task `name`.

    Returns, raises and leaves the hub as :func:`register_task` does (one write path for both).
    """
    return _append(registry, name, delta_state, probe, fields, new_version)


def _append(registry: RegistryStore, name: str, delta_state: dict[str, torch.Tensor], probe: ProbeSet,
            fields: dict, new_version: bool = False) -> TaskRecord:
    """seq → intent → delta + probe files (atomic) → sealed row → clear intent; undone on any failure."""
    layout = registry.layout
    seq = registry.next_seq()
    stem = f"{seq:04d}-{name}"
    delta_path = layout.tasks_dir / f"{stem}.delta.safetensors"
    probe_path = layout.tasks_dir / f"{stem}.probe.safetensors"
    write_intent(layout, seq, name, (delta_path, probe_path))  # lets recovery find them
    try:
        # These names are new (seq is unused, orphans were removed), so on failure both may go.
        delta_sha = atomic_save_safetensors(delta_state, delta_path, {"task": name})
        probe_sha = atomic_save_safetensors(probe.tensors(), probe_path, {"task": name})
        crash_point("add-task:files-written")
        record = TaskRecord(
            seq=seq, name=name, **fields,
            weights_file=layout.relative(delta_path), weights_file_sha256=delta_sha,
            probe_file=layout.relative(probe_path), probe_file_sha256=probe_sha,
            probe_size=len(probe.labels), probe_top1=probe.top1(), probe_logits_sha256=logits_digest(probe.logits),
            probe_environment=probe.environment,
        )
        registry.add_task(record, new_version)
    except BaseException:
        # Remove what no committed row refers to (both files, unless the commit went through just before
        # an interrupt: then they belong to a registered task and must stay).
        try:
            remove_orphans(registry)
        except Exception:  # e.g. the registry cannot be read (disk gone): the next writer cleans up
            pass
        raise
    clear_intent(layout, seq)
    return record


# -- add-task: train, probe, register -----------------------------------------------------------------

Trainer = Callable[..., TrainResult]


def train_and_register(registry: RegistryStore, source_on: Callable[[torch.device], FrozenSource], name: str,
                       data: Path | str, config: TrainConfig, progress: Progress, *, train: Trainer,
                       wait_for_lock: bool = True, distributed: bool = False,
                       new_version: bool = False) -> TaskRecord | None:
    """Add-task: validate → discover and fingerprint the data → train (under the writer lock) → build the probe
    set → check the data did not change → :func:`register_task`. Atomic: any failure or interrupt leaves the
    hub exactly as it was (``docs/reliability.md``).

    Args:
        source_on: the hub's verified frozen source on a device.
        train: the trainer, :func:`snowhub.training.train_delta` (the facade passes it).
        distributed: this process is one worker of a launch (``torchrun``, :func:`train_on_workers`): it trains
            its shard as one rank (``docs/distributed.md``); only rank 0 takes the writer lock (never waiting
            for it), builds the probe set and registers.
        new_version: train the next version of the existing task `name` (its earlier versions stay as they are).

    Returns:
        The registered record; None on a rank that does not write (rank 1 and up).

    Raises:
        as :meth:`snowhub.Hub.add_task`.
    """
    check_task_name(name)
    config.validate()
    check_can_add(registry, name, new_version)
    crash_point("add-task:start")
    split = discover(data, val_fraction=config.val_fraction, seed=config.seed)
    writes = not distributed or this_worker().writes
    dataset_fingerprint = fingerprint(split) if writes else ""
    device = pick_device(config.run.device)
    crash_point("add-task:data-found")
    lock = writer_lock(registry, wait=wait_for_lock and not distributed, progress=progress)
    with lock if writes else nullcontext():
        if writes:
            remove_orphans(registry)
            check_can_add(registry, name, new_version)  # another writer may have taken the name while we waited
        crash_point("add-task:locked")
        source = source_on(device)
        config = fit_to_budget(config, source, len(split.class_names))
        result = _train(train, source, split, config, device, progress, registry.layout.staging_dir, distributed)
        if result is None:
            return None
        progress.start("building probe set", None)
        probe = build_probe_set(source, result.delta.to(device), split.val, result.image_size, device,
                                config.probe_per_class, config.probe_max)
        result.delta.cpu()
        progress.finish()
        crash_point("add-task:trained")
        if fingerprint(split) != dataset_fingerprint:
            raise DataError(f"the images in {split.root} changed while the task was training; nothing was "
                            "registered: run add-task again once the data stays put")
        return register_task(registry, name, result, probe, split, dataset_fingerprint,
                             _hyperparams(config, result, distributed) | {"probe_batch": probe.batch_size},
                             new_version)


def _train(train: Trainer, source: FrozenSource, split: DatasetSplit, config: TrainConfig, device: torch.device,
           progress: Progress, staging: Path, distributed: bool) -> TrainResult | None:
    """Train here alone, or as this rank of a launch (None on the ranks that do not write)."""
    if distributed:
        with join_process_group(device) as group:
            group.check_shared_directory(staging)
            result = train(source, split, config, device, progress, group)
        return result if group.writes else None
    try:
        return train(source, split, config, device, progress, cache_dir=staging)
    except OSError as exc:  # only the feature cache writes while training
        raise write_error(Path(exc.filename or staging), exc) from None


def fit_to_budget(config: TrainConfig, source: FrozenSource, num_classes: int) -> TrainConfig:
    """`config` with ``delta.width_divisor`` and ``delta.k_ratio`` chosen for ``delta.budget`` (issue 28): the
    largest delta of at most that many serving parameters (:func:`snowhub.models.budget.fit_budget`), keeping
    the knobs named in ``delta.budget_keeps``; `config` itself when it has no budget.

    Raises:
        ConfigError: no delta of this source and `num_classes` fits the budget.
    """
    arch = config.delta
    if arch.budget is None:
        return config
    keeps = set(arch.budget_keeps)
    choice = fit_budget(source.spec.block, source.taps, num_classes, arch.budget, head_k_ratio=arch.head_k_ratio,
                        noise_var=arch.noise_var, width_divisor=arch.width_divisor if "width_divisor" in keeps else None,
                        k_ratio=arch.k_ratio if "k_ratio" in keeps else None)
    return replace(config, delta=replace(arch, width_divisor=choice.width_divisor, k_ratio=choice.k_ratio))


def _hyperparams(config: TrainConfig, result: TrainResult, distributed: bool) -> dict:
    """Every option of the run, as recorded with the task: the configuration and what training resolved (with
    a `budget`, the delta's serving parameters as ``budget_params``)."""
    resolved = {"image_size": result.image_size, "device": result.device, "delta_shape": result.delta.shape.to_dict()}
    if result.low_memory is not None:  # what ran, as asked and why (``--low-memory auto``)
        resolved |= result.low_memory.to_dict()
    if config.delta.budget is not None:
        resolved["budget_params"] = delta_parameters(result.delta.shape)
    return config.to_dict() | resolved | ({"processes": result.processes} if distributed else {})


def train_on_workers(registry: RegistryStore, name: str, data: Path | str, config: TrainConfig, processes: int,
                     command: Sequence[str], new_version: bool = False) -> None:
    """Add task `name` with `processes` training processes on this machine: check what can be checked here
    (name, options, data, GPUs), then run `command` (which calls :func:`train_and_register` with
    ``distributed=True``) in each, under PyTorch's elastic launcher (:func:`snowhub.training.run_workers`).
    If any worker fails, the others are stopped and what a killed rank 0 left is removed.

    Raises:
        as :func:`train_and_register`; ConfigError: more processes than GPUs, or a global batch they cannot
        share. DistributedError: a worker failed or was killed (one line: which, and why).
    """
    check_task_name(name)
    config.validate()
    config.check_single_process()
    check_processes(processes, worker_device_type(config.run.device), torch.cuda.device_count())
    if config.batch_size % processes:
        raise ConfigError(f"`batch_size` {config.batch_size} (the global batch) does not divide into {processes} "
                          f"processes; use a multiple of {processes}")
    check_can_add(registry, name, new_version)
    discover(data, val_fraction=config.val_fraction, seed=config.seed)
    try:
        run_workers(command, processes)
    except BaseException:
        clean_if_idle(registry)  # a killed rank 0's files; its lock went with it
        raise


def check_can_add(registry: RegistryStore, name: str, new_version: bool = False) -> None:
    """Refuse to add task `name` to a read-only hub, under a name already taken, or (`new_version`) as a new
    version of a task that does not exist.

    Raises:
        HubReadOnlyError, TaskExistsError, TaskNotFoundError.
    """
    if registry.read_only:  # say so before any training, not at the commit
        raise HubReadOnlyError(f"the hub at {registry.layout.root} is read-only; make it writable to add tasks")
    exists = registry.has_task(name)
    if exists and not new_version:
        raise TaskExistsError(f"a task named {name!r} already exists in {registry.layout.root}; tasks are "
                              "append-only: choose another name, or train its next version (`new_version`)")
    if new_version and not exists:
        raise TaskNotFoundError(f"no task named {name!r} to add a version to in {registry.layout.root}; add it as "
                                "a new task (without `new_version`)")
