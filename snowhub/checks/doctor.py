"""``snowhub doctor``: check a whole hub's integrity without running any model.

Where :meth:`snowhub.Hub.verify_forgetting` re-runs every task's probe set, the doctor only reads: it is
fast enough to run after every backup, and it keeps going after the first problem so that it can list
them all. It checks

* the registry: the database's own integrity check, the schema revision, and the seal of every row
  (:mod:`snowhub.store.integrity`: an edited metric, class name, path or hash is caught);
* the source: its weights file against its recorded file sha256 and tensor digest;
* every task: a valid name, ``seq`` numbers 1..n without gaps, paths inside the hub, the delta and probe
  files against their sha256, the delta's channel pooling indices and the probe's labels, logits digest
  and accuracy against the registry;
* the directories: files no row refers to. Leftovers of an interrupted writer are warnings (the next
  command that opens the hub removes them); other unreferenced files are reported and never deleted.

Problems make :attr:`DoctorReport.ok` False (``snowhub doctor`` exits with status 2); warnings do not.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from safetensors.torch import load_file

from snowhub.artifacts import build_delta
from snowhub.errors import (
    HubFilesError,
    HubNotFoundError,
    HubVersionError,
    NotARegistryError,
    RegistryUnreachableError,
    RegistryURLError,
    SnowhubError,
)
from snowhub.evaluation import accuracy_counts
from snowhub.names import check_task_name, default_hub_path
from snowhub.probe import logits_digest
from snowhub.store import (
    HubLayout,
    RecordAudit,
    Registry,
    RegistryStore,
    SourceRecord,
    TaskRecord,
    find_leftovers,
    head_revision,
    lock_holder,
    sha256_file,
    tensor_digest,
)

# Nothing to check: the registry cannot be found, reached, used at all, or was written by another snowhub
# (raised, not reported).
_NO_HUB = (HubNotFoundError, HubVersionError, RegistryUnreachableError, NotARegistryError, HubFilesError,
           RegistryURLError)


@dataclass
class DoctorReport:
    """What :func:`check_hub` found.

    Attributes:
        hub: the hub directory.
        problems: one line per thing that is wrong (the hub is damaged or was tampered with).
        warnings: one line per thing to know that loses nothing (leftovers, a writer at work).
        tasks: number of registered tasks checked.
        files: number of files whose bytes were hashed.
    """

    hub: str
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    tasks: int = 0
    files: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {"ok": self.ok, **asdict(self)}


def check_hub(path: Path | str | None, registry_url: str | None = None) -> DoctorReport:
    """Check the hub at `path` (its registry at `registry_url`, see :mod:`snowhub.store.url`) and report every
    problem found; raises only if there is no hub to check.

    Raises:
        HubNotFoundError: no hub at `path`. HubVersionError: written by a newer snowhub (or an older one and
        read-only). RegistryUnreachableError, NotARegistryError, HubFilesError, RegistryURLError: the registry's
        server cannot be reached, the database is no registry, its files are elsewhere, or its URL is unusable.
    """
    layout = HubLayout(Path(path) if path is not None else default_hub_path())
    report = DoctorReport(str(layout.root))
    try:
        registry = Registry.open(None if path is None else layout.root, registry_url)
    except _NO_HUB:
        raise
    except SnowhubError as exc:  # a registry that is there but cannot be read (a corrupted file, say)
        report.problems.append(f"registry: {exc}")
        return report
    report.hub = str(registry.layout.root)
    try:
        _check(registry, report)
    finally:
        registry.close()
    return report


def _check(registry: RegistryStore, report: DoctorReport) -> None:
    layout = registry.layout
    try:
        report.problems += [f"registry: {line}" for line in registry.integrity_check()]
        revision = registry.revision()
        if revision != head_revision():
            report.problems.append(f"registry: schema revision {revision}, expected {head_revision()}")
        audit = registry.audit()
    except SnowhubError as exc:
        report.problems.append(f"registry: {exc}")
        return
    if audit.source is None:
        report.problems.append("source: no source model recorded (its `snowhub init` never finished)")
    else:
        _check_source(layout, audit.source, report)
    report.tasks = len(audit.tasks)
    for expected, row in enumerate(audit.tasks, 1):
        _check_task(layout, row, expected, report)
    report.problems += audit.event_problems()  # an edited, deleted or reordered lifecycle event
    _check_files(registry, report)


def _check_source(layout: HubLayout, row: RecordAudit, report: DoctorReport) -> None:
    if row.problem:
        report.problems.append(f"source: {row.problem}")
    source = row.record
    if not isinstance(source, SourceRecord):
        return  # a value does not parse: the problem above says which
    path = _file(layout, "source", "weights file", source.weights_file, source.weights_file_sha256, report)
    if path is None:
        return
    try:
        if tensor_digest(load_file(str(path))) != source.tensors_sha256:
            report.problems.append("source: the weights' tensors differ from those recorded at init")
    except Exception as exc:  # noqa: BLE001 -- any failure to parse is a finding, not a crash
        report.problems.append(f"source: weights file {path} cannot be read: {_one_line(exc)}")


def _check_task(layout: HubLayout, row: RecordAudit, expected_seq: int, report: DoctorReport) -> None:
    what = f"task {row.key} {row.name!r}"
    if row.key != expected_seq:
        report.problems.append(f"{what}: numbered {row.key} but task {expected_seq} is missing "
                               "(a registry record was deleted)")
    try:
        check_task_name(row.name)
    except SnowhubError:
        report.problems.append(f"{what}: the name is not a valid task name")
    if row.problem:
        report.problems.append(f"{what}: {row.problem}")
    task = row.record
    if not isinstance(task, TaskRecord):
        return  # a value does not parse: the problem above says which
    delta_path = _file(layout, what, "delta file", task.weights_file, task.weights_file_sha256, report)
    probe_path = _file(layout, what, "probe file", task.probe_file, task.probe_file_sha256, report)
    for path, check, label in ((delta_path, _check_delta, "delta file"), (probe_path, _check_probe, "probe file")):
        if path is None:
            continue
        try:
            check(path, task)
        except _Finding as finding:
            report.problems.append(f"{what}: {finding}")
        except Exception as exc:  # noqa: BLE001
            report.problems.append(f"{what}: the {label} does not fit its record: {_one_line(exc)}")


class _Finding(Exception):
    pass


def _check_delta(path: Path, task: TaskRecord) -> None:
    delta = build_delta(task.hyperparams["delta_shape"], load_file(str(path)))
    stored = {tap.name: pool.indices.tolist() for tap, pool in zip(delta.shape.taps, delta.pools)}
    if stored != task.cp_indices:
        raise _Finding("the delta's channel pooling indices differ from the registry")


def _check_probe(path: Path, task: TaskRecord) -> None:
    probe = load_file(str(path))
    logits, labels = probe["logits"], probe["labels"]
    if logits_digest(logits) != task.probe_logits_sha256:
        raise _Finding("the probe set's recorded logits differ from the registry")
    if len(labels) != task.probe_size:
        raise _Finding(f"the probe set holds {len(labels)} images, the registry says {task.probe_size}")
    top1 = 100.0 * accuracy_counts(logits, labels)[0] / len(labels)
    if top1 != task.probe_top1:
        raise _Finding(f"the probe set's accuracy is {top1:.2f} %, the registry says {task.probe_top1}")


def _file(layout: HubLayout, what: str, kind: str, relative: object, sha: object,
          report: DoctorReport) -> Path | None:
    """The verified path of a recorded file, or None after reporting why not."""
    try:
        path = layout.resolve(str(relative))
    except SnowhubError:
        report.problems.append(f"{what}: the registry records a {kind} outside the hub ({relative!r})")
        return None
    if not path.is_file():
        report.problems.append(f"{what}: {kind} {path} is missing")
        return None
    report.files += 1
    try:
        actual = sha256_file(path)
    except OSError as exc:
        report.problems.append(f"{what}: {kind} {path} cannot be read ({exc.strerror})")
        return None
    if actual != sha:
        report.problems.append(f"{what}: {kind} {path} does not match its recorded sha256 "
                               f"(expected {str(sha)[:12]}…, found {actual[:12]}…)")
        return None
    return path


def _check_files(registry: RegistryStore, report: DoctorReport) -> None:
    layout = registry.layout
    try:
        source = registry.source()
    except SnowhubError:
        source = None
    try:
        found = find_leftovers(layout, source, registry.tasks())
    except SnowhubError:
        return  # rows that do not parse were reported above
    writer = lock_holder(registry)
    if writer is not None:
        report.warnings.append(f"a writer ({writer}) is at work on this hub; its files are not final yet")
    elif found.removable:
        report.warnings += [f"{layout.relative(p)}: leftover of an interrupted add-task or init; the next "
                            "command that opens the hub removes it" for p in found.removable]
    report.problems += [f"{layout.relative(p)}: a file no registry record refers to (kept; if it is a task's, "
                        "restore hub.db from a backup)" for p in found.unexpected]


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]
