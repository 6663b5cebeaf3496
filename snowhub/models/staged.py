"""SNOW's training forward with only what backward needs kept (paper section 3.1: the source runs in an
inference-only mode, so training memory should be the delta's alone).

``task_logits`` runs the whole source, keeps every tap alive (at 224 px, ResNet-50's five taps are about
9 MB per image in float32), then runs the delta. :class:`StagedForward` computes the same logits with the
same random numbers and arithmetic, interleaved:

* the source runs stage by stage: as soon as it produces a tap, the delta's channel pooling takes its K
  channels and the delta stage that reads them runs; the full tap is then freed by the source's own
  graph (a traced source) or never stored (a hooked one);
* the channel pooling saves one tensor for backward, the K gathered channels in the tap's dtype
  (:class:`_PoolSelected`, a small autograd function), not a float32 copy per operation;
* every delta block is checkpointed (its input saved, its activations recomputed in backward); the
  recomputation runs BatchNorm with momentum 0 and restores its batch counter, so the running statistics
  are updated once per step, as before;
* optionally the source runs under bfloat16 autocast (:func:`source_autocast_dtype`): only in training,
  and only where the hardware has bfloat16 arithmetic; serving and the forgetting checker's probe logits
  keep the float32 source (``task_logits``, ``MultiTaskNetwork``).

In float32 the logits, the loss and the gradients are bit-identical to ``task_logits`` + backward
(``tests/test_staged_forward.py``).
"""

from __future__ import annotations

import contextlib
import threading

import torch
from torch import fx, nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from snowhub.models.channel_pooling import ChannelPooling
from snowhub.models.delta import Delta, match_size
from snowhub.models.frozen import FrozenSource, _HookExtractor

_CURRENT = threading.local()  # the tap consumer of the forward pass running in this thread


def source_autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bfloat16 where the source can run in it for training: CUDA with bfloat16 (sm80+) or a CPU whose
    oneDNN has native bfloat16 (AVX-512 BF16 / AMX); else None (float32)."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    try:
        return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None
    except (AttributeError, RuntimeError):
        return None


class _PoolSelected(torch.autograd.Function):
    """``(selected - shift) · scale`` per channel, in float32; saves only `selected` (in its own dtype).

    Inputs: selected ``(B, K, h, w)``, the K chosen channels of a tap (no gradient), shift ``(K,)`` float32
    (no gradient), scale ``(K,)`` float32 (gradient: it is ``inv_std · score``). Returns ``(B, K, h, w)`` float32.
    """

    @staticmethod
    def forward(ctx, selected, shift, scale):
        ctx.save_for_backward(selected, shift, scale)
        return (selected.float() - shift.view(1, -1, 1, 1)) * scale.view(1, -1, 1, 1)

    @staticmethod
    def backward(ctx, grad):
        selected, shift, scale = ctx.saved_tensors
        grad_scale = None
        if ctx.needs_input_grad[2]:
            centred = selected.float() - shift.view(1, -1, 1, 1)
            grad_scale = (grad * centred).sum(dim=(0, 2, 3))
        return None, None, grad_scale


