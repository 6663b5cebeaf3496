"""What the web pages show, gathered from the running server: its catalog of verified task records, its health,
its metrics and the last probe check. Nothing here reads the registry beyond what the catalog already does
(one indexed query when it looks for new tasks), and every number comes from a record or a counter.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from snowhub.artifacts import Artifacts
from snowhub.checks import ForgettingReport, TaskCheck, verify_hub
from snowhub.errors import TaskNotFoundError
from snowhub.progress import SilentProgress
from snowhub.serving.http._served import ServedTask
from snowhub.serving.http._state import ServerState
from snowhub.serving.http._ui_chart import Chart, line_chart


@dataclass(frozen=True)
class TaskRow:
    """One row of the hub page's task table (None where a field does not apply, e.g. the source's own head)."""

    seq: int
    name: str
    classes: int
    val_top1: float | None
    val_top5: float | None
    params: int | None
    percent: float | None
    k: int | None
    images_per_s: float | None
    created: str
    ready: bool
    reason: str | None
    imported: bool


SORTS = {"seq": "seq", "name": "task", "classes": "classes", "val_top1": "val top-1", "val_top5": "val top-5",
         "params": "delta parameters", "k": "K", "images_per_s": "training images/s", "created": "created"}
"""Sort key → column heading of the task table, in column order."""


def _counter(metric) -> float:
    """The value of a prometheus_client Counter (its ``_total`` sample), through the public collect()."""
    return sum(s.value for family in metric.collect() for s in family.samples if s.name.endswith("_total"))


def _when(moment: datetime | None) -> str:
    return "" if moment is None else moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _row(task: ServedTask, source_params: int, source_created: datetime | None, problems: dict[str, str]) -> TaskRow:
    reason = problems.get(task.name)
    if task.record is None:  # the source's own head: task 0, no delta
        return TaskRow(0, task.name, len(task.classes), None, None, None, None, None, None, _when(source_created),
                       reason is None, reason, False)
    record = task.record
    lineage = record.lineage or record.metrics.get("lineage")
    k = sum(record.hyperparams["delta_shape"]["ks"])  # over every tap, as `snowhub list` counts it
    return TaskRow(record.seq, record.name, len(record.class_names), record.val_top1, record.val_top5,
                   record.delta_params, 100.0 * record.delta_params / source_params, k, record.train_images_per_s,
                   _when(record.created_at), reason is None, reason, bool(lineage))


def _sorted(rows: list[TaskRow], sort: str, descending: bool) -> list[TaskRow]:
    key = sort if sort in SORTS else "seq"
    present = [r for r in rows if getattr(r, key) is not None]
    missing = [r for r in rows if getattr(r, key) is None]  # always last, whatever the order
    return sorted(present, key=lambda r: getattr(r, key), reverse=descending) + missing


def hub_view(state: ServerState, sort: str = "seq", descending: bool = False) -> dict:
    """The hub page: the source, the server's health and counters, and every task as a :class:`TaskRow`."""
    health = state.health()  # also looks for tasks committed since the last poll
    source = state.artifacts.source_record()
    problems = state.catalog.problems()
    tasks = [state.catalog.known(name) for name in state.catalog.names()]
    rows = [_row(t, source.parameter_count, source.created_at, problems) for t in tasks if t is not None]
    return {"source": source, "created": _when(source.created_at), "health": health,
            "passes": int(_counter(state.metrics.source_passes)), "images": int(_counter(state.metrics.images)),
            "requests": int(_counter(state.metrics.requests)), "device": str(state.device),
            "rows": _sorted(rows, sort, descending), "sort": sort if sort in SORTS else "seq",
            "descending": descending, "sorts": SORTS}


@dataclass(frozen=True)
class ProbeRun:
    """The last probe check of the whole hub: the report, when it finished (UTC) and how long it took (s)."""

    report: ForgettingReport
    finished: datetime
    seconds: float

    def check(self, seq: int, name: str) -> TaskCheck | None:
        return next((c for c in self.report.tasks if c.seq == seq and c.name == name), None)


