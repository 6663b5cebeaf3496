"""Horizontal fusion for serving (snowhub.models.fused, issue 15): the deltas of one shape run as one batched
computation with the logits of the unfused path within 1e-5; the forgetting checker's probe logits never
use it."""

from __future__ import annotations

import pytest
import torch

from snowhub.models.frozen import FrozenSource
from snowhub.models.sources import get_spec
from snowhub.models.delta import Delta, DeltaShape
from snowhub.models.fused import FusedDeltas, NotFusable
from snowhub.models.network import MultiTaskNetwork, task_logits


def _images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _random_delta(spec, classes: int, seed: int) -> Delta:
    """A delta with non-trivial BatchNorm statistics, standardisation and scores (as after training)."""
    torch.manual_seed(seed)
    delta = Delta(DeltaShape.from_ratios(spec.block, spec.taps, 8, 1 / 8, classes))
    with torch.no_grad():
        for m in delta.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
        for pool in delta.pools:
            pool.mean.normal_(0, 0.5)
            pool.inv_std.uniform_(0.5, 2.0)
        delta.classifier.weight.normal_(0, 0.05)
    delta.eval()
    delta.freeze_channel_pooling()
    return delta


def _source(name: str = "efficientnet_lite0") -> FrozenSource:
    """The architecture with seeded random weights (fusion does not depend on the source's weights)."""
    spec = get_spec(name)
    torch.manual_seed(0)
    return FrozenSource(spec, spec.build(), True)


@pytest.mark.parametrize("source_name", ["efficientnet_lite0", "resnet18"])
def test_fusion_of_many_deltas_with_different_classes(source_name):
    """Five deltas of one shape (3 to 7 classes), one group; logits equal the unfused within 1e-5
    (inverted residual and basic blocks)."""
    source = _source(source_name)
    deltas = {f"t{i}": _random_delta(source.spec, 3 + i, seed=i) for i in range(5)}
    images = _images(4, seed=1)
    with torch.no_grad():
        fused = MultiTaskNetwork(source, deltas, "imagenet", fused=True)
        plain = MultiTaskNetwork(source, deltas, "imagenet")
        a, b = fused(images), plain(images)
    assert len(fused.groups) == 1 and not fused._single
    assert list(a) == list(b)
    for name in b:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-5)
    assert [a[f"t{i}"].shape[1] for i in range(5)] == [3, 4, 5, 6, 7]


def test_unfusable_deltas_run_one_by_one():
    """A delta still training (channel pooling not frozen) cannot be fused: FusedDeltas refuses it and the
    network runs it unfused; deltas of different widths form separate groups."""
    source = _source()
    spec = source.spec
    training = Delta(DeltaShape.from_ratios(spec.block, spec.taps, 8, 1 / 8, 3)).eval()
    try:
        FusedDeltas([training])
        raise AssertionError("an unfrozen delta was fused")
    except NotFusable:
        pass
    wide = _random_delta(spec, 4, seed=7)
    narrow = Delta(DeltaShape.from_ratios(spec.block, spec.taps, 16, 1 / 8, 4)).eval()
    narrow.freeze_channel_pooling()
    network = MultiTaskNetwork(source, {"learning": training, "wide": wide, "narrow": narrow}, None, fused=True)
    assert network._single == ["learning"] and sorted(n for names, _ in network.groups for n in names) == ["narrow", "wide"]
    images = _images(2, seed=2)
    with torch.no_grad():
        out = network(images)
        for name, delta in (("wide", wide), ("narrow", narrow), ("learning", training)):
            torch.testing.assert_close(out[name], task_logits(source, delta, images), rtol=1e-5, atol=1e-5)
