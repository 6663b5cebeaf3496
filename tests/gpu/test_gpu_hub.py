"""snowhub's CUDA path on a real GPU, part 2: add-task and verify-forgetting on CUDA, the hub verified on the CPU,
and the peak memory of training SNOW against FT at 224 px.

Marked ``cuda``: skipped where no CUDA device is visible; ``.venv/bin/pytest -m cuda tests/gpu -s`` on a GPU
machine (docs/gpu.md). Only Fashion-MNIST's small ``t10k`` files are read (4.4 MB).
"""

from __future__ import annotations

import gc
import time

import pytest
import torch

from benchmarks.backbones import load_pretrained
from benchmarks.baselines import build_baseline
from benchmarks.configs import SnowVariant
from benchmarks.snow import SnowModel, build_delta
from conftest import CLASSES, write_fashion
from snowhub import Hub, RunOptions, TrainConfig
from snowhub.device import amp_dtype, pick_device
from snowhub.probe import LOGIT_TOLERANCE
from snowhub.training import SGDSteps, delta_param_groups

pytestmark = pytest.mark.cuda
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def device() -> torch.device:
    return pick_device("auto")


@pytest.fixture(scope="module")
def gpu_hub(device, tmp_path_factory):
    """A hub with one task trained on CUDA: efficientnet_lite0, 3 classes, 200 + 60 test-set images each, 64 px,
    2 epochs, the default DataLoader workers."""
    root = tmp_path_factory.mktemp("gpu-hub")
    write_fashion(root / "data" / "train", "t10k", 200, CLASSES)
    write_fashion(root / "data" / "val", "t10k", 60, CLASSES, offset=200)
    with Hub.init(root / "hub", "efficientnet_lite0") as hub:
        start = time.perf_counter()
        info = hub.add_task("fashion", root / "data", TrainConfig(epochs=2, image_size=64, batch_size=32, seed=0,
                                                                  run=RunOptions(device=str(device))))
        print(f"add-task on {device}: {time.perf_counter() - start:.1f} s, val top-1 {info.val_top1:.1f} %")
        yield hub, info


def test_add_task_on_cuda_learns_and_verifies_bit_identical_there(gpu_hub, device, record_property):
    hub, info = gpu_hub
    record_property("val_top1", info.val_top1)
    assert info.val_top1 > 70.0, "3 distinct Fashion-MNIST classes, 2 epochs: far above chance (33 %)"
    report = hub.verify_forgetting(device=str(device))
    assert report.ok and report.tasks[0].verdict == "bit-identical", report.problems()


def test_a_task_registered_on_cuda_verifies_on_the_cpu_within_tolerance(gpu_hub, device, record_property):
    hub, _ = gpu_hub
    report = hub.verify_forgetting(device="cpu")
    diff = report.tasks[0].max_logit_diff
    print(f"probe logits CUDA vs CPU: max difference {diff:.3g} ({diff / LOGIT_TOLERANCE:.2f} of the tolerance)")
    record_property("probe_logit_diff_cuda_vs_cpu", diff)
    assert report.ok, report.problems()
    artifacts = hub.artifacts(torch.device("cpu"))
    probe = artifacts.probe(artifacts.task("fashion"))
    on_gpu = hub.predictor(str(device)).logits(probe.images, ["fashion"])["fashion"]
    on_cpu = hub.predictor("cpu").logits(probe.images, ["fashion"])["fashion"]
    served = float((on_gpu.cpu() - on_cpu).abs().max())
    flips = int((on_gpu.cpu().argmax(1) != on_cpu.argmax(1)).sum())
    print(f"served logits (TF32 defaults) CUDA vs CPU: max difference {served:.3g}, {flips} of "
          f"{len(probe.labels)} labels differ")
    record_property("served_logit_diff_cuda_vs_cpu", served)


def _train_peak(model: torch.nn.Module, groups: list[dict], device: torch.device, floor: int, batch: int,
                size: int, warmup: int = 3, steps: int = 5) -> float:
    """Peak allocated GPU memory (MiB) of training `model` after `warmup` steps, weights included (as the
    benchmarks and the paper count it); `floor` is what was allocated before the model existed."""
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 10, (batch,), device=device)
    sgd = SGDSteps(groups, warmup + steps, 1, device)
    for _ in range(warmup):
        sgd.step(model, images, labels)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    for _ in range(steps):
        sgd.step(model, images, labels)
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - floor) / MIB


def test_snow_trains_in_less_gpu_memory_than_ft_at_224_px(device, record_property, batch=64, size=224):
    pretrained = load_pretrained("resnet50", random_weights=True)  # seeded; the cost does not depend on weights
    saved, torch.backends.cudnn.benchmark = torch.backends.cudnn.benchmark, True  # as the benchmark worker trains
    peaks = {}
    try:
        for name in ("SNOW", "FT"):
            gc.collect()
            torch.cuda.empty_cache()
            floor = torch.cuda.memory_allocated(device)
            if name == "SNOW":
                delta = build_delta(pretrained.spec, 10, SnowVariant(), 1e-3)
                model = SnowModel(pretrained.frozen_source(), delta).to(device).train()
                groups = delta_param_groups(delta, 0.1, 10.0, 1e-4)
            else:
                model = build_baseline("FT", pretrained, 10).to(device).train()
                groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": 0.1,
                           "weight_decay": 1e-4}]
            peaks[name] = _train_peak(model, groups, device, floor, batch, size)
            del model, groups
    finally:
        torch.backends.cudnn.benchmark = saved
    print(f"peak MiB {peaks}; FT ÷ SNOW {peaks['FT'] / peaks['SNOW']:.2f}× (ResNet-50, {size} px, batch {batch}, "
          f"{amp_dtype(device)})")
    record_property("peak_mib", peaks)
    assert peaks["SNOW"] < peaks["FT"]
