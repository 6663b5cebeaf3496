"""snowhub's CUDA path on a real GPU, part 1: device choice, AMP dtype, no host synchronisation, TF32 off.

Marked ``cuda``: skipped where no CUDA device is visible (and then not counted as a skip that fails CI);
on a GPU machine ``.venv/bin/pytest -m cuda tests/gpu -s`` runs them and prints what each measured
(docs/gpu.md). ``record_property`` keeps the measurements in ``--junitxml`` output.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from snowhub.device import amp_dtype, amp_dtype_for_capability, autocast, pick_device
from snowhub.models.delta import Delta, DeltaShape
from snowhub.models.sources import Tap
from snowhub.numerics import exact_float32, numerics_environment
from snowhub.training import SGDSteps

pytestmark = pytest.mark.cuda


@pytest.fixture(scope="module")
def device() -> torch.device:
    return pick_device("auto")


def test_auto_device_is_an_indexed_gpu_made_current(device, record_property):
    name, sm = torch.cuda.get_device_name(device), torch.cuda.get_device_capability(device)
    print(f"{torch.cuda.device_count()} CUDA device(s); using {device}: {name}, sm{sm[0]}{sm[1]}")
    record_property("device", f"{device} {name}")
    assert device.type == "cuda" and device.index is not None
    assert torch.cuda.current_device() == device.index


def test_each_local_rank_gets_its_own_gpu(device, monkeypatch):
    try:
        for rank in range(torch.cuda.device_count()):
            monkeypatch.setenv("LOCAL_RANK", str(rank))
            assert pick_device("auto") == torch.device("cuda", rank)
            assert torch.cuda.current_device() == rank
    finally:
        torch.cuda.set_device(device)


def test_amp_dtype_follows_the_compute_capability_and_sgd_steps_run_in_it(device, record_property):
    capability = torch.cuda.get_device_capability(device)
    chosen = amp_dtype(device)
    print(f"sm{capability}: autocast {chosen} (torch.cuda.is_bf16_supported() = {torch.cuda.is_bf16_supported()})")
    record_property("amp_dtype", str(chosen))
    assert chosen == amp_dtype_for_capability(capability)
    with autocast(device):
        y = torch.nn.Conv2d(8, 16, 3).to(device)(torch.randn(4, 8, 16, 16, device=device))
    assert y.dtype == chosen
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(8, 4)).to(device)
    steps = SGDSteps([{"params": list(model.parameters()), "lr": 0.05, "weight_decay": 0.0}], 10, 1, device)
    assert steps.loss_scaling == (chosen == torch.float16) == steps.scaler.is_enabled()
    images = torch.randint(0, 255, (8, 3, 16, 16), device=device).float() / 255
    labels = torch.randint(0, 4, (8,), device=device)
    losses = [steps.step(model, images, labels) for _ in range(5)]
    print(f"SGDSteps: loss scaling {steps.loss_scaling}, losses {losses[0]:.3f} → {losses[-1]:.3f}")
    assert all(np.isfinite(losses))


@pytest.mark.parametrize("mode", ["training", "training under autocast", "frozen"])
def test_a_delta_forward_makes_no_host_synchronisation(device, mode):
    taps = (Tap("a", 16, 2, 1), Tap("b", 24, 4, 2), Tap("c", 40, 8, 2), Tap("d", 112, 16, 3), Tap("e", 320, 32, 1))
    delta = Delta(DeltaShape.from_ratios("inverted_residual", taps, 8, 1 / 8, 10)).to(device).train()
    images = torch.randn(8, 3, 64, 64, device=device)
    features = [torch.randn(8, t.channels, 64 // t.stride, 64 // t.stride, device=device) for t in taps]
    delta(images, features)  # the first selection places the channels
    if mode == "frozen":
        delta.eval()
        delta.freeze_channel_pooling()
    amp = "autocast" in mode
    tap = features[3].to(amp_dtype(device)) if amp else features[3]  # under autocast taps come in its dtype
    torch.cuda.synchronize(device)
    torch.cuda.set_sync_debug_mode("error")  # a GPU→CPU synchronisation raises RuntimeError
    try:
        with autocast(device) if amp else contextlib.nullcontext():
            out = delta(images, features)
            pooled = delta.pools[3](tap)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert out.shape == (8, 10)
    assert pooled.dtype == tap.dtype, "channel pooling must hand on the autocast dtype"


def _relative_error(got: torch.Tensor, exact: torch.Tensor) -> float:
    return float((got.double() - exact).abs().max() / exact.abs().max())


def test_exact_float32_turns_tf32_off_for_probe_logits(device, record_property):
    torch.manual_seed(0)
    a, b = torch.randn(1024, 1024, device=device), torch.randn(1024, 1024, device=device)
    x, w = torch.randn(8, 64, 32, 32, device=device), torch.randn(64, 64, 3, 3, device=device)
    exact_mm, exact_conv = a.double() @ b.double(), F.conv2d(x.double(), w.double())
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    with exact_float32(device):
        flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
                 torch.backends.cudnn.deterministic)
        errors = {"matmul": _relative_error(a @ b, exact_mm), "conv": _relative_error(F.conv2d(x, w), exact_conv)}
    print(f"inside exact_float32 (matmul TF32, cuDNN TF32, deterministic) = {flags}; error vs float64 {errors}")
    record_property("exact_float32_error", errors)
    assert flags == (False, False, True)
    assert numerics_environment(device).get("tf32") is False
    assert max(errors.values()) < 1e-5, "float32 under exact_float32 is as far from float64 as TF32"
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before
