#!/usr/bin/env python
"""snowhub's CUDA path on a real GPU: ``python scripts/gpu_check.py [--out result.json]`` (see docs/gpu.md).

It verifies, and prints with each result what it measured:

1. ``device``: ``pick_device("auto")`` is ``cuda:N`` with its index and makes it the current device;
   under torchrun (``LOCAL_RANK``) each rank gets its own GPU.
2. ``amp``: the autocast dtype is chosen by the compute capability of the GPU used (bfloat16 from sm80,
   float16 with the GradScaler below, whatever ``torch.cuda.is_bf16_supported()`` says); a convolution and
   a few ``SGDSteps`` run in it.
3. ``sync``: a delta's forward pass (training and frozen) makes no GPU→CPU synchronisation
   (``torch.cuda.set_sync_debug_mode("error")``), and channel pooling hands on the autocast dtype.
4. ``tf32``: TF32 is off for probe logits (``snowhub.numerics.exact_float32``): the flags, and a float32
   matrix product and convolution there that match float64 to float32 accuracy.
5. ``hub``: a short add-task on CUDA (efficientnet_lite0 source, real Fashion-MNIST images: 3 classes,
   200 + 60 per class, 64 px, 2 epochs, the default DataLoader workers) and verify-forgetting on CUDA
   (bit-identical), then the same hub verified on the CPU: the largest probe-logit difference CUDA vs CPU
   against the checker's tolerance (``snowhub.probe.LOGIT_TOLERANCE``, docs/reliability.md), and the
   largest served-logit difference (``Predictor``, float32 with PyTorch's default TF32 settings).
6. ``memory``: peak GPU memory of training SNOW and FT at 224 px (ResNet-50 architecture, random weights,
   the product's AMP update rule, cuDNN autotuning as the benchmarks run it), counted after the warm-up
   steps (and, for comparison, with them).

Exit status: 0 when every check passed, 1 when one failed, 2 when no CUDA device is visible (nothing checked).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import gzip
import importlib.util
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # snowhub and benchmarks from this checkout, installed or not

try:  # a checkout that is not installed: the migrations live in migrations/
    import snowhub_migrations  # noqa: F401
except ImportError:
    _spec = importlib.util.spec_from_file_location("snowhub_migrations", ROOT / "migrations" / "__init__.py",
                                                   submodule_search_locations=[str(ROOT / "migrations")])
    sys.modules["snowhub_migrations"] = _module = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_module)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from benchmarks.backbones import Pretrained  # noqa: E402
from benchmarks.baselines import build_baseline  # noqa: E402
from benchmarks.configs import SnowVariant  # noqa: E402
from benchmarks.snow import SnowModel, build_delta  # noqa: E402
from snowhub import Hub, TrainConfig  # noqa: E402
from snowhub.device import amp_dtype, amp_dtype_for_capability, autocast, pick_device  # noqa: E402
from snowhub.models.delta import Delta, DeltaShape  # noqa: E402
from snowhub.models.sources import Tap, get_spec  # noqa: E402
from snowhub.numerics import exact_float32, numerics_environment  # noqa: E402
from snowhub.probe import LOGIT_TOLERANCE  # noqa: E402
from snowhub.training import SGDSteps, delta_param_groups  # noqa: E402

CHECKS = ("device", "amp", "sync", "tf32", "hub", "memory")
FASHION = Path("/usr/share/datasets/fashion-mnist")
CLASSES = {1: "Trouser", 5: "Sandal", 8: "Bag"}  # visually distinct, so 2 short epochs learn them
MIB = 1024 * 1024


class Failed(Exception):
    """A check found something wrong (its message says what)."""


def expect(ok: bool, message: str) -> None:
    if not ok:
        raise Failed(message)


def say(line: str) -> None:
    print(f"    {line}", flush=True)


# -- 1. device ------------------------------------------------------------------------------------------


def check_device(device: torch.device) -> dict:
    count = torch.cuda.device_count()
    name = torch.cuda.get_device_name(device)
    sm = "".join(map(str, torch.cuda.get_device_capability(device)))
    say(f"{count} CUDA device(s); using {device}: {name}, sm{sm}")
    expect(device.type == "cuda" and device.index is not None, f"pick_device('auto') gave {device}, not cuda:N")
    expect(torch.cuda.current_device() == device.index, "the picked GPU is not the current device")
    ranks = {}
    saved = os.environ.get("LOCAL_RANK")
    try:
        for rank in range(count):
            os.environ["LOCAL_RANK"] = str(rank)
            got = pick_device("auto")
            ranks[rank] = str(got)
            expect(got == torch.device("cuda", rank) and torch.cuda.current_device() == rank,
                   f"LOCAL_RANK={rank} gave {got} (current device {torch.cuda.current_device()})")
    finally:
        if saved is None:
            os.environ.pop("LOCAL_RANK", None)
        else:
            os.environ["LOCAL_RANK"] = saved
        torch.cuda.set_device(device)
    say(f"LOCAL_RANK → device: {ranks}")
    return {"device": str(device), "name": name, "count": count, "local_rank_devices": ranks}


# -- 2. AMP dtype ---------------------------------------------------------------------------------------


def check_amp(device: torch.device) -> dict:
    capability = torch.cuda.get_device_capability(device)
    chosen = amp_dtype(device)
    emulated = torch.cuda.is_bf16_supported()
    say(f"compute capability {capability}: autocast dtype {chosen} (torch.cuda.is_bf16_supported() = {emulated}; "
        f"the former choice would be {torch.bfloat16 if emulated else torch.float16})")
    expect(chosen == amp_dtype_for_capability(capability), f"amp_dtype gave {chosen} on sm{capability}")
    conv = torch.nn.Conv2d(8, 16, 3).to(device)
    with autocast(device):
        y = conv(torch.randn(4, 8, 16, 16, device=device))
    expect(y.dtype == chosen, f"a convolution under autocast ran in {y.dtype}, not {chosen}")
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(8, 4)).to(device)
    steps = SGDSteps([{"params": list(model.parameters()), "lr": 0.05, "weight_decay": 0.0}], 10, 1, device)
    expect(steps.loss_scaling == (chosen == torch.float16) and steps.scaler.is_enabled() == steps.loss_scaling,
           f"loss scaling {steps.loss_scaling} (scaler enabled {steps.scaler.is_enabled()}) with {chosen}")
    images = torch.randint(0, 255, (8, 3, 16, 16), device=device).float() / 255
    labels = torch.randint(0, 4, (8,), device=device)
    losses = [steps.step(model, images, labels) for _ in range(5)]
    expect(all(np.isfinite(losses)), f"SGDSteps losses {losses}")
    say(f"SGDSteps: loss scaling {'on' if steps.loss_scaling else 'off'}, 5 steps, "
        f"losses {losses[0]:.3f} → {losses[-1]:.3f}")
    return {"capability": list(capability), "amp_dtype": str(chosen), "is_bf16_supported": emulated,
            "loss_scaling": steps.loss_scaling}


# -- 3. no host synchronisation in channel pooling ------------------------------------------------------


def check_sync(device: torch.device) -> dict:
    taps = (Tap("a", 16, 2, 1), Tap("b", 24, 4, 2), Tap("c", 40, 8, 2), Tap("d", 112, 16, 3), Tap("e", 320, 32, 1))
    delta = Delta(DeltaShape.from_ratios("inverted_residual", taps, 8, 1 / 8, 10)).to(device).train()
    images = torch.randn(8, 3, 64, 64, device=device)
    features = [torch.randn(8, t.channels, 64 // t.stride, 64 // t.stride, device=device) for t in taps]
    delta(images, features)  # the first selection places the channels
    found = {}
    for mode in ("training", "training under autocast", "frozen"):
        if mode == "frozen":
            delta.eval()
            delta.freeze_channel_pooling()
        amp = "autocast" in mode
        tap = features[3].to(amp_dtype(device)) if amp else features[3]  # under autocast taps come in its dtype
        torch.cuda.synchronize(device)
        torch.cuda.set_sync_debug_mode("error")
        try:
            with autocast(device) if amp else contextlib.nullcontext():
                out = delta(images, features)
                pooled = delta.pools[3](tap)
            found[mode] = None
        except RuntimeError as exc:
            found[mode] = str(exc).splitlines()[0]
        finally:
            torch.cuda.set_sync_debug_mode(0)
        if found[mode] is None:
            say(f"delta forward ({mode}): no synchronisation; logits {tuple(out.shape)}, pooled tap {pooled.dtype}")
            expect(out.shape == (8, 10), f"logits of shape {tuple(out.shape)}")
            expect(pooled.dtype == tap.dtype, f"channel pooling turned {tap.dtype} into {pooled.dtype}")
        else:
            say(f"delta forward ({mode}): synchronised: {found[mode]}")
    expect(all(v is None for v in found.values()), f"host synchronisations: {found}")
    return {mode: problem or "no synchronisation" for mode, problem in found.items()}


# -- 4. TF32 off for probe logits -----------------------------------------------------------------------


def _relative_error(got: torch.Tensor, exact: torch.Tensor) -> float:
    return float((got.double() - exact).abs().max() / exact.abs().max())


def check_tf32(device: torch.device) -> dict:
    torch.manual_seed(0)
    a, b = torch.randn(1024, 1024, device=device), torch.randn(1024, 1024, device=device)
    x, w = torch.randn(8, 64, 32, 32, device=device), torch.randn(64, 64, 3, 3, device=device)
    exact_mm, exact_conv = a.double() @ b.double(), F.conv2d(x.double(), w.double())
    flags_before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    with exact_float32(device):
        flags = {"matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                 "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
                 "cudnn.deterministic": torch.backends.cudnn.deterministic}
        errors = {"matmul": _relative_error(a @ b, exact_mm), "conv": _relative_error(F.conv2d(x, w), exact_conv)}
    env_tf32 = numerics_environment(device).get("tf32")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        tf32 = {"matmul": _relative_error(a @ b, exact_mm), "conv": _relative_error(F.conv2d(x, w), exact_conv)}
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags_before
    say(f"inside exact_float32: {flags}; recorded tf32 = {env_tf32}")
    say(f"relative error vs float64: exact_float32 matmul {errors['matmul']:.2e}, conv {errors['conv']:.2e}; "
        f"with TF32 allowed matmul {tf32['matmul']:.2e}, conv {tf32['conv']:.2e}")
    expect(not flags["matmul.allow_tf32"] and not flags["cudnn.allow_tf32"] and flags["cudnn.deterministic"],
           f"exact_float32 left {flags}")
    expect(env_tf32 is False, f"numerics_environment records tf32={env_tf32}")
    expect(max(errors.values()) < 1e-5, f"float32 under exact_float32 is off float64 by {errors} (TF32 still on?)")
    expect((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == flags_before,
           "exact_float32 did not restore the TF32 flags")
    return {"flags": flags, "exact_float32_error": errors, "tf32_error": tf32}


# -- 5. add-task + verify-forgetting on CUDA, then on the CPU ---------------------------------------------


def _fashion(root: Path, split: str = "t10k") -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(root / f"{split}-images-idx3-ubyte.gz") as fh:
        images = np.frombuffer(fh.read()[16:], dtype=np.uint8).reshape(-1, 28, 28)
    with gzip.open(root / f"{split}-labels-idx1-ubyte.gz") as fh:
        labels = np.frombuffer(fh.read()[8:], dtype=np.uint8)
    return images, labels


def write_fashion(source: Path, target: Path, train: int = 200, val: int = 60) -> None:
    """`train` + `val` real Fashion-MNIST test-set images per class as ``target/{train,val}/<class>/*.png``
    (only the small t10k files are read, so a GPU machine needs 4.4 MB of data)."""
    images, labels = _fashion(source)
    for label, name in CLASSES.items():
        indices = np.flatnonzero(labels == label)
        for split, chosen in (("train", indices[:train]), ("val", indices[train:train + val])):
            (target / split / name).mkdir(parents=True, exist_ok=True)
            for i, index in enumerate(chosen):
                Image.fromarray(images[index]).save(target / split / name / f"{i:04d}.png")


def check_hub(device: torch.device, fashion: Path, epochs: int, size: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="snowhub-gpu-check-") as tmp:
        data, path = Path(tmp) / "fashion", Path(tmp) / "hub"
        write_fashion(fashion, data)
        with Hub.init(path, "efficientnet_lite0") as hub:
            start = time.perf_counter()
            info = hub.add_task("fashion", data, TrainConfig(epochs=epochs, image_size=size, batch_size=32, seed=0,
                                                             device=str(device)))
            seconds = time.perf_counter() - start
            details = hub.task("fashion").details
            say(f"add-task on {device}: {seconds:.1f} s (training {details.get('train_seconds', 0):.1f} s, "
                f"{details.get('train_images_per_s', 0):.0f} images/s), val top-1 {info.val_top1:.1f} %, "
                f"K = {info.k}")
            on_gpu = hub.verify_forgetting(device=str(device))
            gpu_task = on_gpu.tasks[0]
            say(f"verify-forgetting on {device}: ok={on_gpu.ok}, {gpu_task.verdict}, "
                f"max logit difference {gpu_task.max_logit_diff}")
            on_cpu = hub.verify_forgetting(device="cpu")
            cpu_task = on_cpu.tasks[0]
            say(f"verify-forgetting on the CPU: ok={on_cpu.ok}, {cpu_task.verdict}, max probe-logit difference "
                f"CUDA vs CPU {cpu_task.max_logit_diff:.3g} (tolerance {LOGIT_TOLERANCE:.3g}, "
                f"{cpu_task.max_logit_diff / LOGIT_TOLERANCE:.2f} of it); problems: {on_cpu.problems() or 'none'}")
            probe = hub.artifacts(torch.device("cpu")).probe(hub.registry.get_task("fashion"))
            served_gpu = hub.predictor(str(device)).logits(probe.images, ["fashion"])["fashion"]
            served_cpu = hub.predictor("cpu").logits(probe.images, ["fashion"])["fashion"]
            served = float((served_gpu - served_cpu).abs().max())
            flips = int((served_gpu.argmax(1) != served_cpu.argmax(1)).sum())
            say(f"served logits (Predictor, TF32 defaults) CUDA vs CPU: max difference {served:.3g}, "
                f"{flips} of {len(probe.labels)} labels differ; largest |logit| {float(served_cpu.abs().max()):.3g}")
    result = {"seconds": seconds, "val_top1": info.val_top1, "train_images_per_s": details.get("train_images_per_s"),
              "cuda_verdict": gpu_task.verdict, "cpu_verdict": cpu_task.verdict,
              "probe_logit_diff_cuda_vs_cpu": cpu_task.max_logit_diff, "tolerance": LOGIT_TOLERANCE,
              "served_logit_diff_cuda_vs_cpu": served, "served_label_flips": flips}
    expect(on_gpu.ok and gpu_task.verdict == "bit-identical",
           f"verify-forgetting on {device}: {gpu_task.verdict}, {on_gpu.problems()}")
    expect(on_cpu.ok, f"the CUDA-registered hub does not verify on the CPU: {on_cpu.problems()}")
    return result


# -- 6. peak memory, SNOW vs FT --------------------------------------------------------------------------


def _train_peak(name: str, model: torch.nn.Module, groups: list[dict], device: torch.device, batch: int,
                size: int, warmup: int, steps: int, floor: int) -> dict:
    """Peak allocated GPU memory of training `model` (its weights included, as benchmarks/memory.py and
    the paper count it), after `warmup` steps and with them; `floor` is what was allocated before it."""
    weights = torch.cuda.memory_allocated(device) - floor
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 10, (batch,), device=device)
    sgd = SGDSteps(groups, warmup + steps, 1, device)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        sgd.step(model, images, labels)
    torch.cuda.synchronize(device)
    with_warmup = torch.cuda.max_memory_allocated(device) - floor
    torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        sgd.step(model, images, labels)
    torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) - floor
    say(f"{name}: peak {peak / MIB:.0f} MiB after {warmup} warm-up steps ({with_warmup / MIB:.0f} MiB counting "
        f"them; weights {weights / MIB:.0f} MiB), {steps * batch / seconds:.0f} images/s")
    return {"peak_mib": peak / MIB, "peak_with_warmup_mib": with_warmup / MIB, "weights_mib": weights / MIB,
            "images_per_s": steps * batch / seconds}


def check_memory(device: torch.device, batch: int, size: int = 224, warmup: int = 3, steps: int = 5) -> dict:
    spec = get_spec("resnet50")
    torch.manual_seed(0)
    pretrained = Pretrained(spec, spec.build().eval(), True, "random weights")
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True  # as the benchmark worker trains
    result = {"batch": batch, "image_size": size, "amp_dtype": str(amp_dtype(device))}
    try:
        for name in ("SNOW", "FT"):
            gc.collect()
            torch.cuda.empty_cache()
            floor = torch.cuda.memory_allocated(device)
            if name == "SNOW":
                delta = build_delta(spec, 10, SnowVariant(), 1e-3)
                model = SnowModel(pretrained.frozen_source(), delta).to(device).train()
                groups = delta_param_groups(delta, 0.1, 10.0, 1e-4)
            else:
                model = build_baseline("FT", pretrained, 10).to(device).train()
                groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": 0.1,
                           "weight_decay": 1e-4}]
            result[name] = _train_peak(name, model, groups, device, batch, size, warmup, steps, floor)
            del model, groups
    finally:
        torch.backends.cudnn.benchmark = saved
    ratio = result["FT"]["peak_mib"] / result["SNOW"]["peak_mib"]
    result["ft_over_snow"] = ratio
    say(f"FT / SNOW peak memory: {ratio:.2f}x (ResNet-50, {size} px, batch {batch}, {result['amp_dtype']})")
    expect(result["SNOW"]["peak_mib"] < result["FT"]["peak_mib"], "SNOW used more memory than FT")
    return result


# -- main ------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/gpu_check.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checks", default=",".join(CHECKS), help=f"comma-separated subset of {', '.join(CHECKS)}")
    parser.add_argument("--fashion", type=Path, default=FASHION,
                        help="folder with Fashion-MNIST's t10k-*-idx*-ubyte.gz (default: the Debian package's)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--memory-batch", type=int, default=64, help="batch of the SNOW vs FT memory check")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    checks = [c.strip() for c in args.checks.split(",") if c.strip()]
    unknown = sorted(set(checks) - set(CHECKS))
    if unknown:
        parser.error(f"unknown check(s) {', '.join(unknown)}; choose from {', '.join(CHECKS)}")

    if not torch.cuda.is_available():
        print(f"error: no CUDA device is visible (torch {torch.__version__}, built for CUDA {torch.version.cuda}, "
              f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); scripts/gpu_check.py checks "
              "snowhub's GPU path and checked nothing: run it on a machine with an NVIDIA GPU (docs/gpu.md)",
              file=sys.stderr)
        return 2

    device = pick_device("auto")
    print(f"snowhub GPU check: torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN "
          f"{torch.backends.cudnn.version()}, {torch.cuda.get_device_name(device)}", flush=True)
    results: dict = {"torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}
    runners = {"device": lambda: check_device(device), "amp": lambda: check_amp(device),
               "sync": lambda: check_sync(device), "tf32": lambda: check_tf32(device),
               "hub": lambda: check_hub(device, args.fashion, args.epochs, args.image_size),
               "memory": lambda: check_memory(device, args.memory_batch)}
    failed = []
    for name in checks:
        print(f"[{name}]", flush=True)
        start = time.perf_counter()
        try:
            results[name] = {"ok": True, **runners[name]()}
            verdict = "PASS"
        except Failed as exc:
            results[name] = {"ok": False, "problem": str(exc)}
            verdict = f"FAIL: {exc}"
        except Exception as exc:  # report and go on: one broken part must not hide the others
            results[name] = {"ok": False, "problem": f"{type(exc).__name__}: {exc}"}
            verdict = f"FAIL: {type(exc).__name__}: {exc}"
            traceback.print_exc()
        if not results[name]["ok"]:
            failed.append(name)
        print(f"  {verdict} ({time.perf_counter() - start:.1f} s)", flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1, default=str))
    print(f"{len(checks) - len(failed)} of {len(checks)} checks passed"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
