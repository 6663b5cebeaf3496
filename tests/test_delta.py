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
