"""The ``Hub``: snowhub's Python API. One frozen source, an append-only sequence of task deltas.

A facade: it opens the registry and delegates — training to :mod:`snowhub.training`, writing to
:mod:`snowhub.registration`, serving to :class:`snowhub.serving.Predictor`, checks to :mod:`snowhub.checks`.
Models are loaded and verified once per device through :class:`snowhub.artifacts.Artifacts`, so a notebook
or a server that predicts in a loop reads and hashes each delta once.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from snowhub.artifacts import Artifacts
from snowhub.checks import DoctorReport, ForgettingReport, check_hub, verify_hub
from snowhub.data import load_rgb
from snowhub.device import pick_device
from snowhub.errors import ConfigError, DataError, IntegrityError
from snowhub.export import BundleInfo, OnnxExport, export_onnx, export_task, import_task
from snowhub.export.signing import fingerprint as key_fingerprint
from snowhub.export.signing import public_key_of
from snowhub.store.trust import TrustedKey, trust_key, trusted_keys
from snowhub.info import TaskInfo, source_task_info, task_info
from snowhub.lifecycle import LifecycleMethods, matches_tags
from snowhub.names import SOURCE_TASK, default_hub_path
from snowhub.progress import Progress, SilentProgress
from snowhub.registration import create_hub, train_and_register, train_on_workers
from snowhub.evaluation.plot import plot_confusion, require_matplotlib
from snowhub.serving import ImagePrediction, Predictor
from snowhub.serving.evaluating import Evaluation, evaluate_folder, record_evaluation, recorded_evaluations
from snowhub.serving.runtime_select import make_runtime
from snowhub.store import HubLayout, Registry, RegistryStore, SourceRecord, TaskRecord, clean_if_idle
from snowhub.store.copy import CopyReport, copy_registry
from snowhub.training import TrainConfig, train_delta


class Hub(LifecycleMethods):
    """A hub directory: its registry, its source model and its task deltas, each task in versions.

    Open with :meth:`open` (or create with :meth:`init`); use as a context manager or call :meth:`close`.
    A task's life (references, aliases, retiring, tags, history) is in :class:`snowhub.lifecycle.LifecycleMethods`.
    """

    def __init__(self, registry: RegistryStore):
        self.registry = registry
        self._artifacts: dict[torch.device, Artifacts] = {}
        self._predictors: dict[tuple[torch.device, str], Predictor] = {}

    # -- opening ----------------------------------------------------------------------------------

    @staticmethod
    def init(path: Path | str | None, source: str, weights: Path | str | None = None,
             registry: str | None = None, image_size: int | None = None, taps: Sequence[str] | None = None) -> "Hub":
        """Create a hub at `path` (default :func:`default_hub_path`) around the pretrained `source`; its registry
        at the database URL `registry` (default ``$SNOWHUB_REGISTRY_URL``, else ``sqlite:///<path>/hub.db``).

        `source` is a built-in name or ``timm:<arch>`` / ``torchvision:<arch>``; `weights` a file, ``"random"``
        or None (pretrained); `image_size` and `taps` apply to those discovered sources
        (:func:`snowhub.registration.create_hub`, ``docs/sources.md``).

        Raises:
            SourceError: unknown source, an untappable model, a refused image size, or weights that cannot be
                found or do not fit.
            HubExistsError: a hub already exists at `path`.
        """
        return Hub(create_hub(Path(path) if path is not None else default_hub_path(), source, weights, registry,
                              image_size=image_size, taps=taps))

    @staticmethod
    def open(path: Path | str | None = None, clean: bool = True, registry: str | None = None) -> "Hub":
        """Open the hub at `path` (default :func:`default_hub_path`); `clean` removes the leftovers of a crashed
        writer when no writer is active (a training's ranks other than 0 open with False: they write nothing).

        Raises:
            HubNotFoundError: no hub there (the message says how to create one).
            HubVersionError: the hub was written by a newer snowhub.
        """
        registry = Registry.open(path, registry)  # path None: the default, or the directory a URL's registry records
        try:
            registry.source()  # a hub whose init never finished is not a hub
            if clean:
                clean_if_idle(registry)  # files of a crashed writer, if no writer is active now
        except BaseException:
            registry.close()
            raise
        return Hub(registry)

    @staticmethod
    def doctor(path: Path | str | None = None, registry: str | None = None) -> DoctorReport:
        """Check the whole hub at `path` (its registry at `registry`) without running a model (:mod:`snowhub.checks.doctor`)."""
        return check_hub(path, registry)

    @staticmethod
    def copy_registry(path: Path | str | None, to: str, registry: str | None = None) -> CopyReport:
        """Copy the registry of the hub at `path` into the empty database `to`, verified there; the original is
        only read (:func:`snowhub.store.copy.copy_registry`, which lists the errors raised)."""
        return copy_registry(Path(path) if path is not None else None, to, registry)

    def close(self) -> None:
        for predictor in self._predictors.values():
            predictor.runtime.close()
        self.registry.close()

    def __enter__(self) -> "Hub":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def layout(self) -> HubLayout:
        """Where the hub keeps its files (:class:`snowhub.store.HubLayout`)."""
        return self.registry.layout

    def artifacts(self, device: torch.device) -> Artifacts:
        """This hub's verified models on `device`, loaded once and kept."""
        if device not in self._artifacts:
            self._artifacts[device] = Artifacts(self.registry, device)
        return self._artifacts[device]

    # -- reading ----------------------------------------------------------------------------------

    def source_record(self) -> SourceRecord:
        """What the registry records about the source."""
        return self.registry.source()

    def tasks(self, all: bool = False, tags: Sequence[str] = ()) -> list[TaskInfo]:  # noqa: A002 -- `list --all`
        """Every task version in append order, task 0 (the source's own head) first when the source has one;
        retired versions only with `all`; with `tags` (``KEY=VALUE`` each) only the tasks that have them all.

        A task whose registry record does not match its seal is still listed, with the reason in
        :attr:`TaskInfo.record_problem`: what it shows may have been edited (see ``snowhub doctor``).

        Raises:
            ConfigError: a tag without ``=``. IntegrityError: the lifecycle events were tampered with.
        """
        source = self.registry.source()
        state = self.registry.lifecycle()
        head = [] if source.head_classes is None or tags else [source_task_info(source, self._record_problem(source))]
        infos = [task_info(t, source.parameter_count, problem, state=state)
                 for t, problem in self.registry.checked_tasks()]
        return head + [i for i in infos if (all or not i.retired) and matches_tags(i.tags, list(tags))]

    def task(self, name: str) -> TaskInfo:
        """One task by reference (``birds``, ``birds@2``, ``birds@staging``; ``imagenet`` is task 0), with its
        versions, aliases, tags and description. Raises TaskNotFoundError listing the known names."""
        source = self.registry.source()
        if name == SOURCE_TASK and source.head_classes is not None:  # the name is reserved for task 0
            return source_task_info(source, self._record_problem(source))
        record = self.registry.resolve(name, retired=True)
        state = self.registry.lifecycle()
        info = task_info(record, source.parameter_count, self._record_problem(record), full=True, state=state)
        info.details["versions"] = [
            {"version": r.version, "seq": r.seq, "created_at": r.created_at.isoformat(), "val_top1": r.val_top1,
             "retired": state.is_retired(r.name, r.version),
             "aliases": [a for a, v in state.aliases_of(r.name).items() if v == r.version]}
            for r in self.registry.versions(record.name)]
        info.details["evaluations"] = recorded_evaluations(state.evaluations, record.name)
        return info

    def _record_problem(self, record: SourceRecord | TaskRecord) -> str | None:
        try:
            self.registry.check_record(record)
        except IntegrityError as error:
            return str(error)
        return None

    # -- writing ----------------------------------------------------------------------------------

    def add_task(self, name: str, data: Path | str, config: TrainConfig | None = None,
                 progress: Progress | None = None, wait_for_lock: bool = True,
                 distributed: bool = False, new_version: bool = False) -> TaskInfo | None:
        """Train a delta for the images in `data` and append it as task `name` (with `new_version`: as the next
        version of the existing task `name`, its earlier versions untouched; ``docs/lifecycle.md``).

        Validate → discover and fingerprint the data → train (under the writer lock) → build the probe
        set → register (:func:`snowhub.registration.train_and_register`). Atomic: any failure or interrupt
        (Ctrl-C) leaves the hub exactly as it was. Earlier tasks are never touched.

        `distributed`: this process is one worker of ``torchrun`` (or :meth:`add_task_on_workers`): it joins
        the process group from the launcher's environment and trains its shard with DistributedDataParallel
        (``docs/distributed.md``). Only rank 0 takes the writer lock (never waiting for it), builds the probe
        set and registers; the other ranks write nothing and return None.

        Raises:
            InvalidNameError, TaskExistsError: bad or taken name (checked before any training).
            TaskNotFoundError: `new_version` for a name that has no task.
            DataError: missing/empty/single-class data, an unreadable image, or data changed during training.
            ConfigError: an option out of range.
            HubLockedError: another process is writing and `wait_for_lock` is False (or `distributed`).
            DistributedError: the hub directory is not shared by every rank, or the ranks diverged.
            HubWriteError: the feature cache (``config.feature_cache``) could not be written in ``staging/``.
        """
        record = train_and_register(self.registry, lambda device: self.artifacts(device).source(), name, data,
                                    config or TrainConfig(), progress or SilentProgress(), train=train_delta,
                                    wait_for_lock=wait_for_lock, distributed=distributed, new_version=new_version)
        return None if record is None else self.task(record.reference)

    def add_task_on_workers(self, name: str, data: Path | str, config: TrainConfig, processes: int,
                            command: Sequence[str], new_version: bool = False) -> TaskInfo:
        """Add task `name` with `processes` training processes on this machine: check what can be checked here
        (name, options, data, GPUs), then run `command` (e.g. ``python -m snowhub_cli add-task NAME …``, which
        calls :meth:`add_task` with ``distributed=True``) in each, under PyTorch's elastic launcher
        (:func:`snowhub.registration.train_on_workers`). If any worker fails, the others are stopped and what a
        killed rank 0 left is removed: the hub is as it was, the lock released.

        Raises:
            as :meth:`add_task`; ConfigError: more processes than GPUs, or a global batch they cannot share.
            DistributedError: a worker failed or was killed (one line: which, and why).
        """
        train_on_workers(self.registry, name, data, config, processes, command, new_version)
        return self.task(self.registry.versions(name)[-1].reference)

    # -- serving and checking ---------------------------------------------------------------------

    def predictor(self, device: str = "auto", runtime: str = "auto") -> Predictor:
        """The resident :class:`~snowhub.serving.Predictor` for `device` and `runtime` (kept: models load once).

        `runtime`: ``auto`` (ONNX Runtime on a CPU for the graphs ``snowhub serve`` has built and checked,
        PyTorch for the rest and on a GPU), ``torch``, or ``onnxruntime`` (its graphs built first, cached in
        the hub; a task whose graph fails its check is refused). See :mod:`snowhub.serving.runtime`.

        Raises:
            ConfigError: an unknown runtime, or ONNX Runtime on a GPU or not installed.
        """
        resolved = pick_device(device)
        if (resolved, runtime) not in self._predictors:
            artifacts = self.artifacts(resolved)
            self._predictors[resolved, runtime] = Predictor(artifacts, make_runtime(runtime, artifacts))
        return self._predictors[resolved, runtime]

    def predict(self, images: Sequence[ImageInput], tasks: list[str] | None = None, top: int = 5,
                device: str = "auto", names: Sequence[str] | None = None,
                runtime: str = "auto") -> list[ImagePrediction]:
        """Top-`top` labels with probabilities for every image and task, from one source pass per image size.

        Args:
            images: each one an image file (a path: any format Pillow reads, the first frame of animations,
                EXIF orientation applied), a PIL image (any mode, converted to RGB as it is) or a uint8 tensor
                ``(3, H, W)`` of RGB pixels (channels first, as ``torchvision.io.decode_image`` returns). All
                are read before any model runs; a file and the same pixels in memory get the same answers.
            tasks: task names (``imagenet`` is the source's own head); None = every task.
            names: what to call each image in the answers; default its path, or ``image N`` for the N-th
                (from 0) when it is in memory.
            runtime: what runs the forward passes (``auto``, ``torch``, ``onnxruntime``; see :meth:`predictor`).

        Raises:
            DataError: an image cannot be read, or a tensor is not uint8 ``(3, H, W)``. TaskNotFoundError:
            unknown task name, or no task yet. ConfigError: `top` < 1, `names` of another length, or a
            runtime that cannot run here.
            IntegrityError: a stored file changed since registration.
        """
        if names is not None and len(names) != len(images):
            raise ConfigError(f"names has {len(names)} entries for {len(images)} images; give one name per image")
        pictures = [_picture(image, i) for i, image in enumerate(images)]
        names = list(names) if names is not None else [
            str(image) if isinstance(image, (str, Path)) else f"image {i}" for i, image in enumerate(images)]
        return self.predictor(device, runtime).predict(pictures, names, tasks, top)

    def evaluate(self, task: str, data: Path | str, batch_size: int = 32, device: str = "auto",
                 runtime: str = "auto", plot: Path | str | None = None, progress: Progress | None = None,
                 record: bool = True) -> Evaluation:
        """Score `task` on the labelled folder `data` (one sub-folder per class, named as the task's classes):
        top-1, top-5, per-class accuracy, precision and recall, and the confusion matrix, from the very labels
        :meth:`predict` answers (:func:`snowhub.serving.evaluating.evaluate_folder`, `batch_size` images per
        forward pass). `plot`: a folder to draw the confusion matrix in, as ``<task>-v<version>-confusion.png``.
        `record`: append an ``evaluated`` event (dataset fingerprint and summary, numbers) to the registry.

        Raises:
            DataError: no images, an unreadable one, or classes the task does not know (nothing is written).
            ConfigError: `batch_size` below 1; `plot` without matplotlib. TaskNotFoundError, IntegrityError.
        """
        if plot is not None:
            require_matplotlib()  # before any image is read
        result = evaluate_folder(self.predictor(device, runtime), task, data, batch_size, progress)
        if plot is not None:
            target = Path(plot) / f"{result.task}-v{result.version}-confusion.png"
            result.plot = str(plot_confusion(result.metrics, target, f"{result.reference} on {result.data}"))
        if record:
            result.event = record_evaluation(self.registry, result)
        return result

    def verify_forgetting(self, device: str = "auto", progress: Progress | None = None,
                          strict: bool = False) -> ForgettingReport:
        """Prove no task changed: hashes of the source and every delta, and each task's probe set re-run.

        Each task's logits must be bit-identical where they are re-run in the numerics environment they were
        recorded in, else within tolerance with every label the same; `strict` demands bit-identical
        everywhere (see :mod:`snowhub.checks.forgetting`). Everything is re-read and re-hashed, and a source
        this hub already serves from is compared with its file. ``report.ok`` is True only when nothing
        forgot or changed.
        """
        resolved = pick_device(device)
        resident = self._artifacts.get(resolved)
        in_use = resident.loaded_source() if resident is not None else None
        return verify_hub(Artifacts(self.registry, resolved), progress or SilentProgress(), strict, in_use)

    # -- taking tasks out, bringing them in -------------------------------------------------------

    def export_onnx(self, tasks: list[str] | None, output: Path | str, image_size: int | None = None,
                    opset: int = 18, source_head: bool = False) -> OnnxExport:
        """Write `tasks` (None = every delta task; ``imagenet`` or `source_head` adds task 0) as one ONNX graph
        in the new directory `output`, verified with ONNX Runtime first (see :mod:`snowhub.export.onnx_export`).

        Raises:
            TaskNotFoundError, ConfigError, IntegrityError, ExportError (nothing is written then).
        """
        return export_onnx(self.artifacts(torch.device("cpu")), tasks, output, image_size, opset, source_head)

    def export_task(self, name: str, output: Path | str, sign_with: Path | str | None = None) -> BundleInfo:
        """Write task `name` as a ``.snowtask`` bundle to the new file `output` (:mod:`snowhub.export.bundle`),
        signed with the Ed25519 private key file `sign_with` if given (:mod:`snowhub.export.signing`).

        Raises:
            TaskNotFoundError, ConfigError (task 0), IntegrityError, BundleError (`output` exists).
        """
        return export_task(self.artifacts(torch.device("cpu")), name, output, sign_with)

    def import_task(self, bundle: Path | str, new_name: str | None = None, progress: Progress | None = None,
                    wait_for_lock: bool = True, allow_unsigned: bool = False, new_version: bool = False) -> TaskInfo:
        """Append the task in `bundle` (as `new_name` if given; with `new_version` as the next version of the task
        of that name here) if this hub's source has its weights sha256 and taps and its probe set gives
        bit-identical logits here on the CPU; atomic, like :meth:`add_task`.

        Raises:
            BundleError: unreadable, unsafe, edited, another source, logits differ. InvalidNameError,
            TaskExistsError: bad or taken name (TaskNotFoundError: no such task for `new_version`).
            HubLockedError, HubReadOnlyError: the hub cannot be written.
        """
        record = import_task(self.artifacts(torch.device("cpu")), bundle, new_name, progress, wait_for_lock,
                             allow_unsigned=allow_unsigned, new_version=new_version)
        return self.task(record.reference)

    def trust_key(self, public_key: str | Path, comment: str = "") -> TrustedKey:
        """Trust bundles signed by `public_key` (a PEM file or 64 hex digits): a sealed, append-only registry row.

        Raises:
            ConfigError: not an Ed25519 public key, or trusted already. HubReadOnlyError: cannot be written.
        """
        key = public_key_of(public_key)
        return trust_key(self.registry, key, key_fingerprint(key), comment)

    def trusted_keys(self) -> list[TrustedKey]:
        """The keys this hub trusts, in the order they were added (IntegrityError for an edited row)."""
        return list(trusted_keys(self.registry).values())


ImageInput = Path | str | Image.Image | torch.Tensor
"""What :meth:`Hub.predict` takes for one image: a file, a PIL image, or a uint8 ``(3, H, W)`` tensor."""


def _picture(image: ImageInput, index: int) -> Image.Image:
    """One input of :meth:`Hub.predict` as an 8-bit RGB PIL image (``DataError`` if it is none of the three)."""
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    if isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
            raise DataError(f"image {index} is a {image.dtype} tensor of shape {tuple(image.shape)}; give uint8 "
                            "RGB pixels as (3, H, W), channels first (torchvision.io.decode_image gives them)")
        return Image.fromarray(image.detach().cpu().permute(1, 2, 0).contiguous().numpy(), mode="RGB")
    if not isinstance(image, (str, Path)):
        raise DataError(f"image {index} is a {type(image).__name__}; give a path, a PIL image or a uint8 "
                        "(3, H, W) tensor")
    path = Path(image)
    if path.is_dir():
        raise DataError(f"{path} is a directory; give image files (e.g. {path}/*.jpg)")
    return load_rgb(path)
