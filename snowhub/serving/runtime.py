"""The runtime seam: uint8 images ``(B, 3, S, S)`` in, every requested task's logits out.

:class:`~snowhub.serving.Predictor` (``snowhub predict``, ``Hub.predict``) and the HTTP server's batcher
run their forward passes through one :class:`Runtime`; choosing tasks, preprocessing, softmax and top-K
stay outside it. Two implementations:

* :class:`TorchRuntime`: PyTorch eager, the source once and every delta on its taps
  (:class:`~snowhub.models.network.MultiTaskNetwork`); the reference, and the only one on a GPU.
* :class:`~snowhub.serving.runtime_onnx.OnnxRuntime`: ONNX Runtime (CPU) on graphs exported once per
  artifact and checked on each task's probe set before use; a task whose graph cannot be used falls back
  to :class:`TorchRuntime` (or is refused, when asked strictly).

The forgetting checker never runs through a runtime: its promise is about the recorded PyTorch logits.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from snowhub.artifacts import Artifacts
from snowhub.models.network import MultiTaskNetwork
from snowhub.store import TaskRecord


@dataclass(frozen=True)
class RuntimeTask:
    """One task as a runtime answers it.

    Attributes:
        name: the task's name (``imagenet`` for the source's own head).
        record: its verified registry record, or None for the source's own head.
        classes: class names, in logit order.
        image_size: the size (px) its images are served at.
    """

    name: str
    record: TaskRecord | None
    classes: tuple[str, ...]
    image_size: int

    @property
    def key(self) -> tuple:
        """What identifies the task's model: (name, seq, delta sha256), or (name, None) for the source's head."""
        return (self.name, None) if self.record is None else (self.name, self.record.seq,
                                                               self.record.weights_file_sha256)


class Runtime:
    """What runs the forward passes (see the module docstring). Thread-safe.

    Attributes:
        name: ``torch`` or ``onnxruntime``.
        strict: a task this runtime cannot serve is refused (IntegrityError) rather than answered another way.
        source_passes: source forward passes run so far (one per :meth:`logits` call and runtime used).
        on_source_pass: called after each source pass (the server counts them in its metrics).
    """

    name = "runtime"
    strict = False

    def __init__(self) -> None:
        self.source_passes = 0
        self.on_source_pass: Callable[[], None] = lambda: None
        self._count_lock = threading.Lock()

    def logits(self, images: torch.Tensor, tasks: Sequence[RuntimeTask]) -> dict[str, torch.Tensor]:
        """Float32 logits ``(B, classes)`` on the CPU of every task in `tasks` for uint8 `images` ``(B, 3, S, S)``.

        Every task must be served at ``S`` px (the caller checks). Raises IntegrityError when a stored file
        changed since registration (never served silently).
        """
        raise NotImplementedError

    def prepare(self, tasks: Sequence[RuntimeTask], wait: bool = True) -> dict[str, str]:
        """Load (or build) what `tasks` need ahead of their first request (`wait=False`: in the background,
        returning at once). Returns task name → why it cannot be served by this runtime, for the tasks known
        by now not to be (a strict runtime refuses them; none here)."""
        return {}

    def runtimes(self, names: Sequence[str]) -> dict[str, str]:
        """Task name → the runtime its logits come from now."""
        return {name: self.name for name in names}

    def fallbacks(self, names: Sequence[str]) -> dict[str, str]:
        """Task name → why it is answered by PyTorch although another runtime was chosen (none here)."""
        return {}

    def close(self) -> None:
        """Stop background work (a runtime is not used after this)."""

    def _passed(self) -> None:
        with self._count_lock:
            self.source_passes += 1
        self.on_source_pass()


class TorchRuntime(Runtime):
    """PyTorch eager on the predictor's device: one multi-task network per task set, rebuilt when
    :class:`~snowhub.artifacts.Artifacts` reloads a model.

    Attributes:
        FUSE_DELTAS: serve the deltas of one shape as one batched computation (``snowhub.models.fused``,
            logits within 1e-5). Off: on a 2-core CPU its grouped convolutions measured 0.78× (5 tasks) and
            0.46× (20 tasks) the speed of running the deltas one by one; not yet measured on a GPU.
    """

    name = "torch"
    FUSE_DELTAS = False

    def __init__(self, artifacts: Artifacts):
        super().__init__()
        self.artifacts = artifacts
        self._lock = threading.Lock()
        # task set → (identity of the models it wraps, network)
        self._networks: dict[tuple, tuple[tuple[int, ...], MultiTaskNetwork]] = {}

    def network(self, tasks: Sequence[RuntimeTask]) -> MultiTaskNetwork:
        """The multi-task network of `tasks` (one image size; built once, deltas verified when loaded)."""
        source = self.artifacts.source()
        deltas = {t.name: self.artifacts.delta(t.record) for t in tasks if t.record is not None}
        key = tuple(t.key for t in tasks)
        models = (id(source), *(id(d) for d in deltas.values()))
        with self._lock:
            cached = self._networks.get(key)
            if cached is None or cached[0] != models:
                head = next((t.name for t in tasks if t.record is None), None)
                cached = self._networks[key] = (models, MultiTaskNetwork(source, deltas, head,
                                                                         fused=self.FUSE_DELTAS))
            return cached[1]

    @torch.no_grad()
    def logits(self, images: torch.Tensor, tasks: Sequence[RuntimeTask]) -> dict[str, torch.Tensor]:
        out = self.network(tasks)(images.to(self.artifacts.device))
        self._passed()
        return {t.name: out[t.name].float().cpu() for t in tasks}
