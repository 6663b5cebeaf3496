"""The server's state, one per app: the read-only registry, resident models, tasks, batcher, metrics.

Routes get it through :func:`get_state` (a FastAPI dependency), so several apps (tests) can live in one
process. :meth:`ServerState.logits_of_files` is the one path from encoded images to per-task logits that both
``/v1/predict`` and OIP ``BYTES`` requests take.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import torch
from fastapi import Request

from snowhub.artifacts import Artifacts
from snowhub.device import available_cpus, pick_device
from snowhub.errors import IntegrityError, SnowhubError
from snowhub.names import SOURCE_TASK
from snowhub.serving.http._batcher import Batcher
from snowhub.serving.http._catalog import Catalog
from snowhub.serving.http._errors import ServeError
from snowhub.serving.http._decoding import PixelPool, decode_batches
from snowhub.serving.http._metrics import Metrics
from snowhub.serving.http._parser import BodyParser
from snowhub.serving.http._served import ServedTask
from snowhub.serving.http.config import ServeConfig
from snowhub.serving.predictor import Predictor
from snowhub.serving.preprocessing import group_by_size
from snowhub.serving.runtime_select import make_runtime
from snowhub.store import Registry


class ServerState:
    """Everything one running server holds (see the module docstring).

    Args:
        root: the hub directory (None: ``$SNOWHUB_HOME`` or ``./.snowhub``, or the one a ``registry_url``
            records); its registry is opened read-only (the server never writes to the hub).
        config: the validated :class:`ServeConfig`.
        registry_url: a registry behind a database URL (``--registry``); None = the hub's own ``hub.db``.

    Raises:
        HubNotFoundError, HubVersionError: no hub at `root`, or one this snowhub cannot read.
        TaskNotFoundError: a ``--tasks`` name the hub does not have.
    """

    def __init__(self, root: Path | None, config: ServeConfig, registry_url: str | None = None):
        self.config = config.validate()
        where = {} if registry_url is None else {"url": registry_url}
        self.registry = Registry.open(None if root is None else Path(root), read_only=True, **where)
        try:
            self.registry.source()  # a hub whose init never finished is not a hub
            for name in config.tasks or ():
                if name != SOURCE_TASK or self.registry.source().head_classes is None:
                    self.registry.get_task(name)  # TaskNotFoundError names the known tasks
            self.device = pick_device(config.device)
            self.artifacts = Artifacts(self.registry, self.device)
            threads = config.intra_op_threads(available_cpus()) if self.device.type == "cpu" else None
            self.runtime = make_runtime(config.runtime, self.artifacts, threads, serving=True)
            self.predictor = Predictor(self.artifacts, self.runtime)
            self.metrics = Metrics()
            self.runtime.on_source_pass = self.metrics.source_passes.inc
            self.catalog = Catalog(self.artifacts, config.tasks, config.poll_s, self._prepare)
            self.batcher = Batcher(self.predictor, config.max_batch_size, config.max_wait_ms, self.metrics)
        except BaseException:
            self.registry.close()
            raise
        self.ready = False
        self.parser = BodyParser()
        self.pixels = PixelPool(config.max_request_pixels)
        self.in_flight = 0  # inference requests admitted and not yet answered (see admitted)
        self._ratio: float | None = None
        self.source_problem: str | None = None
        self._loader: threading.Thread | None = None

    # -- life cycle --------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the batcher, the registry poll, and loading + verifying the source and every task."""
        self.batcher.start()
        self._loader = threading.Thread(target=self._load, name="snowhub-load", daemon=True)
        self._loader.start()

    def _load(self) -> None:
        try:
            self.catalog.refresh()
            # every task's graphs built (or read) and checked before the server says it is ready; a strict
            # runtime's refusals become the tasks' problems (503) when the catalog checks them again
            problems = self.catalog.problems()
            names = [n for n in self.catalog.names() if n not in problems]
            if self.predictor.prepare([self.catalog.known(n).runtime_task for n in names]):
                for name in names:
                    with contextlib.suppress(SnowhubError):
                        self.catalog.get(name)
            self.source_problem = None
        except SnowhubError as error:
            self.source_problem = str(error)
        self.ready = self.source_problem is None
        self.catalog.start_polling()

    def stop(self) -> None:
        """Answer what is queued, stop the poll and close the registry."""
        self.batcher.stop()
        self.catalog.stop_polling()
        if self._loader is not None:
            self._loader.join(timeout=30)
        self.runtime.close()
        self.registry.close()

    def _prepare(self, task: ServedTask) -> None:
        """The catalog's hook for a task it verifies: its runtime's graphs built off the request path; a
        strict runtime's refusal raises IntegrityError, so the task is unavailable (503) with the reason."""
        refused = self.predictor.prepare([task.runtime_task], wait=False)
        if self.runtime.strict and task.key in refused:
            raise IntegrityError(f"task {task.key!r} is not served by ONNX Runtime: {refused[task.key]}")

    def health(self) -> dict:
        """``/v2/health/ready``'s body: ready, the tasks served and, apart, those that are not and why."""
        try:
            self.artifacts.source()
            self.source_problem = None
        except SnowhubError as error:
            self.source_problem = str(error)
        if self.ready:
            self.catalog.refresh(at_most_every_s=self.config.poll_s)
        problems = self.catalog.problems()
        keys = {n: task.key for n in self.catalog.names() if n not in problems and (task := self.catalog.known(n))}
        served = list(keys)
        self.metrics.tasks_ready.set(len(served))
        self.metrics.tasks_unavailable.set(len(problems))
        runtimes, fallbacks = self.runtime.runtimes(list(keys.values())), self.runtime.fallbacks(list(keys.values()))
        body = {"ready": self.ready and self.source_problem is None, "tasks": served, "unavailable": problems,
                "runtimes": {n: runtimes[k] for n, k in keys.items() if k in runtimes},
                "fallbacks": {n: fallbacks[k] for n, k in keys.items() if k in fallbacks}}
        if self.source_problem:
            body["error"] = f"the source model is not served: {self.source_problem}"
        elif not self.ready:
            body["error"] = "still loading and verifying the source and tasks"
        return body

    # -- answering ---------------------------------------------------------------------------------

    def resize_ratio(self) -> float:
        """The source's eval resize ratio (fixed for a hub: its recorded preprocessing)."""
        if self._ratio is None:
            self._ratio = self.predictor.resize_ratio()
        return self._ratio

    async def logits_of_files(self, files: Sequence[tuple[str, bytes]], tasks: list[ServedTask]) -> dict[str, torch.Tensor]:
        """Logits of every task version (under its :attr:`~ServedTask.key`) for encoded image `files` (name,
        bytes): decoded within the pixel budgets and preprocessed as ``Predictor.predict`` does, in one worker
        thread hop (:func:`decode_batches`), then one queued item per image size, answered by the batcher.

        Raises:
            ServeError: an image that does not decode (400) or is over a budget (413); no answer in time (503).
        """
        by_size = group_by_size(tasks)
        batches = await asyncio.to_thread(decode_batches, files, list(by_size), self.resize_ratio(), self.config,
                                          self.pixels)
        answers = await asyncio.gather(*(self.submit(batch, group) for batch, group in zip(batches, by_size.values())))
        return {name: out for answer in answers for name, out in answer.items()}

    @asynccontextmanager
    async def admitted(self) -> AsyncIterator[None]:
        """Count an inference request in for the block; 503 with ``Retry-After`` when ``--max-queue`` are in."""
        if self.in_flight >= self.config.max_queue:
            raise ServeError(503, f"the server is busy: {self.in_flight} requests are in its queue (--max-queue "
                                  f"{self.config.max_queue}); retry after a second", {"Retry-After": "1"})
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    def body_limit(self) -> int:
        """The largest request body any route takes now (for the largest image size served)."""
        sizes = [t.image_size for t in (self.catalog.known(n) for n in self.catalog.names()) if t is not None]
        return self.config.max_request_bytes(max(sizes, default=224))

    async def submit(self, images: torch.Tensor, tasks: list[ServedTask]) -> dict[str, torch.Tensor]:
        """Queue uint8 `images` ``(n, 3, S, S)`` for `tasks` (served at ``S`` px) and wait for the batch: each
        version's logits under its :attr:`~ServedTask.key`."""
        future = self.batcher.submit(images, [t.runtime_task for t in tasks])
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.config.request_timeout_s)
        except asyncio.TimeoutError:
            raise ServeError(503, f"no answer within {self.config.request_timeout_s:.0f} s; "
                                  "the server is overloaded, retry later") from None


def get_state(request: Request) -> ServerState:
    """FastAPI dependency: the state of the app answering `request`."""
    return request.app.state.snowhub
