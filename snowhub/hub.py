"""The ``Hub``: snowhub's Python API. One frozen source, an append-only sequence of task deltas.

Everything the CLI does goes through here: :meth:`Hub.init`, :meth:`Hub.open`, :meth:`Hub.add_task`,
:meth:`Hub.tasks`, :meth:`Hub.task`, :meth:`Hub.predict` and :meth:`Hub.verify_forgetting`.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from snowhub import __version__
from snowhub.data import discover, fingerprint
from snowhub.device import pick_device
from snowhub.errors import ConfigError, IntegrityError, InvalidNameError, TaskExistsError, TaskNotFoundError
from snowhub.faults import crash_point, watch_progress
from snowhub.forgetting import ForgettingReport, verify_hub
from snowhub.models.delta import Delta, DeltaShape
from snowhub.models.frozen import FrozenSource
from snowhub.models.sources import Tap, get_spec
from snowhub.models.weights import load_source_state, resolve_weights
from snowhub.probe import ProbeSet, build_probe_set, logits_digest
from snowhub.progress import Progress, SilentProgress
from snowhub.serving import ImagePrediction, ServedTask, predict_images
from snowhub.store import (
    HubLayout,
    HubReadOnlyError,
    Registry,
    SourceRow,
    TaskRow,
    atomic_save_safetensors,
    clean_if_idle,
    clear_intent,
    load_safetensors_verified,
    remove_leftovers,
    tensor_digest,
    write_intent,
    writer_lock,
)
from snowhub.training import TrainConfig, train_delta

DEFAULT_HUB = ".snowhub"
SOURCE_TASK = "imagenet"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def default_hub_path() -> Path:
    """``$SNOWHUB_HOME`` if set, else ``./.snowhub``."""
    return Path(os.environ.get("SNOWHUB_HOME") or DEFAULT_HUB)


def check_task_name(name: str) -> None:
    """Raises InvalidNameError unless `name` is 1–64 letters, digits, ``_`` or ``-``, starting with a letter or digit."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidNameError(
            f"invalid task name {name!r}: use 1-64 letters, digits, '_' or '-', starting with a letter or digit"
        )
    if name == SOURCE_TASK:
        raise TaskExistsError(f"{SOURCE_TASK!r} is the source's own task (task 0); choose another name")


@dataclass(frozen=True)
class TaskInfo:
    """A registered task as users see it (``list``, ``show``, ``--json``).

    Task 0 is the source's own classifier, when it has one; its delta fields are zero.
    Accuracies are %, times s, throughput images/s, sizes in parameters.
    """

    seq: int
    name: str
    classes: list[str]
    k: int
    delta_params: int
    cp_params: int
    source_params: int
    val_top1: float | None
    val_top5: float | None
    image_size: int
    created_at: str
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"seq": self.seq, "name": self.name, "num_classes": len(self.classes), "k": self.k,
                "delta_params": self.delta_params, "cp_params": self.cp_params,
                "source_params": self.source_params, "val_top1": self.val_top1, "val_top5": self.val_top5,
                "image_size": self.image_size, "created_at": self.created_at, **self.details,
                "classes": self.classes}


def _library_versions() -> dict[str, str]:
    import torchvision

    return {"snowhub": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "python": platform.python_version()}


