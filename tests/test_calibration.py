"""Channel pooling calibration: per-channel statistics of the frozen source, measured before training."""

import pytest
import torch

from snowhub.errors import DataError
from snowhub.models.delta import Delta, DeltaShape
from snowhub.models.frozen import FrozenSource
from snowhub.models.sources import get_spec
from snowhub.training import calibrate_channel_pooling


def _source_and_delta():
    spec = get_spec("resnet18")  # random weights: the statistics need a source, not a pretrained one
    source = FrozenSource(spec, spec.build(), has_head=False)
    shape = DeltaShape.from_ratios(spec.block, spec.taps, 8.0, 1 / 8, 3, 1e-3, 1.0)
    return source, Delta(shape)


def _batches(n_batches: int, size: int = 32):
    generator = torch.Generator().manual_seed(0)
    return [(torch.randint(0, 256, (4, 3, size, size), dtype=torch.uint8, generator=generator),
             torch.zeros(4, dtype=torch.long)) for _ in range(n_batches)]


def test_an_empty_loader_is_a_one_line_data_error_and_leaves_the_delta_uncalibrated():
    source, delta = _source_and_delta()
    before = {k: v.clone() for k, v in delta.state_dict().items()}
    with pytest.raises(DataError, match="^there are no training images to measure the source's channel "
                                        "statistics on$"):
        calibrate_channel_pooling(source, delta, [], torch.device("cpu"))
    assert all(torch.equal(v, before[k]) for k, v in delta.state_dict().items())


def test_statistics_are_those_of_the_source_taps_over_the_images_measured():
    source, delta = _source_and_delta()
    batches = _batches(3)
    calibrate_channel_pooling(source, delta, batches, torch.device("cpu"), max_images=8)  # whole batches: 8 of 12
    images = torch.cat([b[0] for b in batches[:2]])
    taps, _ = source(source.normalizer(images))
    for pool, tap in zip(delta.pools, taps):
        assert torch.allclose(pool.mean, tap.float().mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
