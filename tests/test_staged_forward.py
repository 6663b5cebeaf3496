"""The staged training forward (snowhub.models.staged, issue 15): the logits, loss, gradients and BatchNorm
statistics of ``task_logits`` bit for bit in float32, with the taps freed as soon as they are pooled and
far less kept for backward."""

from __future__ import annotations

import copy

import pytest
import torch

from snowhub.models.delta import Delta, DeltaShape
from snowhub.models.frozen import FrozenSource
from snowhub.models.network import task_logits
from snowhub.models.sources import get_spec
from snowhub.models.staged import StagedForward
from snowhub.training import SGDSteps, delta_param_groups


def _setup(name: str):
    spec = get_spec(name)
    torch.manual_seed(0)
    source = FrozenSource(spec, spec.build(), True)
    delta = Delta(DeltaShape.from_ratios(spec.block, spec.taps, 8, 1 / 8, 5))
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    return source, delta, images, torch.tensor([0, 1, 2, 4])


def _train(source, delta, forward, images, labels, steps=2):
    torch.manual_seed(3)  # the channel pooling noise
    sgd = SGDSteps(delta_param_groups(delta, 0.1, 10.0, 1e-4), 10, 1, torch.device("cpu"))
    delta.train()
    return [sgd.step(forward, images, labels) for _ in range(steps)]


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_lite0"])  # a traced source and a hooked one
def test_staged_training_is_bit_identical_to_task_logits(name):
    source, delta, images, labels = _setup(name)
    other = copy.deepcopy(delta)
    old = _train(source, delta, lambda x: task_logits(source, delta, x), images, labels)
    new = _train(source, other, StagedForward(source, other), images, labels)
    assert old == new
    a, b = delta.state_dict(), other.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key  # weights, BatchNorm statistics and counters, slots


def _saved_bytes(forward, images) -> int:
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward(images).sum().backward()
    return total


def test_staged_forward_keeps_a_fraction_for_backward():
    """Saved for backward: the pooled channels and the blocks' inputs, not every activation; the source's
    taps are never saved (they need no gradient) and are freed once pooled."""
    source, delta, images, _ = _setup("resnet18")
    delta.train()
    old = _saved_bytes(lambda x: task_logits(source, delta, x), images)
    new = _saved_bytes(StagedForward(source, delta), images)
    assert new < old / 2


def test_bfloat16_source_trains_in_float32_delta():
    """With the source in bfloat16 the delta still computes in float32; logits stay close to float32's."""
    source, delta, images, _ = _setup("resnet18")
    delta.eval()
    with torch.no_grad():
        exact = task_logits(source, delta, images)
    delta.train(False)
    with torch.enable_grad():
        low = StagedForward(source, delta, torch.bfloat16)(images)
    assert low.dtype == torch.float32 and low.requires_grad
    assert (low - exact).abs().max() < 0.05 * exact.abs().max() + 1e-3


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_lite0"])
def test_a_chunked_source_trains_the_same_delta_up_to_float_rounding(name):
    """`source_chunk`: the source runs on 3 images then 1, keeping only the selected channels; the delta then
    trains on the whole batch as before (same noisy top-K per step, same BatchNorm batch)."""
    source, delta, images, labels = _setup(name)
    other, start = copy.deepcopy(delta), copy.deepcopy(delta).state_dict()
    seen: list[int] = []
    first = next(m for m in source.modules() if isinstance(m, torch.nn.Conv2d))
    hook = first.register_forward_pre_hook(lambda _m, args: seen.append(len(args[0])))
    try:
        whole = _train(source, delta, StagedForward(source, delta), images, labels, steps=1)
        assert seen == [4]
        seen.clear()
        chunked = _train(source, other, StagedForward(source, other, source_chunk=3), images, labels, steps=1)
        assert seen == [3, 1]
    finally:
        hook.remove()
    assert chunked == pytest.approx(whole, rel=1e-5)
    a, b = delta.state_dict(), other.state_dict()
    for key in a:
        if a[key].is_floating_point():  # the step taken, to within 0.5 % of its largest change (4-image BatchNorm)
            assert (a[key] - b[key]).abs().max() <= 5e-3 * (a[key] - start[key]).abs().max() + 1e-6, key
        else:
            assert torch.equal(a[key], b[key]), key  # the same channels selected, in the same slots
