"""The opt-in source feature cache (`add-task --cache-features`): what it holds, what training reads from it,
and that it never outlives the add-task that made it (success, refusal, interrupt, full disk)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import FAST, pretrained_source
from fixtures.hubkit import file_size_limit, snapshot
from snowhub import Hub, TrainConfig
from snowhub.data import discover, eval_transform, make_loader
from snowhub.device import pick_device
from snowhub.errors import ConfigError
from snowhub.progress import SilentProgress
from snowhub.store import HubWriteError, tensor_digest
from snowhub.training import train_delta
from snowhub.training.feature_cache import build_feature_cache
from test_cli import run

CPU = torch.device("cpu")
CACHED = FAST | {"feature_cache": True, "hflip": False, "epochs": 3}


@pytest.fixture(scope="module")
def source():
    return pretrained_source()


def _build(source, samples, directory, limit=1 << 30, progress=None):
    return build_feature_cache(source, samples, eval_transform(32), 16, directory, limit, CPU, 0,
                               progress or SilentProgress())


def test_the_cache_holds_the_unaugmented_images_and_the_sources_taps_in_float16(source, fashion_dir, tmp_path):
    split = discover(fashion_dir)
    with _build(source, split.train, tmp_path) as cache:
        assert sorted(p.name.split(".", 1)[1] for p in tmp_path.iterdir()) == sorted(
            ["images.npy"] + [f"tap{i}.npy" for i in range(len(source.taps))])
        loader = make_loader(split.train, eval_transform(32), 16, shuffle=False, seed=0, num_workers=0, device=CPU)
        seen = 0
        for images, labels in loader:
            rows = slice(seen, seen + len(labels))
            assert torch.equal(torch.from_numpy(np.array(cache.images[rows])), images)
            assert torch.equal(cache.labels[rows], labels)
            taps, _ = source(source.normalizer(images))
            for cached, tap in zip(cache.taps, taps):
                assert cached.dtype == np.float16 and cached.shape[1:] == tap.shape[1:]
                assert torch.equal(torch.from_numpy(np.array(cached[rows])), tap.half())
            seen += len(labels)
        assert seen == len(cache) == 120
        per_image = 3 * 32 * 32 + 2 * sum(t.channels * (32 // t.stride) ** 2 for t in source.taps)
        headers = len(cache.paths) * 128  # numpy's version 1.0 header: 128 bytes for these shapes
        assert cache.nbytes == sum(p.stat().st_size for p in cache.paths) == len(cache) * per_image + headers
    assert list(tmp_path.iterdir()) == []  # closed: its files are gone


def test_batches_visit_each_cached_image_once_per_epoch_in_a_seeded_order(source, fashion_dir, tmp_path):
    with _build(source, discover(fashion_dir).train[:50], tmp_path) as cache:
        def epochs(seed):
            generator = torch.Generator().manual_seed(seed)
            return [[(idx.tolist(), labels.tolist()) for idx, labels in cache.batches(16, generator)]
                    for _ in range(2)]

        first, second = epochs(0)
        for epoch in (first, second):
            assert len(epoch) == cache.steps(16) == 3  # 50 images: the last partial batch is dropped
            flat = [i for idx, _ in epoch for i in idx]
            assert len(set(flat)) == 48 and all(idx == sorted(idx) for idx, _ in epoch)
            assert all(labels == cache.labels[idx].tolist() for idx, labels in epoch)
        assert first != second and epochs(0) == [first, second] and epochs(1) != [first, second]
        images, taps = cache.read(torch.tensor([3, 7]), CPU)
        assert images.dtype == torch.uint8 and images.shape == (2, 3, 32, 32)
        assert all(t.dtype == torch.float32 and torch.equal(t, torch.from_numpy(np.array(c[[3, 7]])).float())
                   for t, c in zip(taps, cache.taps))


def test_a_cache_over_its_limit_is_refused_before_anything_is_written(source, fashion_dir, tmp_path):
    with pytest.raises(ConfigError) as caught:
        _build(source, discover(fashion_dir).train, tmp_path, limit=100 << 10)
    message = str(caught.value)
    assert "over `cache_limit_gib`" in message and "--" not in message
    assert "120 images" in message and "\n" not in message
    assert list(tmp_path.iterdir()) == []


class _InterruptAfter(SilentProgress):
    def __init__(self, steps: int):
        self.left = steps

    def advance(self, steps=1, **info):
        self.left -= steps
        if self.left == 0:
            raise KeyboardInterrupt


def test_an_interrupt_while_caching_deletes_the_partial_files(source, fashion_dir, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _build(source, discover(fashion_dir).train, tmp_path, progress=_InterruptAfter(3))
    assert list(tmp_path.iterdir()) == []


def test_cached_training_runs_the_source_once_per_training_image_and_learns(source, fashion_dir, tmp_path):
    split = discover(fashion_dir)
    counted: list[int] = []
    hook = source.register_forward_pre_hook(lambda _m, args: counted.append(len(args[0])))
    try:
        cached = train_delta(source, split, TrainConfig(**CACHED), CPU, cache_dir=tmp_path)
        cached_images = sum(counted)
        counted.clear()
        plain = train_delta(source, split, TrainConfig(**(CACHED | {"feature_cache": False})), CPU)
    finally:
        hook.remove()
    calibration, validation = 120, 3 * 36  # calibration reads up to 512 images: all 120
    assert cached_images == 120 + calibration + validation
    assert sum(counted) == 3 * (120 // 16) * 16 + calibration + validation
    assert list(tmp_path.iterdir()) == []
    assert cached.val.top1 >= 80.0 and plain.val.top1 >= 80.0  # chance is 33 %
    assert 0 < cached.cache_seconds < cached.train_seconds and plain.cache_seconds == 0
    assert len(cached.step_losses) == len(plain.step_losses) == 3 * 7
    again = train_delta(source, split, TrainConfig(**CACHED), CPU, cache_dir=tmp_path)  # reproducible on CPU
    assert tensor_digest(again.delta.state_dict()) == tensor_digest(cached.delta.state_dict())
    assert tensor_digest(plain.delta.state_dict()) != tensor_digest(cached.delta.state_dict())


def test_add_task_with_the_cache_records_it_and_leaves_staging_empty(hub_copy, fashion_dir):
    with Hub.open(hub_copy) as hub:
        info = hub.add_task("cached", fashion_dir, TrainConfig(**CACHED))
        row = hub.registry.get_task("cached")
        answers = hub.predict([sorted((fashion_dir / "val" / "Bag").iterdir())[0]], tasks=["cached"])
    assert row.hyperparams["feature_cache"] is True and row.hyperparams["hflip"] is False
    assert 0 < row.metrics["cache_seconds"] < row.train_seconds and info.val_top1 >= 80.0
    assert answers[0].tasks["cached"][0][0] == "Bag"
    assert list((hub_copy / "staging").iterdir()) == []


def test_a_full_disk_while_caching_is_a_one_line_error_and_changes_nothing(hub_copy, fashion_dir):
    before = snapshot(hub_copy)
    with Hub.open(hub_copy) as hub:
        with file_size_limit(64 * 1024), pytest.raises(HubWriteError) as caught:  # the taps need ~1.8 MB
            hub.add_task("cached", fashion_dir, TrainConfig(**CACHED))
    message = str(caught.value)
    assert "\n" not in message and "File too large" in message and "staging" in message
    assert snapshot(hub_copy) == before and list((hub_copy / "staging").iterdir()) == []


@pytest.mark.parametrize("args,message", [
    (["--cache-features", "--hflip"], "drop --hflip"),
    (["--cache-features", "--low-memory"], "--low-memory"),
    (["--cache-features", "--cache-limit", "0"], "--cache-limit"),
    (["--cache-features", "--nproc-per-node", "2", "--device", "cpu"], "one process"),
    (["--source-precision", "bfloat16", "--nproc-per-node", "2", "--device", "cpu"], "one process"),
    (["--source-precision", "float16"], "--source-precision must be"),
    (["--cache-features", "--source-precision", "bfloat16"], "drop --source-precision"),
])
def test_cache_options_that_cannot_work_are_one_line_errors(hub_copy, fashion_dir, args, message):
    before = snapshot(hub_copy)
    result = run("add-task", "x", "--data", str(fashion_dir), *args, hub=hub_copy)
    assert result.exit_code == 1 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert snapshot(hub_copy) == before