class Hub:
    """A hub directory: its registry, its source model and its task deltas.

    Open with :meth:`open` (or create with :meth:`init`); use as a context manager or call :meth:`close`.
    """

    def __init__(self, registry: Registry):
        self.registry = registry
        self._source: FrozenSource | None = None

    # -- opening ----------------------------------------------------------------------------------

    @staticmethod
    def init(path: Path | str | None, source: str, weights: Path | str | None = None) -> "Hub":
        """Create a hub at `path` (default :func:`default_hub_path`) around the pretrained `source`.

        The source's weights are copied into the hub (safetensors) so the hub is self-contained and the
        recorded hash always refers to the exact tensors served.

        Raises:
            SourceError: unknown source, or its weights cannot be found or do not fit.
            HubExistsError: a hub already exists at `path`.
        """
        layout = HubLayout(Path(path) if path is not None else default_hub_path())
        spec = get_spec(source)
        state, origin = resolve_weights(spec, weights)
        backbone = spec.build()
        has_head = load_source_state(spec, backbone, state)
        state = {k: v.contiguous() for k, v in backbone.state_dict().items()}
        created_dir = not layout.root.exists()
        registry = Registry.create(layout.root)
        weights_path = layout.source_dir / f"{spec.name}.safetensors"
        try:
            with writer_lock(layout, wait=False):
                file_sha = atomic_save_safetensors(state, weights_path, metadata={"source": spec.name})
                registry.set_source(SourceRow(
                    name=spec.name, weights_origin=origin, weights_file=layout.relative(weights_path),
                    weights_file_sha256=file_sha, weights_sha256=tensor_digest(state),
                    parameter_count=sum(v.numel() for k, v in backbone.named_parameters()),
                    taps=[t.to_dict() for t in spec.taps], preprocessing=spec.preprocessing,
                    head_classes=_imagenet_classes() if has_head else None,
                    library_versions=_library_versions(),
                ))
        except BaseException:
            registry.close()
            _remove_new_hub(layout, created_dir)
            raise
        return Hub(registry)

    @staticmethod
    def open(path: Path | str | None = None) -> "Hub":
        """Open the hub at `path` (default :func:`default_hub_path`).

        Raises:
            HubNotFoundError: no hub there (the message says how to create one).
            HubVersionError: the hub was written by a newer snowhub.
        """
        registry = Registry.open(Path(path) if path is not None else default_hub_path())
        try:
            registry.source()  # a hub whose init never finished is not a hub
            clean_if_idle(registry)  # files of a crashed writer, if no writer is active now
        except BaseException:
            registry.close()
            raise
        return Hub(registry)

    def close(self) -> None:
        self.registry.close()

    def __enter__(self) -> "Hub":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def layout(self) -> HubLayout:
        return self.registry.layout

    # -- reading ----------------------------------------------------------------------------------

    def source_row(self) -> SourceRow:
        return self.registry.source()

    def source_model(self) -> FrozenSource:
        """The frozen source, loaded from the hub's copy after checking its sha256 (cached).

        Raises:
            IntegrityError: the source weights file was changed since `init`.
        """
        if self._source is None:
            row = self.source_row()
            self.registry.check_record(row)  # the recorded hashes themselves must be the ones written
            # The hub's recorded taps are its contract with its deltas: a later snowhub may tap new hubs
            # elsewhere, but this hub is always served as it was recorded.
            spec = dataclasses.replace(get_spec(row.name), taps=tuple(Tap.from_dict(t) for t in row.taps))
            state = load_safetensors_verified(self.layout.resolve(row.weights_file), row.weights_file_sha256)
            backbone = spec.build()
            load_source_state(spec, backbone, state)
            self._source = FrozenSource(spec, backbone, has_head=row.head_classes is not None)
        return self._source

    def tasks(self) -> list[TaskInfo]:
        """Every task in append order, task 0 (the source's own head) first when the source has one.

        A task whose registry record does not match its seal is still listed, with the reason in
        ``details["record_problem"]``: what it shows may have been edited (see ``snowhub doctor``).
        """
        row = self.source_row()
        infos = [] if row.head_classes is None else [self._source_info(row)]
        return infos + [self._info(t, row.parameter_count) for t in self.registry.tasks()]

    def task(self, name: str) -> TaskInfo:
        """One task by name (``imagenet`` is task 0). Raises TaskNotFoundError listing the known names."""
        row = self.source_row()
        if name == SOURCE_TASK and row.head_classes is not None:  # the name is reserved for task 0
            return self._source_info(row)
        return self._info(self.registry.get_task(name), row.parameter_count, full=True)

    def _source_info(self, row: SourceRow) -> TaskInfo:
        """Task 0: the source's own classifier (only for a source with a head)."""
        return TaskInfo(0, SOURCE_TASK, list(row.head_classes), 0, 0, 0, row.parameter_count, None, None,
                        int(row.preprocessing["image_size"]), row.created_at.isoformat(),
                        {"kind": "source"} | self._record_problem(row))

    def _record_problem(self, row: SourceRow | TaskRow) -> dict[str, str]:
        """``{"record_problem": reason}`` if `row`'s record does not match its seal, else ``{}``."""
        try:
            self.registry.check_record(row)
        except IntegrityError as error:
            return {"record_problem": str(error)}
        return {}

    def _info(self, t: TaskRow, source_params: int, full: bool = False) -> TaskInfo:
        details = {"kind": "delta", "val_loss": t.val_loss, "train_seconds": t.train_seconds,
                   "train_images_per_s": t.train_images_per_s, "probe_size": t.probe_size,
                   "probe_top1": t.probe_top1, "weights_file": t.weights_file, "weights_sha256": t.weights_sha256,
                   "dataset_fingerprint": t.dataset_fingerprint} | self._record_problem(t)
        if full:
            details |= {"hyperparams": t.hyperparams, "cp_indices": t.cp_indices, "metrics": t.metrics,
                        "dataset": t.dataset_summary, "probe_file": t.probe_file,
                        "probe_logits_sha256": t.probe_logits_sha256, "probe_environment": t.probe_environment}
        ks = t.hyperparams["delta_shape"]["ks"]
        return TaskInfo(t.seq, t.name, list(t.class_names), sum(ks), t.delta_params, t.cp_params, source_params,
                        t.val_top1, t.val_top5, int(t.hyperparams["image_size"]), t.created_at.isoformat(), details)

    def load_delta(self, row: TaskRow) -> Delta:
        """The registered delta of `row`, read from its verified safetensors file.

        Raises:
            IntegrityError: the file is missing or differs from its recorded sha256.
        """
        self.registry.check_record(row)
        state = load_safetensors_verified(self.layout.resolve(row.weights_file), row.weights_sha256)
        delta = Delta(DeltaShape.from_dict(row.hyperparams["delta_shape"]))
        delta.load_state_dict(state)
        return delta.eval()

    def load_probe(self, row: TaskRow) -> ProbeSet:
        """The probe set of `row`, read from its verified file. Raises IntegrityError if it changed."""
        self.registry.check_record(row)
        return ProbeSet.from_tensors(load_safetensors_verified(self.layout.resolve(row.probe_file), row.probe_sha256))

    # -- writing ----------------------------------------------------------------------------------

    def add_task(self, name: str, data: Path | str, config: TrainConfig | None = None,
                 progress: Progress | None = None, wait_for_lock: bool = True) -> TaskInfo:
        """Train a delta for the images in `data` and append it as task `name`.

        Atomic: the task's files are written under temporary names, renamed into place, and the registry
        row is committed last; any failure or interrupt (Ctrl-C) removes what was written, so the hub is
        left exactly as it was. Earlier tasks are never touched.

        Raises:
            InvalidNameError, TaskExistsError: bad or taken name (checked before any training).
            DataError: missing/empty/single-class data or an unreadable image.
            ConfigError: an option out of range.
            HubLockedError: another process is writing and `wait_for_lock` is False.
        """
        config = config or TrainConfig()
        check_task_name(name)
        config.validate()
        progress = watch_progress(progress or SilentProgress())
        if self.registry.read_only:  # say so before any training, not at the commit
            raise HubReadOnlyError(f"the hub at {self.layout.root} is read-only; make it writable to add tasks")
        if self.registry.has_task(name):
            raise self._exists(name)
        crash_point("add-task:start")
        split = discover(data, val_fraction=config.val_fraction, seed=config.seed)
        device = pick_device(config.device)
        crash_point("add-task:data-found")
        with writer_lock(self.layout, wait=wait_for_lock, progress=progress):
            self._remove_orphans()
            if self.registry.has_task(name):  # another writer may have taken it while we waited
                raise self._exists(name)
            crash_point("add-task:locked")
            source = self.source_model().to(device)
            try:
                result = train_delta(source, split, config, device, progress)
                progress.start("building probe set", None)
                probe = build_probe_set(source, result.delta.to(device), split.val, result.image_size, device,
                                        config.probe_per_class, config.probe_max)
                result.delta.cpu()
                progress.finish()
            finally:
                source.cpu()
            crash_point("add-task:trained")
            seq = self.registry.next_seq()
            stem = f"{seq:04d}-{name}"
            delta_path = self.layout.tasks_dir / f"{stem}.delta.safetensors"
            probe_path = self.layout.tasks_dir / f"{stem}.probe.safetensors"
            write_intent(self.layout, seq, name, (delta_path, probe_path))  # lets recovery find them
            try:
                # These names are new (seq is unused, orphans were removed), so on failure both may go.
                delta_sha = atomic_save_safetensors(result.delta.state_dict(), delta_path, {"task": name})
                probe_sha = atomic_save_safetensors(probe.tensors(), probe_path, {"task": name})
                crash_point("add-task:files-written")
                delta_params, cp_params = result.delta.parameter_counts()
                hyper = config.to_dict() | {"image_size": result.image_size, "device": result.device,
                                            "delta_shape": result.delta.shape.to_dict()}
                self.registry.add_task(TaskRow(
                    seq=seq, name=name, class_names=split.class_names, hyperparams=hyper,
                    cp_indices=result.cp_indices, delta_params=delta_params, cp_params=cp_params,
                    val_top1=result.val.top1, val_top5=result.val.top5, val_loss=result.val.loss,
                    train_seconds=result.train_seconds, train_images_per_s=result.images_per_s,
                    metrics={"history": result.history, "serving_params": result.delta.serving_parameter_count()},
                    weights_file=self.layout.relative(delta_path), weights_sha256=delta_sha,
                    probe_file=self.layout.relative(probe_path), probe_sha256=probe_sha,
                    probe_size=len(probe.labels), probe_top1=probe.top1(),
                    probe_logits_sha256=logits_digest(probe.logits), probe_environment=probe.environment,
                    dataset_fingerprint=fingerprint(split),
                    dataset_summary={"root": str(split.root), "layout": split.layout, "val_source": split.val_source,
                                     "train_images": len(split.train), "val_images": len(split.val)},
                ))
            except BaseException:
                # Remove what no committed row refers to (both files, unless the commit went through
                # just before an interrupt: then they belong to a registered task and must stay).
                try:
                    self._remove_orphans()
                except Exception:  # e.g. the registry cannot be read (disk gone): the next writer cleans up
                    pass
                raise
            clear_intent(self.layout, seq)
        return self.task(name)

    def _exists(self, name: str) -> TaskExistsError:
        return TaskExistsError(f"a task named {name!r} already exists in {self.layout.root}; "
                               "tasks are append-only, choose another name")

    def _remove_orphans(self) -> list[Path]:
        """Delete files a crashed writer left behind (see :mod:`snowhub.store.recovery`).

        Only called under the writer lock, so no live writer can own them. Unreferenced files that are not
        provably leftovers (e.g. a task file whose registry row was deleted) are kept for ``snowhub doctor``.
        """
        return remove_leftovers(self.layout, self.registry.source(), self.registry.tasks())

    # -- serving and checking ---------------------------------------------------------------------

    def predict(self, images: list[Path | str], tasks: list[str] | None = None, top: int = 5,
                device: str = "auto") -> list[ImagePrediction]:
        """Top-`top` labels with probabilities for every image and task, from one source pass per image size.

        Args:
            images: image files (any format Pillow reads; the first frame of animations).
            tasks: task names (``imagenet`` is the source's own head); None = every task.

        Raises:
            DataError: an image cannot be read. TaskNotFoundError: unknown task name.
            IntegrityError: a stored weight file changed since registration (never served silently).
        """
        source_row = self.source_row()
        names = tasks if tasks is not None else [t.name for t in self.tasks()]
        served = []
        for name in dict.fromkeys(names):
            if name == SOURCE_TASK and source_row.head_classes is not None:
                served.append(ServedTask(name, None, list(source_row.head_classes),
                                         int(source_row.preprocessing["image_size"])))
            else:
                row = self.registry.get_task(name)
                served.append(ServedTask(name, self.load_delta(row), list(row.class_names),
                                         int(row.hyperparams["image_size"])))
        if not served:
            raise TaskNotFoundError(f"the hub at {self.layout.root} has no tasks to answer yet; "
                                    "add one with `snowhub add-task NAME --data DIR`")
        if top < 1:
            raise ConfigError("--top must be at least 1")
        return predict_images(self.source_model(), served, [Path(p) for p in images], top, pick_device(device))

    def verify_forgetting(self, device: str = "auto", progress: Progress | None = None,
                          strict: bool = False) -> ForgettingReport:
        """Prove no task changed: hashes of the source and every delta, and each task's probe set re-run.

        Each task's logits must be bit-identical where they are re-run in the numerics environment they were
        recorded in, else within tolerance with every label the same; `strict` demands bit-identical
        everywhere (see :mod:`snowhub.forgetting`). Returns a :class:`ForgettingReport`; ``report.ok`` is
        True only when nothing forgot or changed.
        """
        return verify_hub(self, pick_device(device), progress or SilentProgress(), strict)



def _imagenet_classes() -> list[str]:
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return list(_IMAGENET_CATEGORIES)


def _remove_new_hub(layout: HubLayout, created_dir: bool) -> None:
    """Undo a failed `init`: remove exactly what it created."""
    for path in (layout.db_path, Path(f"{layout.db_path}-wal"), Path(f"{layout.db_path}-shm"), layout.lock_path):
        path.unlink(missing_ok=True)
    for directory in (layout.staging_dir, layout.tasks_dir, layout.source_dir):
        for child in directory.glob("*") if directory.is_dir() else []:
            child.unlink()
        if directory.is_dir():
            directory.rmdir()
    if created_dir and layout.root.is_dir() and not any(layout.root.iterdir()):
        layout.root.rmdir()
