"""Dynamic batching: requests from every client queue up and are answered by one forward pass per batch.

A worker thread takes the first queued request, then waits up to ``max_wait_ms`` for others until the batch
holds ``max_batch_size`` images (Triton's dynamic batcher, Ray Serve's ``@serve.batch``). Each batch runs one
source forward pass per image size, with every task any of its requests asked for (SNOW, section 3.2), and
each request gets its own rows of its own tasks. Requests are validated before they are queued, so a bad
one never enters a batch; should a batched pass still fail (a file changed on disk meanwhile), each request
of that batch is run alone and only the ones that fail again get the error.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field

import torch

from snowhub.serving.http._metrics import Metrics
from snowhub.serving.predictor import Predictor
from snowhub.serving.runtime import RuntimeTask


@dataclass
class _Item:
    images: torch.Tensor  # uint8 (n, 3, S, S)
    tasks: tuple[RuntimeTask, ...]  # each version under its own name (name@version)
    future: Future = field(default_factory=Future)
    queued_at: float = field(default_factory=time.perf_counter)


def _settle(future: Future, result: object = None, error: BaseException | None = None) -> None:
    """Answer `future` unless its client went away meanwhile (a cancelled future takes no answer)."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass


class Batcher:
    """Queue → batched :meth:`Predictor.logits` calls on one worker thread.

    Args:
        predictor: the resident predictor (its models stay on its device).
        max_batch_size: most images per forward pass (1: every request alone, no batching).
        max_wait_ms: how long the first request of a batch waits for more (ms).
        metrics: where batch sizes and queue waits go (the runtime counts the source passes).
    """

    def __init__(self, predictor: Predictor, max_batch_size: int, max_wait_ms: float, metrics: Metrics):
        self.predictor = predictor
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.metrics = metrics
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._carry: _Item | None = None  # the request that did not fit in the last batch
        self._worker: threading.Thread | None = None
        self.passes = 0  # batched forward passes run (one per image size per batch)

    def start(self) -> None:
        self._worker = threading.Thread(target=self._loop, name="snowhub-batcher", daemon=True)
        self._worker.start()

    def stop(self) -> None:
        """Answer everything already queued, then stop the worker."""
        if self._worker is not None:
            self._queue.put(None)
            self._worker.join(timeout=60)
            self._worker = None

    def submit(self, images: torch.Tensor, tasks: Sequence[RuntimeTask]) -> Future:
        """Queue uint8 `images` ``(n, 3, S, S)`` for `tasks` (all served at ``S`` px, already verified; the
        catalog chose the version each name means, so the batch reads no registry).

        Returns a future of runtime task name → float32 logits ``(n, classes)`` on the CPU.
        """
        item = _Item(images, tuple(tasks))
        if self._worker is None:
            item.future.set_exception(RuntimeError("the server is shutting down"))
        else:
            self._queue.put(item)
        return item.future

    # -- the worker --------------------------------------------------------------------------------

    def _next_batch(self) -> list[_Item] | None:
        first = self._carry if self._carry is not None else self._queue.get()
        self._carry = None
        if first is None:
            return None
        batch, images = [first], len(first.images)
        deadline = time.perf_counter() + self.max_wait_s
        while images < self.max_batch_size:
            remaining = deadline - time.perf_counter()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None or images + len(item.images) > self.max_batch_size:
                self._carry = item  # the stop signal, or the first request of the next batch
                break
            batch.append(item)
            images += len(item.images)
        return batch

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            started = time.perf_counter()
            for item in batch:
                self.metrics.queue_wait.observe(started - item.queued_at)
            by_size: dict[tuple[int, int], list[_Item]] = {}
            for item in batch:
                by_size.setdefault(tuple(item.images.shape[-2:]), []).append(item)
            for items in by_size.values():
                self._answer(items)

    def _answer(self, items: list[_Item]) -> None:
        try:
            self._run(items)
        except Exception as error:  # noqa: BLE001 - one bad request must not fail the others: run each alone
            if len(items) == 1:
                _settle(items[0].future, error=error)
                return
            for item in items:
                try:
                    self._run([item])
                except Exception as alone:  # noqa: BLE001
                    _settle(item.future, error=alone)

    def _run(self, items: list[_Item]) -> None:
        tasks = list({t.name: t for item in items for t in item.tasks}.values())
        images = torch.cat([item.images for item in items]) if len(items) > 1 else items[0].images
        logits = self.predictor.logits(images, tasks)
        self.passes += 1
        self.metrics.batch_images.observe(len(images))
        self.metrics.batch_requests.observe(len(items))
        self.metrics.images.inc(len(images))
        start = 0
        for item in items:
            n = len(item.images)
            _settle(item.future, {t.name: logits[t.name][start:start + n] for t in item.tasks})
            start += n