def _pool(pool: nn.Module, tap: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
    """Channel-pool `tap` ``(B, N, h, w)``; with `idx` (the chunked source), `tap` is already ``tap[:, idx]``."""
    if not isinstance(pool, ChannelPooling):  # the benchmarks' subscription alternatives
        return pool(tap).float()
    if idx is None:
        idx = pool.select()
        tap = tap.index_select(1, idx)
    return _PoolSelected.apply(tap, pool.mean[idx], pool.inv_std[idx] * pool.scores[idx])


class _RecomputeOnce:
    """Context of a checkpointed block's recomputation: BatchNorm normalises with the batch statistics as
    in the forward pass but leaves its running statistics and counter as they are."""

    def __init__(self, block: nn.Module):
        self.bns = [m for m in block.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def __enter__(self):
        self.saved = [(bn.momentum, None if bn.num_batches_tracked is None else bn.num_batches_tracked.clone())
                      for bn in self.bns]
        for bn in self.bns:
            bn.momentum = 0.0
        return self

    def __exit__(self, *exc):
        for bn, (momentum, count) in zip(self.bns, self.saved):
            bn.momentum = momentum
            if count is not None:
                bn.num_batches_tracked.copy_(count)
        return False


def _checkpointed(module: nn.Module, fn, *inputs: torch.Tensor, saved_dtype: torch.dtype | None = None):
    """``fn(*inputs)`` recomputed in backward, only `inputs` kept (in `saved_dtype` when given: then `fn`
    sees them rounded to it and back to float32 in the forward pass too, so forward and recomputation agree);
    `module`'s BatchNorms update their running statistics once (:class:`_RecomputeOnce`)."""
    if not torch.is_grad_enabled():
        return fn(*inputs)
    if saved_dtype is not None:
        inputs = tuple(t.to(saved_dtype) for t in inputs)
        inner = fn
        fn = lambda *xs: inner(*(t.float() for t in xs))  # noqa: E731
    return checkpoint(fn, *inputs, use_reentrant=False,
                      context_fn=lambda: (contextlib.nullcontext(), _RecomputeOnce(module)))


def _run_block(block: nn.Module, x: torch.Tensor, recompute: bool,
               saved_dtype: torch.dtype | None = None) -> torch.Tensor:
    if not recompute or not torch.is_grad_enabled():
        return block(x)
    return _checkpointed(block, block, x, saved_dtype=saved_dtype)


class _Consumer:
    """Receives the taps in order and runs the delta on them (the delta's forward, split at the taps).

    `checkpoint`: None (keep every activation), ``"block"`` (each block's input kept, its activations
    recomputed in backward) or ``"stage"`` (only each stage's inputs kept: the previous stage's output and the
    tap's K selected channels; the whole stage recomputed in backward). `saved_dtype`: what those inputs are
    kept in (None: their own dtype)."""

    def __init__(self, delta: Delta, images: torch.Tensor, checkpoint: str | None, autocast_off: str | None,
                 saved_dtype: torch.dtype | None = None):
        self.delta, self.checkpoint, self.autocast_off = delta, checkpoint, autocast_off
        self.saved_dtype = saved_dtype
        self.next, self.logits = 0, None
        with self._delta_mode():
            if checkpoint == "stage":
                self.x = _checkpointed(delta.stem, delta.stem, images, saved_dtype=saved_dtype)
            else:
                self.x = images
                for block in delta.stem:
                    self.x = _run_block(block, self.x, checkpoint is not None, saved_dtype)

    def _delta_mode(self):
        stack = contextlib.ExitStack()
        stack.enter_context(torch.enable_grad())
        if self.autocast_off:  # the delta keeps float32 when only the source runs in bfloat16
            stack.enter_context(torch.autocast(self.autocast_off, enabled=False))
        return stack

    def __call__(self, index: int, tap: torch.Tensor, idx: torch.Tensor | None = None) -> None:
        if index != self.next:
            raise RuntimeError(f"tap {index} arrived before tap {self.next}")
        self.next += 1
        delta = self.delta
        with self._delta_mode():
            pool = delta.pools[index]
            if self.checkpoint == "stage" and index < len(delta.stages) and isinstance(pool, ChannelPooling):
                if idx is None:
                    idx = pool.select()
                    tap = tap.index_select(1, idx)
                self.x = self._stage(index, tap, idx)
                return
            pooled = _pool(pool, tap, idx)
            del tap
            x = torch.cat([match_size(self.x, pooled).to(pooled.dtype), pooled], dim=1)
            if index < len(delta.stages):
                for block in delta.stages[index]:
                    x = _run_block(block, x, self.checkpoint is not None, self.saved_dtype)
                self.x = x
            else:
                self.logits = delta.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
                self.x = None

    def _stage(self, index: int, selected: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Delta stage `index` on the previous stage's output and the tap's K `selected` channels, checkpointed
        as a whole (the channel pooling inside it)."""
        pool, stage = self.delta.pools[index], self.delta.stages[index]

        def run(x: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
            pooled = _PoolSelected.apply(chosen, pool.mean[idx], pool.inv_std[idx] * pool.scores[idx])
            return stage(torch.cat([match_size(x, pooled).to(pooled.dtype), pooled], dim=1))

        return _checkpointed(stage, run, self.x, selected, saved_dtype=self.saved_dtype)


def _emit(index: int, tap: torch.Tensor) -> None:
    _CURRENT.consumer(index, tap)


def _staged_graph(extractor: fx.GraphModule, names: list[str]) -> fx.GraphModule:
    """A copy of the traced source whose taps go to the current consumer as soon as they are computed
    (and are then freed by the graph), returning nothing."""
    old_out = next(n for n in extractor.graph.nodes if n.op == "output").args[0]
    tap_nodes = {old_out[name]: i for i, name in enumerate(names)}
    graph, env, emits = fx.Graph(), {}, []
    for node in extractor.graph.nodes:
        if node.op == "output":
            break
        env[node] = graph.node_copy(node, lambda n: env[n])
        if node in tap_nodes:
            emits.append(graph.call_function(_emit, (tap_nodes[node], env[node])))
    graph.output(tuple(emits))
    module = fx.GraphModule(extractor, graph)
    module.graph.eliminate_dead_code()  # the source's own head: not needed to train a delta
    module.recompile()
    return module


class _Collector:
    """The chunked source's consumer: keeps only each tap's selected channels, chunk after chunk."""

    def __init__(self, indices: list[torch.Tensor]):
        self.indices = indices
        self.parts: list[list[torch.Tensor]] = [[] for _ in indices]

    def __call__(self, index: int, tap: torch.Tensor) -> None:
        self.parts[index].append(tap.index_select(1, self.indices[index]))


class StagedForward:
    """The training forward of source + delta, stage by stage: uint8 images ``(B, 3, H, W)`` → logits
    ``(B, classes)``, as :func:`snowhub.models.network.task_logits` computes them (see the module docstring).

    Args:
        source: the frozen source. delta: the delta being trained (called directly, so not for a
            DistributedDataParallel wrapper).
        source_dtype: autocast dtype of the source's forward (``torch.bfloat16``), or None for float32.
        recompute: recompute the delta in backward instead of keeping its activations (costs one more delta
            forward), at the granularity `checkpoint` says.
        checkpoint: ``"block"`` (each block's input kept) or ``"stage"`` (only each delta stage's inputs kept,
            the previous stage's output and the tap's K selected channels: less memory, the same arithmetic).
        saved_dtype: keep those inputs in this dtype (``torch.bfloat16``: half their memory; the delta then
            reads them rounded to it in the forward pass too, so its logits differ by that rounding), or None.
        source_chunk: run the source on at most this many images at a time, keeping only each tap's K
            selected channels, then the delta on the whole batch (None: the whole batch at once). The
            source has no gradient and its BatchNorm uses running statistics, so each image's taps are the
            same in any chunk up to float rounding (the convolution kernels a library picks may depend on
            the batch size); its largest activations then live for one chunk only. Needs channel pooling on
            every tap (else the whole batch runs at once).
    """

    def __init__(self, source: FrozenSource, delta: Delta, source_dtype: torch.dtype | None = None,
                 recompute: bool = True, source_chunk: int | None = None, checkpoint: str = "block",
                 saved_dtype: torch.dtype | None = None):
        if checkpoint not in ("block", "stage"):
            raise ValueError(f"checkpoint must be 'block' or 'stage', got {checkpoint!r}")
        self.source, self.delta, self.source_dtype = source, delta, source_dtype
        self.checkpoint = checkpoint if recompute else None
        self.source_chunk, self.saved_dtype = source_chunk, saved_dtype if recompute else None
        names = [t.name for t in source.spec.taps]
        extractor = source.extractor
        self._hooked = isinstance(extractor, _HookExtractor)
        self._graph = None if self._hooked else _staged_graph(extractor, names)
        self._index = {name: i for i, name in enumerate(names)}

    def _sink(self, consumer):
        def sink(key: str, tap: torch.Tensor) -> None:
            if key in self._index:  # not the source's logits
                consumer(self._index[key], tap)
        return sink

    def _run_source(self, x: torch.Tensor, consumer) -> None:
        """The source's forward on `x`, each tap handed to `consumer` as soon as it is computed (as a
        ``(B, C, h, w)`` map: NHWC maps and ViT tokens converted, :meth:`Tap.to_map`)."""
        taps = self.source.spec.taps
        if any(t.layout != "NCHW" for t in taps):
            height, width, inner = x.shape[-2], x.shape[-1], consumer
            consumer = lambda index, tap: inner(index, taps[index].to_map(tap, height, width))  # noqa: E731
        previous = getattr(_CURRENT, "consumer", None)
        _CURRENT.consumer = consumer
        try:
            precision = (torch.autocast(x.device.type, dtype=self.source_dtype) if self.source_dtype is not None
                         else contextlib.nullcontext())
            with torch.no_grad(), precision:
                if self._hooked:
                    self.source.extractor.run_with_sink(x, self._sink(consumer))
                else:
                    self._graph(x)
        finally:
            _CURRENT.consumer = previous

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = self.source.normalizer(images)
        device_type = x.device.type
        autocast_off = device_type if self.source_dtype is not None and not torch.is_autocast_enabled(device_type) \
            else None
        chunk = self.source_chunk
        if chunk and len(x) > chunk and all(isinstance(p, ChannelPooling) for p in self.delta.pools):
            # One noisy top-K per tap for the whole step, drawn in tap order as the unchunked path draws them.
            collector = _Collector([pool.select() for pool in self.delta.pools])
            for part in x.split(chunk):
                self._run_source(part, collector)
            consumer = _Consumer(self.delta, x, self.checkpoint, autocast_off, self.saved_dtype)
            for index, parts in enumerate(collector.parts):
                selected = torch.cat(parts)
                collector.parts[index] = []
                consumer(index, selected, collector.indices[index])
                del selected
        else:
            consumer = _Consumer(self.delta, x, self.checkpoint, autocast_off, self.saved_dtype)
            self._run_source(x, consumer)
        if consumer.logits is None:
            raise RuntimeError("the source did not produce every tap")
        return consumer.logits
