"""ONNX Runtime as the runtime: per-artifact graphs, checked before use, one source pass per batch.

For each image size the source is exported once (images → normalised images and taps, plus the source's
own head at the size it is served at) and each task's delta once (taps → logits), with the exporter of
:mod:`snowhub.export.artifact_graphs`, and kept in the hub's graph cache (:mod:`snowhub.export.graph_cache`,
keyed by the sha256 of what they were built from). One inference session per graph is kept and reused; a
batch runs the source session once and feeds its outputs to every requested delta session (SNOW's single
source pass, section 3.2).

**Checked before use.** A source graph is compared with the PyTorch source on fixed images (every tap
within ``RTOL`` of the tap's largest value, the head's logits within the export tolerance with the same
top-1); a delta graph is re-run on its task's probe set (alone and as batches) and every logit must be
within the export tolerance of the recorded probe logits (``|ort − recorded| ≤ ATOL + RTOL × the image's
largest |recorded logit|``), with every probe label (top-1) equal. A cached graph that fails is thrown away
and built again; a graph built afresh that fails is not used: the task is answered by PyTorch with the reason
(:meth:`OnnxRuntime.fallbacks`), or, when the runtime is strict, refused (IntegrityError).

Files are verified on every use exactly as PyTorch's path does (:class:`~snowhub.artifacts.Artifacts`): a
delta file changed on disk is refused even though its graph is cached.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from snowhub.artifacts import Artifacts
from snowhub.errors import IntegrityError
from snowhub.export.artifact_graphs import DEFAULT_OPSET, LOGITS, export_delta_graph, export_source_graph, tap_names
from snowhub.export.graph_cache import CACHE_DIR, CachedGraph, GraphCache
from snowhub.export.onnx_file import ATOL, INPUT_NAME, RTOL, within_tolerance
from snowhub.serving.runtime import Runtime, RuntimeTask, TorchRuntime

GRAPHS = 1  # the layout of the per-artifact graphs; part of every cache key
CHECK_BATCH = 32  # probe images per checking pass
BUILDS = ("now", "background", "never")


class _Unusable(Exception):
    """A graph that cannot be served (the message says why)."""


@dataclass(frozen=True)
class _State:
    key: tuple
    runtime: str  # "onnxruntime" or "torch"
    reason: str = ""


def _session(model: bytes, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _run(session, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    wanted = {i.name for i in session.get_inputs()}
    return dict(zip(names, session.run(names, {k: v for k, v in feeds.items() if k in wanted})))


def _logits_problem(got: np.ndarray, want: np.ndarray, what: str) -> str | None:
    """Why logits `got` ``(B, classes)`` are not `want`'s, or None: every logit within the export tolerance
    (:func:`~snowhub.export.onnx_file.within_tolerance`) and the same top-1 for every image."""
    if got.shape != want.shape:
        return f"{what}: logits of shape {got.shape}, expected {want.shape}"
    if not within_tolerance(got, want):
        return (f"{what}: logits differ by up to {float(np.abs(got - want).max()):.3g} "
                f"(> atol {ATOL} + rtol {RTOL}·largest |logit|)")
    if not np.array_equal(got.argmax(1), want.argmax(1)):
        return f"{what}: another top-1 on {int((got.argmax(1) != want.argmax(1)).sum())} images"
    return None


class OnnxRuntime(Runtime):
    """ONNX Runtime (CPU provider) on the hub's per-artifact graphs (see the module docstring).

    Args:
        artifacts: the hub's verified models (on the CPU); PyTorch's answers come from them too.
        threads: intra-op threads of every session (``serve --threads``); None = torch's thread count.
        strict: refuse a task whose graph cannot be used (IntegrityError) instead of answering it by PyTorch.
        build: ``now``: a task's graphs are built (or read and checked) before its first answer;
            ``background``: built on a worker thread, PyTorch answers meanwhile (a strict runtime refuses
            the task with IntegrityError "retry in a few seconds" instead, so no batch waits for a build);
            ``never``: only graphs already in the cache are used.
    """

    name = "onnxruntime"

    def __init__(self, artifacts: Artifacts, threads: int | None = None, strict: bool = False, build: str = "now"):
        super().__init__()
        import onnxruntime  # noqa: F401 - fail here, not on the first request

        if build not in BUILDS:
            raise ValueError(f"build must be one of {BUILDS}, got {build!r}")
        self.artifacts = artifacts
        self.threads = threads if threads is not None else torch.get_num_threads()
        self.strict = strict
        self.build = build
        self.cache = GraphCache(artifacts.registry.layout.root / CACHE_DIR)
        self.reference = TorchRuntime(artifacts)
        self.reference.on_source_pass = self._passed
        self._sources: dict[tuple[int, bool], object] = {}  # (size, head) → session, or why not
        self._deltas: dict[tuple, object] = {}  # task key → session, or why not
        self._states: dict[str, _State] = {}  # task name → how it is answered now
        self._pending: dict[tuple, Future] = {}
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self.rebuilt: list[str] = []  # cached graphs found damaged, foreign or wrong, and why (rebuilt unless "never")

    # -- answering ---------------------------------------------------------------------------------

    def logits(self, images: torch.Tensor, tasks: Sequence[RuntimeTask]) -> dict[str, torch.Tensor]:
        ready = [t for t in tasks if self._usable(t)]
        rest = [t for t in tasks if all(t.name != r.name for r in ready)]
        out: dict[str, torch.Tensor] = {}
        if ready:
            self.artifacts.source()  # the files are checked on every use, as on PyTorch's path
            for task in ready:
                if task.record is not None:
                    self.artifacts.delta(task.record)
            size = images.shape[-1]
            feeds = _run(self._sources[self._source_key(size)], {INPUT_NAME: np.ascontiguousarray(images.numpy())})
            self._passed()
            for task in ready:
                logits = feeds[LOGITS] if task.record is None else _run(self._deltas[task.key], feeds)[LOGITS]
                out[task.name] = torch.from_numpy(logits)
        if rest:
            out.update(self.reference.logits(images, rest))
        return {t.name: out[t.name] for t in tasks}

    def _usable(self, task: RuntimeTask) -> bool:
        state = self._states.get(task.name)
        if state is None or state.key != task.key:
            future = self._submit(task)
            if self.build == "background":
                if self.strict:  # never PyTorch, and never a batch held up while a graph is built
                    raise IntegrityError(f"task {task.name!r} is not served yet: its ONNX Runtime graph is being "
                                         "built and checked; retry in a few seconds")
                return False
            future.result()
            state = self._states[task.name]
        if state.runtime != self.name and self.strict:
            raise IntegrityError(f"task {task.name!r} is not served by ONNX Runtime: {state.reason}")
        return state.runtime == self.name

    # -- preparing ---------------------------------------------------------------------------------

    def prepare(self, tasks: Sequence[RuntimeTask], wait: bool = True) -> dict[str, str]:
        """Read or build and check the graphs of `tasks` on the builder thread (`wait`: until done). Returns
        task name → why its graphs cannot be used, for the tasks known by now not to be."""
        futures = [self._submit(t) for t in tasks if (s := self._states.get(t.name)) is None or s.key != t.key]
        if wait:
            for future in futures:
                future.result()
        return {t.name: s.reason for t in tasks
                if (s := self._states.get(t.name)) is not None and s.key == t.key and s.runtime != self.name}

    def runtimes(self, names: Sequence[str]) -> dict[str, str]:
        return {n: self._states[n].runtime for n in names if n in self._states}

    def fallbacks(self, names: Sequence[str]) -> dict[str, str]:
        out = {n: self._states[n].reason for n in names if n in self._states and self._states[n].runtime != self.name}
        with self._lock:
            building = {key[0] for key, future in self._pending.items() if not future.done()}
        return out | {n: "its ONNX Runtime graph is being built and checked" for n in names
                      if n in building and n not in self._states}

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def _submit(self, task: RuntimeTask) -> Future:
        with self._lock:
            future = self._pending.get(task.key)
            if future is None or (future.done() and self._states.get(task.name, _State(None, "")).key != task.key):
                if self._executor is None:
                    threads = torch.get_num_threads()
                    # torch in a new thread would start an OpenMP team of every core: keep the process's size
                    self._executor = ThreadPoolExecutor(1, "snowhub-graphs", lambda: torch.set_num_threads(threads))
                future = self._pending[task.key] = self._executor.submit(self._prepare_one, task)
            return future

    def _prepare_one(self, task: RuntimeTask) -> None:
        try:
            self._source_session(task.image_size)
            if task.record is not None:
                self._delta_session(task)
            state = _State(task.key, self.name)
        except _Unusable as why:
            state = _State(task.key, "torch", str(why))
        except Exception as error:  # noqa: BLE001 - the exporter's and ONNX Runtime's errors are many kinds
            first = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
            state = _State(task.key, "torch", f"its ONNX Runtime graph could not be prepared: {first}")
        self._states[task.name] = state

    def _source_key(self, size: int) -> tuple[int, bool]:
        record = self.artifacts.source_record()
        return size, record.head_classes is not None and size == int(record.preprocessing["image_size"])

    def _source_session(self, size: int):
        key = self._source_key(size)
        if key not in self._sources:
            record, source = self.artifacts.source_record(), self.artifacts.source()
            built_from = {"graph": "source", "layout": GRAPHS, "exporter": _exporter(), "source": record.name,
                          "weights_sha256": record.weights_file_sha256, "taps": record.taps,
                          "preprocessing": record.preprocessing, "image_size": size, "head": key[1]}
            try:
                self._sources[key] = self._load(built_from, lambda p: export_source_graph(source, size, key[1], p),
                                                lambda s: self._check_source(s, size), f"the source at {size} px")
            except _Unusable as why:
                self._sources[key] = str(why)
        found = self._sources[key]
        if isinstance(found, str):
            raise _Unusable(found)
        return found

    def _delta_session(self, task: RuntimeTask):
        if task.key not in self._deltas:
            record, source = task.record, self.artifacts.source()
            delta = self.artifacts.delta(record)
            built_from = {"graph": "delta", "layout": GRAPHS, "exporter": _exporter(),
                          "weights_sha256": record.weights_file_sha256,
                          "delta_shape": record.hyperparams["delta_shape"], "cp_indices": record.cp_indices,
                          "image_size": task.image_size}
            try:
                self._deltas[task.key] = self._load(
                    built_from, lambda p: export_delta_graph(delta, source, task.image_size, p),
                    lambda s: self._check_delta(s, task), f"task {task.name!r}")
            except _Unusable as why:
                self._deltas[task.key] = str(why)
        found = self._deltas[task.key]
        if isinstance(found, str):
            raise _Unusable(found)
        return found

    def _load(self, built_from: dict, export, check, what: str):
        """A checked session of the graph of `built_from`: from the cache, else (or when the cached one fails
        its check: damaged, foreign or wrong, it is never used) exported again. Raises _Unusable with the
        reason when none can be used."""
        graph, why = self.cache.read(built_from)
        if graph is not None:
            session, why = self._checked(graph, check)
            if why is None:
                return session
            self.cache.discard(built_from)
        if why != "not cached":
            self.rebuilt.append(f"{what}: {why}")
        if self.build == "never":
            raise _Unusable(f"the hub's cache holds no usable ONNX Runtime graph of {what} ({why}); `snowhub serve` "
                            "or `--runtime onnxruntime` builds one")
        session, problem = self._checked(self.cache.build(built_from, export), check)
        if problem is not None:
            raise _Unusable(f"the ONNX Runtime graph of {what} failed its check: {problem}")
        return session

    def _checked(self, graph: CachedGraph, check) -> tuple[object, str | None]:
        try:
            session = _session(graph.model, self.threads)
        except Exception as error:  # noqa: BLE001 - ONNX Runtime refuses a bad file with its own error kinds
            return None, f"ONNX Runtime cannot load it ({(str(error).splitlines() or [''])[0][:200]})"
        return session, check(session)

    @torch.no_grad()
    def _check_source(self, session, size: int) -> str | None:
        generator = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8, generator=generator)
        source = self.artifacts.source()
        x = source.normalizer(images)
        taps, head = source(x)
        got = _run(session, {INPUT_NAME: images.numpy()})
        want = {"x": x, **dict(zip(tap_names(len(taps)), taps))}
        for name, tensor in want.items():
            reference = tensor.numpy()
            if name not in got or got[name].shape != reference.shape:
                return f"output {name} is missing or of another shape"
            scale = float(np.abs(reference).max())
            if float(np.abs(got[name] - reference).max()) > ATOL + RTOL * scale:
                return f"{name} differs from PyTorch's by more than rtol {RTOL} of its largest value {scale:.3g}"
        if LOGITS in got:
            return _logits_problem(got[LOGITS], head.float().numpy(), "the source's head")
        return None

    def _check_delta(self, session, task: RuntimeTask) -> str | None:
        probe = self.artifacts.probe(task.record)
        source = self._source_session(task.image_size)
        images, want = probe.images, probe.logits.float().numpy()
        runs = [slice(0, 1)] + [slice(i, i + CHECK_BATCH) for i in range(0, len(images), CHECK_BATCH)]
        for part in runs:
            feeds = _run(source, {INPUT_NAME: np.ascontiguousarray(images[part].numpy())})
            problem = _logits_problem(_run(session, feeds)[LOGITS], want[part],
                                      f"probe images {part.start}..{min(part.stop, len(images)) - 1}")
            if problem is not None:
                return f"on its probe set, {problem}"
        return None


def _exporter() -> str:
    return f"torch {torch.__version__} dynamo, opset {DEFAULT_OPSET}"
