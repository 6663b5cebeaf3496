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


def test_chunks_of_a_batch_measure_the_whole_batchs_statistics():
    """The low-memory path runs the source on a few images of each batch at a time; what it stores is the
    whole batch's statistics (to float rounding), and the chunks do not change how many images are measured."""
    source, whole = _source_and_delta()
    delta = Delta(whole.shape)
    batches = _batches(3)
    calibrate_channel_pooling(source, whole, batches, torch.device("cpu"), max_images=8)
    calibrate_channel_pooling(source, delta, batches, torch.device("cpu"), max_images=8, chunk=3)  # 3 + 1 per batch
    for a, b in zip(whole.pools, delta.pools):
        # std comes from E[x²] − mean²: its cancellation turns the sums' rounding into ~1e-4 relative (the std test below allows 1e-3)
        assert torch.allclose(a.mean, b.mean, rtol=1e-5, atol=1e-6) and torch.allclose(a.inv_std, b.inv_std, rtol=1e-3)
    images = torch.cat([b[0] for b in batches[:2]])  # 8 images, as without chunks; not the third batch
    taps, _ = source(source.normalizer(images))
    for pool, tap in zip(delta.pools, taps):
        assert torch.allclose(pool.mean, tap.float().mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)


def test_the_stored_std_is_the_taps_own_floored_at_a_tenth_of_its_median():
    source, delta = _source_and_delta()
    batches = _batches(2)
    calibrate_channel_pooling(source, delta, batches, torch.device("cpu"))
    taps, _ = source(source.normalizer(torch.cat([b[0] for b in batches])))
    floored = 0
    for pool, tap in zip(delta.pools, taps):
        std = tap.float().permute(1, 0, 2, 3).flatten(1).std(dim=1, unbiased=False)  # over images and pixels
        floor = max(1e-3, 0.1 * float(std.median()))
        assert torch.allclose(pool.inv_std, 1 / std.clamp_min(floor), rtol=1e-3), pool
        floored += int((std < floor).sum())
    assert floored > 0  # random uint8 images leave some ReLU channels nearly silent: the floor is exercised


def test_a_channel_that_hardly_moves_is_scaled_as_if_it_moved_a_tenth_of_the_median():
    _, delta = _source_and_delta()
    pool = delta.pools[0]
    std = torch.full((pool.channels,), 2.0)
    std[:3] = torch.tensor([0.0, 0.05, 0.3])  # median 2.0: floor 0.2
    pool.calibrate(torch.zeros(pool.channels), std)
    assert pool.inv_std[:4].tolist() == pytest.approx([5.0, 5.0, 1 / 0.3, 0.5])
    pool.calibrate(torch.zeros(pool.channels), torch.zeros(pool.channels))  # a silent tap: the absolute floor
    assert pool.inv_std.tolist() == pytest.approx([1e3] * pool.channels)
