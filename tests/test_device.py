"""Device choices on a GPU machine, checked without one: the logic takes what the machine would report
(compute capability, device count, LOCAL_RANK, CPU affinity and quota) as arguments or monkeypatched calls.
tests/gpu (the `cuda` tests) checks the same on a real GPU."""

from __future__ import annotations

import warnings

import pytest
import torch
from PIL import Image

from snowhub.data import eval_transform, make_loader
from snowhub.device import (amp_dtype, amp_dtype_for_capability, autocast, available_cpus, cpu_quota, cuda_index,
                            default_num_workers, pick_device)
from snowhub.errors import ConfigError
from snowhub.training import SGDSteps

GPUS = {(7, 0): "V100", (7, 5): "T4", (8, 0): "A100", (8, 6): "A10 / RTX 30", (8, 9): "L4 / RTX 40",
        (9, 0): "H100"}


@pytest.mark.parametrize("capability", list(GPUS), ids=[f"sm{a}{b}-{n}" for (a, b), n in GPUS.items()])
def test_bfloat16_only_from_ampere_on(capability):
    expected = torch.bfloat16 if capability >= (8, 0) else torch.float16
    assert amp_dtype_for_capability(capability) == expected


@pytest.fixture
def two_gpus(monkeypatch):
    """cuda:0 an H100, cuda:1 a T4, and the current device 0; bf16 "supported" everywhere (emulation)."""
    capabilities = {0: (9, 0), 1: (7, 5)}
    asked = []

    def capability(device=None):
        index = torch.device(device).index if device is not None else 0
        asked.append(index)
        return capabilities[index]

    monkeypatch.setattr(torch.cuda, "get_device_capability", capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    return asked


def test_the_amp_dtype_is_that_of_the_gpu_used_not_the_current_one(two_gpus):
    assert amp_dtype(torch.device("cuda:1")) == torch.float16  # a T4, though is_bf16_supported() says True
    assert amp_dtype(torch.device("cuda:0")) == torch.bfloat16
    assert two_gpus == [1, 0]
    assert amp_dtype(torch.device("cpu")) is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDA is not available, disabling autocast" on this machine
        assert autocast(torch.device("cuda:1")).fast_dtype == torch.float16
        assert autocast(torch.device("cuda:0")).fast_dtype == torch.bfloat16


@pytest.mark.parametrize("index, scaled", [(1, True), (0, False)])
def test_float16_training_scales_the_loss(two_gpus, index, scaled):
    weight = torch.nn.Parameter(torch.zeros(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GradScaler disables itself without CUDA
        steps = SGDSteps([{"params": [weight], "lr": 0.1, "weight_decay": 0.0}], 10, 1, torch.device("cuda", index))
    assert steps.amp_dtype == (torch.float16 if scaled else torch.bfloat16)
    assert steps.loss_scaling is scaled
    cpu = SGDSteps([{"params": [weight], "lr": 0.1, "weight_decay": 0.0}], 10, 1, torch.device("cpu"))
    assert cpu.amp_dtype is None and cpu.loss_scaling is False and not cpu.scaler.is_enabled()


def test_cuda_index():
    assert cuda_index(None, 1, {}) == 0
    assert cuda_index(None, 4, {}, current=2) == 2
    assert cuda_index(3, 4, {"LOCAL_RANK": "1"}) == 3  # an explicit cuda:N wins
    assert [cuda_index(None, 4, {"LOCAL_RANK": str(r)}) for r in range(4)] == [0, 1, 2, 3]  # torchrun
    assert cuda_index(None, 1, {"LOCAL_RANK": "3"}) == 0  # each rank is shown only its own GPU
    assert cuda_index(None, 2, {"LOCAL_RANK": ""}) == 0
    with pytest.raises(ConfigError, match="cuda:4 was asked for but this process sees 4"):
        cuda_index(4, 4, {})
    with pytest.raises(ConfigError, match="LOCAL_RANK=2 but this process sees 2"):
        cuda_index(None, 2, {"LOCAL_RANK": "2"})
    with pytest.raises(ConfigError, match="not a number"):
        cuda_index(None, 2, {"LOCAL_RANK": "one"})


@pytest.fixture
def four_gpus(monkeypatch):
    """A machine with 4 visible GPUs; returns the indices passed to torch.cuda.set_device."""
    made_current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: made_current.append(index))
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    return made_current


def test_every_torchrun_rank_gets_its_own_gpu(four_gpus, monkeypatch):
    for rank in range(4):
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        assert pick_device("auto") == torch.device("cuda", rank)
        assert pick_device("cuda") == torch.device("cuda", rank)
    assert four_gpus == [0, 0, 1, 1, 2, 2, 3, 3]
    assert pick_device("cuda:1") == torch.device("cuda", 1)  # as asked, under torchrun too
    with pytest.raises(ConfigError, match="cuda:5"):
        pick_device("cuda:5")


def test_without_torchrun_auto_means_the_current_gpu_with_its_index(four_gpus):
    assert pick_device("auto") == torch.device("cuda", 0)
    assert str(pick_device("cuda")) == "cuda:0"  # one key per GPU (models are cached per device)
    assert four_gpus == [0, 0]
    assert pick_device("cpu") == torch.device("cpu")


def test_no_gpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert pick_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        pick_device("cuda:0")


def test_cpu_quota():
    assert cpu_quota("max 100000\n") is None
    assert cpu_quota("250000 100000\n") == 2.5
    assert cpu_quota(None, "-1\n", "100000\n") is None
    assert cpu_quota(None, "400000\n", "100000\n") == 4.0
    assert cpu_quota(None) is None
    assert cpu_quota("garbage") is None


def test_available_cpus_follows_affinity_and_quota():
    assert available_cpus(affinity=64, quota=None) == 64
    assert available_cpus(affinity=64, quota=2.5) == 3  # docker --cpus 2.5 on a 64-core host
    assert available_cpus(affinity=4, quota=16.0) == 4  # docker --cpuset-cpus 0-3
    assert available_cpus(affinity=8, quota=0.5) == 1
    import os
    assert available_cpus() <= len(os.sched_getaffinity(0))


def test_worker_defaults():
    gpu, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert [default_num_workers(gpu, cpus=n) for n in (1, 2, 4, 64)] == [1, 1, 3, 8]
    assert [default_num_workers(cpu, cpus=n) for n in (1, 2, 4)] == [0, 0, 1]


def _images(tmp_path, n=6):
    samples = []
    for i in range(n):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (12, 12), (40 * i, 0, 0)).save(path)
        samples.append((path, i % 2))
    return samples


def test_workers_persist_across_epochs(tmp_path):
    """Workers are started once per loader, not at every epoch and validation pass."""
    samples = _images(tmp_path)
    args = dict(shuffle=True, seed=0, device=torch.device("cpu"))
    loader = make_loader(samples, eval_transform(8), 2, num_workers=1, **args)
    assert loader.persistent_workers
    first = [labels.tolist() for _, labels in loader]
    workers = loader._iterator._workers
    second = [labels.tolist() for _, labels in loader]
    assert loader._iterator._workers is workers and all(w.is_alive() for w in workers)
    assert sorted(sum(first, [])) == sorted(sum(second, [])) == [0, 0, 0, 1, 1, 1]
    del loader
    assert not make_loader(samples, eval_transform(8), 2, num_workers=0, **args).persistent_workers
    assert not make_loader(samples, eval_transform(8), 2, num_workers=1, persistent_workers=False,
                           **args).persistent_workers
