"""The delta is the source's architecture narrowed, wired to every tap at the matching resolution."""

import pytest
import torch

from snowhub.models.delta import Delta, DeltaShape
from snowhub.models.sources import SOURCES, get_spec


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_delta_consumes_every_tap_of_each_source(name):
    spec = get_spec(name)
    shape = DeltaShape.from_ratios(spec.block, spec.taps, 8, 1 / 8, 7)
    delta = Delta(shape).eval()
    size = 64
    images = torch.randn(2, 3, size, size)
    taps = [torch.randn(2, t.channels, size // t.stride, size // t.stride) for t in spec.taps]
    assert delta(images, taps).shape == (2, 7)
    # K = N/8 for the stages; the classifier reads the whole last tap unless asked for the paper's N/8.
    assert shape.ks == tuple(round(t.channels / 8) for t in spec.taps[:-1]) + (spec.taps[-1].channels,)
    paper = DeltaShape.from_ratios(spec.block, spec.taps, 8, 1 / 8, 7, head_k_ratio=1 / 8)
    assert paper.ks == tuple(round(t.channels / 8) for t in spec.taps)
    assert all(w >= t.channels / 8 for w, t in zip(shape.widths, spec.taps))


def test_delta_is_a_small_fraction_of_the_source():
    spec = get_spec("resnet50")
    delta = Delta(DeltaShape.from_ratios(spec.block, spec.taps, 8, 1 / 8, 200))
    source_params = sum(p.numel() for p in spec.build().parameters())
    delta_params, cp_params = delta.parameter_counts()
    assert cp_params == sum(t.channels for t in spec.taps)  # one score per source channel per tap
    assert delta_params < 0.05 * source_params


def test_shape_round_trips_through_the_registry_format():
    spec = get_spec("mobilenet_v2")
    shape = DeltaShape.from_ratios(spec.block, spec.taps, 4, 1 / 16, 5, noise_var=1e-8)
    assert DeltaShape.from_dict(shape.to_dict()) == shape


# -- the block-family registry and deltas for taps of any reductions (issue 25) ----------------------------

def test_the_family_is_the_first_whose_source_blocks_appear_else_basic():
    from torchvision.models import mobilenet_v2, resnet18, resnet50

    from snowhub.models.blocks import DEFAULT_FAMILY, dispatch_family, get_family

    assert dispatch_family(resnet50().modules()) == "bottleneck"
    assert dispatch_family(resnet18().modules()) == "basic"
    assert dispatch_family(mobilenet_v2().modules()) == "inverted_residual"
    assert dispatch_family([torch.nn.Conv2d(3, 8, 3), torch.nn.LayerNorm(8)]) == DEFAULT_FAMILY == "basic"
    both = [*resnet50().modules(), *mobilenet_v2().modules()]
    assert dispatch_family(both) == "bottleneck"  # first match wins
    with pytest.raises(ValueError, match="unknown block family 'mlp'"):
        get_family("mlp")


@pytest.mark.parametrize("strides, size", [((16, 16, 16, 16), 64), ((14, 14, 14), 56), ((4, 8, 16, 32), 64)])
def test_a_delta_follows_the_taps_reductions_stride_1_stages_for_a_vit(strides, size):
    from snowhub.models.sources import Tap

    taps = tuple(Tap(f"blocks.{i}", 48, s, 2) for i, s in enumerate(strides))
    delta = Delta(DeltaShape.from_ratios("basic", taps, 8, 1 / 8, 3)).eval()
    assert [stage[0].conv1.stride for stage in delta.stages] == [(b // a, b // a) for a, b in zip(strides, strides[1:])]
    images = torch.randn(2, 3, size, size)
    maps = [torch.randn(2, 48, size // s, size // s) for s in strides]
    assert delta(images, maps).shape == (2, 3)
    assert delta.stem(images).shape[-1] == size // strides[0]  # log2(16) = 4 stride-2 convs, or one 14×14 patchify


def test_a_map_that_the_source_rounds_differently_is_pooled_to_the_taps_size():
    from snowhub.models.sources import Tap

    taps = (Tap("a", 16, 4, 1), Tap("b", 32, 8, 1))
    delta = Delta(DeltaShape.from_ratios("basic", taps, 8, 1 / 8, 3)).eval()
    images = torch.randn(1, 3, 36, 36)  # the delta's stride-2 convs give 9 → 5; a 2×2-downsampling source gives 4
    assert delta(images, [torch.randn(1, 16, 9, 9), torch.randn(1, 32, 4, 4)]).shape == (1, 3)
