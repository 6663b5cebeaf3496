"""benchmarks.research.pruned_copy: a delta's stages start as the source's blocks on a ranked channel subset."""

import pytest
import torch

from benchmarks.research.pruned_copy import _rank, _tap_rank, apply_pruned_copy
from snowhub.models.delta import Delta, DeltaShape
from snowhub.models.frozen import FrozenSource
from snowhub.models.sources import get_spec


@pytest.fixture(scope="module")
def source_and_delta():
    spec = get_spec("efficientnet_lite0")
    torch.manual_seed(0)
    source = spec.build().eval()  # random weights: the copy's bookkeeping does not depend on them
    with torch.no_grad():
        for m in source.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.normal_()  # distinct |γ|, so every ranking is unique
    torch.manual_seed(1)
    delta = Delta(DeltaShape.from_ratios(spec.block, spec.taps, 8, 1 / 8, num_classes=5))
    apply_pruned_copy(delta, source)
    return spec, source, delta


def test_first_block_of_a_stage_reads_the_source_block_on_the_ranked_channels(source_and_delta):
    spec, source, delta = source_and_delta
    dst, src = delta.stages[1][0], source._blocks[3]  # stage 2 mirrors _blocks.3-4; its input is tap _blocks.2
    hidden = _rank(src._bn1.weight)[:dst.conv[2].in_channels]
    out = _rank(src._bn2.weight)[:dst.conv[2].out_channels]
    stream = _rank(source._blocks[1]._bn2.weight)[:delta.shape.widths[1]]  # the space _blocks.1 wrote
    pooled = _tap_rank(source, "_blocks.2")[len(stream):len(stream) + delta.shape.ks[1]]
    inputs = torch.cat([stream, pooled.sort().values])
    assert torch.equal(dst.conv[0][0].weight, src._expand_conv.weight[hidden][:, inputs])
    assert torch.equal(dst.conv[1][0].weight, src._depthwise_conv.weight[hidden][..., 1:4, 1:4])  # 5×5 centre
    assert torch.equal(dst.conv[2].weight, src._project_conv.weight[out][:, hidden])
    assert torch.equal(dst.conv[3].weight, src._bn2.weight[out])
    # The pool's deterministic top-K is the next-ranked channels the stream does not carry.
    top_k = torch.topk(delta.pools[1].scores, delta.shape.ks[1]).indices
    assert sorted(top_k.tolist()) == sorted(pooled.tolist())


def test_stem_columns_keep_their_random_start_and_the_delta_still_runs(source_and_delta):
    spec, source, delta = source_and_delta
    torch.manual_seed(1)
    fresh = Delta(delta.shape)  # the same random start the fixture's delta had before the copy
    stem_width = delta.shape.widths[0]
    first = delta.stages[0][0].conv[0][0].weight
    assert torch.equal(first[:, :stem_width], fresh.stages[0][0].conv[0][0].weight[:, :stem_width])
    assert torch.equal(delta.classifier.weight, fresh.classifier.weight)
    images = torch.randn(2, 3, 64, 64)
    taps, _ = FrozenSource(spec, source, has_head=True)(images)
    assert delta(images, taps).shape == (2, 5)
