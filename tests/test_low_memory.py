"""`add-task --low-memory auto` (issue 27): the low-memory forward is chosen from the size of the source's taps
(on for ResNet-50 at 224 px, off for the 64 px quickstart), printed and recorded with the task, and it trains
a delta that predicts what the default forward's delta predicts on real images."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import FAST, pretrained_source
from snowhub import Hub
from snowhub.data import discover, eval_transform
from snowhub.data.images import load_rgb
from snowhub.device import pick_device
from snowhub.models.frozen import FrozenSource
from snowhub.models.network import task_logits
from snowhub.models.sources import get_spec
from snowhub.training import TrainConfig, train_delta
from snowhub.training.config import RunOptions
from snowhub.training.forwards import LOW_MEMORY_AUTO_MIB, choose_low_memory, taps_mib


def _random_source(name: str) -> FrozenSource:
    spec = get_spec(name)
    return FrozenSource(spec, spec.build(), True)


def test_auto_is_on_for_resnet50_at_224_px_and_off_for_the_64_px_quickstart():
    resnet = _random_source("resnet50")
    paper = TrainConfig(batch_size=32, image_size=224)
    # 64·112² + 256·56² + 512·28² + 1024·14² + 2048·7² floats per image
    assert taps_mib(resnet, 224, 32) == pytest.approx(281.75)
    choice = choose_low_memory(paper, resnet, 224, one_process=True)
    assert choice.on and choice.asked == "auto"
    assert choice.reason == (f"the source's taps are 282 MiB per batch of 32 at 224 px, at least "
                             f"{LOW_MEMORY_AUTO_MIB:g} MiB")
    quickstart = TrainConfig(batch_size=64, image_size=64)  # README's quickstart: efficientnet_lite0, 64 px
    lite = _random_source("efficientnet_lite0")
    off = choose_low_memory(quickstart, lite, 64, one_process=True)
    assert not off.on and "under" in off.reason and taps_mib(lite, 64, 64) < LOW_MEMORY_AUTO_MIB / 4
    # asked for, it is what was asked; a DDP rank and a feature cache train without it
    for asked, on in (("on", True), ("off", False)):
        config = dataclasses.replace(paper, run=RunOptions(low_memory=asked))
        assert choose_low_memory(config, lite, 64, True) == type(choice)(on, asked, "asked")
    assert not choose_low_memory(paper, resnet, 224, one_process=False).on
    cached = TrainConfig(batch_size=32, image_size=224, feature_cache=True, hflip=False)
    assert choose_low_memory(cached, resnet, 224, True).reason == "a feature cache runs no source per step"
    # the former flag's True/False still mean on/off; anything else is refused by its parameter name
    assert RunOptions(low_memory=True).low_memory == "on" and RunOptions(low_memory=False).low_memory == "off"
    with pytest.raises(Exception, match="^`low_memory` must be auto, on or off"):
        RunOptions(low_memory="sometimes").validate()


def test_the_choice_is_printed_and_recorded_with_the_task(trained_hub_made):
    with Hub.open(trained_hub_made["path"]) as hub:
        params = hub.registry.get_task("fashion").hyperparams
    assert (params["low_memory"], params["low_memory_asked"]) == (False, "auto")
    assert params["low_memory_reason"].startswith("the source's taps are ")
    assert "low_memory_malloc" not in params  # the allocator is left alone where low memory is off
    assert "low memory: off (auto: the source's taps are" in trained_hub_made["fashion2"].output


def test_low_memory_on_predicts_what_the_default_path_predicts_on_real_images(fashion_dir, trained_hub):
    """The session hub's 'fashion' (add-task's defaults: low memory off at 32 px) against the same training with
    --low-memory on (staged, each delta stage recomputed, the source in chunks): same labels, logits within
    float rounding, on the real validation images."""
    with Hub.open(trained_hub) as hub:
        row = hub.registry.get_task("fashion")
        default = hub.artifacts(torch.device("cpu")).delta(row)
    source = pretrained_source()
    split = discover(fashion_dir)
    config = TrainConfig(**(FAST | {"run": dataclasses.replace(FAST["run"], low_memory="on")}))
    low = train_delta(source, split, config, pick_device("cpu"))
    assert low.low_memory.on and low.cp_indices == row.cp_indices
    assert low.low_memory.to_dict()["low_memory_malloc"] == low.low_memory.malloc  # what malloc did, recorded
    assert low.low_memory.describe().endswith(f"; malloc: {low.low_memory.malloc}")
    evaluation = eval_transform(FAST["image_size"], source.spec.eval_resize_ratio)
    images = torch.stack([evaluation(load_rgb(path)) for path, _ in split.val])
    with torch.no_grad():
        a, b = task_logits(source, default, images), task_logits(source, low.delta, images)
    assert torch.equal(a.argmax(1), b.argmax(1))
    assert (a - b).abs().max() <= 1e-4 * a.abs().max()
