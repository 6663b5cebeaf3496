"""What users see of a task (``list``, ``show``, ``--json``), built from the registry's records."""

from __future__ import annotations

from dataclasses import dataclass, field

from snowhub.names import SOURCE_TASK
from snowhub.store import SourceRecord, TaskRecord
from snowhub.store.events import LifecycleState


@dataclass(frozen=True)
class TaskInfo:
    """A registered task as users see it.

    Task 0 is the source's own classifier, when it has one; its delta fields are zero. Accuracies are %,
    times s, throughput images/s, sizes in parameters.

    Attributes:
        k_total: source channels the delta subscribes to, over all taps (the sum of each tap's K).
        record_problem: why the task's registry record does not match its seal (what it shows may have
            been edited; see ``snowhub doctor``), or None when it does.
        details: everything else recorded (``show`` prints it whole).
        version: which version of the task `name` this is (schema 0007; task 0 and older tasks: 1).
        retired: out of service (``snowhub retire``). aliases: the aliases that point to this version.
        tags, description: the task's (every version's) tags and description.
    """

    seq: int
    name: str
    classes: list[str]
    k_total: int
    delta_params: int
    cp_params: int
    source_params: int
    val_top1: float | None
    val_top5: float | None
    image_size: int
    created_at: str
    record_problem: str | None = None
    details: dict = field(default_factory=dict)
    version: int = 1
    retired: bool = False
    aliases: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    description: str | None = None

    @property
    def reference(self) -> str:
        """``name@version``, the reference that pins this task (``imagenet`` for task 0)."""
        return self.name if self.seq == 0 else f"{self.name}@{self.version}"

    def to_dict(self) -> dict:
        """JSON-ready: the fields above, ``num_classes``, and the details merged in."""
        problem = {} if self.record_problem is None else {"record_problem": self.record_problem}
        return {"seq": self.seq, "name": self.name, "version": self.version, "num_classes": len(self.classes),
                "k_total": self.k_total, "delta_params": self.delta_params, "cp_params": self.cp_params,
                "source_params": self.source_params, "val_top1": self.val_top1, "val_top5": self.val_top5,
                "image_size": self.image_size, "created_at": self.created_at, "retired": self.retired,
                "aliases": self.aliases, "tags": self.tags, "description": self.description, **problem,
                **self.details, "classes": self.classes}


def source_task_info(source: SourceRecord, record_problem: str | None) -> TaskInfo:
    """Task 0: the source's own classifier (only for a source with a head)."""
    return TaskInfo(0, SOURCE_TASK, list(source.head_classes or []), 0, 0, 0, source.parameter_count, None, None,
                    int(source.preprocessing["image_size"]), source.created_at.isoformat(), record_problem,
                    {"kind": "source"})


def task_info(task: TaskRecord, source_params: int, record_problem: str | None, full: bool = False,
              state: LifecycleState | None = None) -> TaskInfo:
    """A delta task; `full` adds what only ``show`` prints (hyper-parameters, indices, metrics, files);
    `state` (the hub's lifecycle) its aliases, tags, description and whether it is retired."""
    details = {"kind": "delta", "val_loss": task.val_loss, "train_seconds": task.train_seconds,
               "train_images_per_s": task.train_images_per_s, "probe_size": task.probe_size,
               "probe_top1": task.probe_top1, "weights_file": task.weights_file,
               "weights_file_sha256": task.weights_file_sha256, "dataset_fingerprint": task.dataset_fingerprint}
    if full:
        details |= {"hyperparams": task.hyperparams, "cp_indices": task.cp_indices, "metrics": task.metrics,
                    "dataset": task.dataset_summary, "probe_file": task.probe_file,
                    "probe_file_sha256": task.probe_file_sha256, "probe_logits_sha256": task.probe_logits_sha256,
                    "probe_environment": task.probe_environment,
                    "lineage": task.lineage}
    ks = task.hyperparams["delta_shape"]["ks"]
    state = state or LifecycleState()
    aliases = [a for a, v in state.aliases_of(task.name).items() if v == task.version]
    return TaskInfo(task.seq, task.name, list(task.class_names), sum(ks), task.delta_params, task.cp_params,
                    source_params, task.val_top1, task.val_top5, task.image_size, task.created_at.isoformat(),
                    record_problem, details, task.version, state.is_retired(task.name, task.version), aliases,
                    dict(sorted(state.tags.get(task.name, {}).items())), state.descriptions.get(task.name))
