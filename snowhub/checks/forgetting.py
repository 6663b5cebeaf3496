"""The forgetting checker: prove that no registered task changed since it was registered.

For the source: its registry record's seal, the weights file's sha256 and the digest of the tensors actually
loaded (parameters and BatchNorm buffers). For every task: its registry record's seal (so edited metrics,
class names or hashes are caught, see :mod:`snowhub.store.integrity`), its delta file's sha256, its stored channel pooling indices against
the registry, its probe file's sha256, and a fresh evaluation on its probe set compared with the accuracy
and logits recorded at registration. Backward transfer (BWT) is the mean change in probe accuracy,
current − at registration, in percentage points (Lopez-Paz & Ranzato, 2017); SNOW's promise is exactly 0.

Which promise is checked depends on where the probe logits were recorded and where they are re-run
(:mod:`snowhub.numerics`): in the same numerics environment they must be **bit-identical**; in another
one (another CPU kernel family, device or torch build) every probe label must be the same and every logit
within :data:`~snowhub.probe.LOGIT_TOLERANCE` (**within tolerance**). Anything else is **changed**.
``strict`` demands bit-identical logits everywhere.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from snowhub.artifacts import Artifacts, build_source
from snowhub.errors import SnowhubError
from snowhub.evaluation import accuracy_counts
from snowhub.models.frozen import FrozenSource
from snowhub.numerics import numerics_environment, same_environment
from snowhub.probe import LOGIT_TOLERANCE, logits_digest, probe_logits
from snowhub.progress import Progress
from snowhub.store import load_safetensors_verified, tensor_digest


BIT_IDENTICAL = "bit-identical"
WITHIN_TOLERANCE = "within tolerance"
CHANGED = "changed"
DAMAGED = "damaged"


def judge_logits(recorded: torch.Tensor, now: torch.Tensor, same_env: bool | None,
                 strict: bool = False) -> tuple[str, str | None]:
    """The verdict on re-run probe logits ``(P, classes)`` against the recorded ones, and the problem if any.

    Args:
        same_env: the logits are re-run in the environment they were recorded in (None: unknown, treated
            as another environment, since nothing then says which kernels produced them).
        strict: demand bit-identical logits even in another environment.

    Returns:
        (:data:`BIT_IDENTICAL` | :data:`WITHIN_TOLERANCE` | :data:`CHANGED`, one-line problem or None).
    """
    if torch.equal(now, recorded):
        return BIT_IDENTICAL, None
    drift = float((now - recorded).abs().max()) if now.shape == recorded.shape else float("inf")
    if same_env or strict:
        why = "in the environment they were recorded in" if same_env else "and --strict demands bit-identical"
        return CHANGED, f"probe logits differ by up to {drift:.3g} {why}"
    flipped = int((now.argmax(1) != recorded.argmax(1)).sum()) if now.shape == recorded.shape else len(now)
    if flipped:
        return CHANGED, f"{flipped} probe label(s) changed (logits differ by up to {drift:.3g})"
    if drift > LOGIT_TOLERANCE:
        return CHANGED, f"probe logits drifted by up to {drift:.3g}, beyond the tolerance {LOGIT_TOLERANCE:.3g}"
    return WITHIN_TOLERANCE, None


@dataclass
class TaskCheck:
    """The verdict on one task.

    Attributes:
        status: ``"ok"`` (nothing changed), ``"changed"`` (answers or accuracy drifted) or ``"damaged"``
            (a file is missing or differs from its recorded hash; not served).
        verdict: ``"bit-identical"``, ``"within tolerance"``, ``"changed"`` or ``"damaged"`` (see the module).
        recorded_top1, current_top1: probe-set accuracy at registration and now, %.
        max_logit_diff: largest absolute difference from the recorded probe logits.
        bit_identical: the probe logits are bit-for-bit the recorded ones.
        recorded_environment: where the probe logits were recorded (None: before snowhub recorded it).
        same_environment: they were re-run in that same environment (None: unknown).
        problems: one line per thing that is wrong.
        version: the task's version (issue 26; 1 for every task added before versions existed).
    """

    seq: int
    name: str
    status: str = "ok"
    verdict: str | None = None
    recorded_top1: float | None = None
    current_top1: float | None = None
    max_logit_diff: float | None = None
    bit_identical: bool | None = None
    recorded_environment: dict | None = None
    same_environment: bool | None = None
    problems: list[str] = field(default_factory=list)
    version: int = 1

    def fail(self, status: str, problem: str) -> None:
        if self.status != DAMAGED:
            self.status = self.verdict = status
        self.problems.append(problem)


@dataclass
class ForgettingReport:
    """Result of :func:`verify_hub` (and :meth:`snowhub.Hub.verify_forgetting`).

    Attributes:
        source_ok: the source weights are the ones recorded at ``init``.
        source_problems: what is wrong with the source, one line each.
        tasks: one :class:`TaskCheck` per registered task, in append order.
        bwt: backward transfer over the delta tasks, percentage points (None without tasks).
        checked_environment: where the probe sets were re-run (:func:`numerics_environment`).
        strict: bit-identical logits were demanded everywhere.
        tolerance: the largest logit difference accepted in another environment.
    """

    source_ok: bool
    source_problems: list[str]
    tasks: list[TaskCheck]
    bwt: float | None
    checked_environment: dict = field(default_factory=dict)
    strict: bool = False
    tolerance: float = LOGIT_TOLERANCE

    @property
    def ok(self) -> bool:
        """True only when the source and every task are unchanged."""
        return self.source_ok and all(t.status == "ok" for t in self.tasks)

    def problems(self) -> list[str]:
        """Every problem found, prefixed with what it concerns."""
        return [f"source: {p}" for p in self.source_problems] + [
            f"task {t.name!r}: {p}" for t in self.tasks for p in t.problems]

    def to_dict(self) -> dict:
        return {"ok": self.ok, "source_ok": self.source_ok, "source_problems": self.source_problems,
                "bwt": self.bwt, "strict": self.strict, "tolerance": self.tolerance,
                "checked_environment": self.checked_environment, "tasks": [asdict(t) for t in self.tasks]}


def _check_source(artifacts: Artifacts, in_use: FrozenSource | None) -> tuple[FrozenSource | None, list[str]]:
    """The source rebuilt from its re-read, re-hashed file (on the artifacts' device), or the problems."""
    try:
        record = artifacts.source_record()
        state = load_safetensors_verified(artifacts.registry.layout.resolve(record.weights_file),
                                          record.weights_file_sha256)
    except SnowhubError as exc:
        return None, [str(exc)]
    if tensor_digest(state) != record.tensors_sha256:
        return None, ["the source tensors differ from those recorded at init"]
    if in_use is not None:  # the copy a long-lived process serves from must still be the file's
        in_memory = in_use.backbone_state_dict()
        if any(not torch.equal(v.cpu(), state[k]) for k, v in in_memory.items() if k in state):
            return None, ["the source model in memory differs from its weights file"]
    return build_source(record, state).to(artifacts.device), []


def verify_hub(artifacts: Artifacts, progress: Progress, strict: bool = False,
               in_use: FrozenSource | None = None) -> ForgettingReport:
    """Check the source and every task; see the module docstring for what is compared.

    Args:
        artifacts: a fresh :class:`Artifacts` (empty cache), so every file is re-read and re-hashed.
        strict: demand bit-identical logits in every environment.
        in_use: the source a long-lived process serves from, if one is loaded: compared with the file.
    """
    source, source_problems = _check_source(artifacts, in_use)
    device = artifacts.device
    environment = numerics_environment(device)
    rows = artifacts.registry.tasks()
    checks: list[TaskCheck] = []
    progress.start("verifying tasks", len(rows))
    try:
        for row in rows:
            check = TaskCheck(row.seq, row.name, version=row.version, recorded_top1=row.probe_top1,
                              recorded_environment=row.probe_environment,
                              same_environment=same_environment(row.probe_environment, environment))
            checks.append(check)
            try:
                delta = artifacts.delta(row)
                probe = artifacts.probe(row)
            except SnowhubError as exc:
                check.fail(DAMAGED, str(exc))
                progress.advance(1)
                continue
            stored = {tap.name: pool.indices.tolist() for tap, pool in zip(delta.shape.taps, delta.pools)}
            if stored != row.cp_indices:
                check.fail(DAMAGED, "the delta's channel pooling indices differ from the registry")
            if logits_digest(probe.logits) != row.probe_logits_sha256:
                check.fail(DAMAGED, "the probe set's recorded logits differ from the registry")
            if source is None:
                check.fail(CHANGED, "not re-evaluated: the source changed")
                progress.advance(1)
                continue
            now = probe_logits(source, delta, probe.images, device, probe.batch_size)
            check.current_top1 = 100.0 * accuracy_counts(now, probe.labels)[0] / len(probe.labels)
            check.max_logit_diff = float((now - probe.logits).abs().max())
            check.bit_identical = torch.equal(now, probe.logits)
            verdict, problem = judge_logits(probe.logits, now, check.same_environment, strict)
            if check.current_top1 != row.probe_top1:
                check.fail(CHANGED, f"probe accuracy {row.probe_top1:.2f} % → {check.current_top1:.2f} %")
            elif problem is not None:
                check.fail(verdict, problem)
            elif check.status == "ok":
                check.verdict = verdict
            progress.advance(1)
    finally:
        progress.finish()
    measured = [c for c in checks if c.current_top1 is not None and c.recorded_top1 is not None]
    bwt = sum(c.current_top1 - c.recorded_top1 for c in measured) / len(measured) if measured else None
    return ForgettingReport(not source_problems, source_problems, checks, bwt, environment, strict)