class ProbeChecks:
    """Runs ``verify-forgetting``'s check (:func:`snowhub.checks.verify_hub`) on demand and keeps the last result.

    One check runs at a time; a request that arrives during one waits for it and shows its result.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs = 0
        self.last: ProbeRun | None = None

    def run(self, state: ServerState) -> ProbeRun:
        """Re-read and re-hash every file, re-run every probe set on the server's device, compare (blocking)."""
        runs = self._runs
        with self._lock:
            if self._runs != runs and self.last is not None:
                return self.last  # a check finished while this request waited for the lock
            start = time.perf_counter()
            report = verify_hub(Artifacts(state.registry, state.device), SilentProgress(),
                                in_use=state.artifacts.loaded_source())
            self.last = ProbeRun(report, datetime.now(timezone.utc), time.perf_counter() - start)
            self._runs += 1
            return self.last


def _facts(task: ServedTask) -> list[tuple[str, str]]:
    """(label, value as shown) pairs of what the registry records about `task`."""
    record = task.record
    facts = [("served at", f"{task.image_size} px"), ("classes", str(len(task.classes))),
             ("version (seq)", str(task.seq))]
    if record is None:
        return facts
    return facts + [("val top-1", f"{record.val_top1:.2f} %"), ("val top-5", f"{record.val_top5:.2f} %"),
                    ("val loss", f"{record.val_loss:.4f}"),
                    ("probe set", f"{record.probe_size} images, top-1 {record.probe_top1:.2f} % at registration"),
                    ("delta parameters", f"{record.delta_params:,}"),
                    ("channel pooling parameters", f"{record.cp_params:,}"),
                    ("trained", f"{record.train_seconds:.1f} s at {record.train_images_per_s:.1f} images/s"),
                    ("created", _when(record.created_at)), ("delta sha256", record.weights_file_sha256)]


def _subscriptions(source_taps: list[dict], task: ServedTask) -> list[dict]:
    """Per tap of the source: its stage, channels, and the K channels this task's channel pooling takes."""
    indices = task.record.cp_indices if task.record is not None else {}
    return [{"stage": i + 1, "tap": tap["name"], "stride": tap["stride"], "channels": tap["channels"],
             "blocks": tap["blocks"], "k": len(indices.get(tap["name"], [])), "indices": indices.get(tap["name"], [])}
            for i, tap in enumerate(source_taps)]


def charts(history: list[dict]) -> list[Chart]:
    """The task page's charts: validation top-1 per epoch, and the training and validation loss per epoch."""
    found = [line_chart("top1", "validation top-1 per epoch", "%", history, [("val_top1", "val top-1")]),
             line_chart("loss", "loss per epoch", "", history, [("train_loss", "training loss"),
                                                                ("val_loss", "validation loss")])]
    return [c for c in found if c is not None]


def task_view(state: ServerState, name: str, probes: ProbeChecks) -> dict:
    """The task page of `name`. Raises TaskNotFoundError (naming the known tasks) for an unknown one."""
    state.catalog.refresh(at_most_every_s=state.config.poll_s)
    task = state.catalog.known(name)
    if task is None:
        known = ", ".join(state.catalog.names()) or "none yet"
        raise TaskNotFoundError(f"no task named {name!r} is served here; known tasks: {known}")
    record = task.record
    history = record.metrics.get("history", []) if record is not None else []
    lineage = None if record is None else (record.lineage or record.metrics.get("lineage"))
    last = probes.last
    return {"task": task, "record": record, "facts": _facts(task), "charts": charts(history), "history": history,
            "hyperparams": {} if record is None else record.hyperparams, "lineage": lineage,
            "dataset": {} if record is None else record.dataset_summary,
            "taps": _subscriptions(state.artifacts.source_record().taps, task),
            "reason": state.catalog.problems().get(name), "probe": last,
            "check": None if last is None or record is None else last.check(record.seq, record.name),
            "checked": None if last is None else last.finished.strftime("%Y-%m-%d %H:%M:%S UTC")}
