"""Where SNOW's training and serving time goes, next to FT: ``python -m benchmarks profile --config cpu``.

Times (ms per batch, median of repeats) the parts of one SGD step of FT and of SNOW on random images
at the configuration's source, image size, batch and threads; counts their FLOPs; lists the delta's most
expensive operators; and times the source forward without its classifier (the change proposed in
docs/benchmarks.md). Runs in a frozen copy of the code (``--product``), prints Markdown and writes
``results.json`` (one row: every measurement) and ``results.md`` into ``--out``.

On the CPU: CPU time of this process, not wall time: with one thread it is the work done, whatever else
the machine is running. On CUDA, where the host only queues kernels: wall time (``perf_counter``) between
two ``torch.cuda.synchronize``, and the forward parts under the product's autocast (``SGDSteps``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch.fx import GraphModule as _FX
from torch.nn import functional as F

from benchmarks.backbones import Pretrained, load_pretrained
from benchmarks.baselines import build_baseline
from benchmarks.configs import SnowVariant, get_config
from benchmarks.environment import describe_environment
from benchmarks.output import command_line, header, write_results
from benchmarks.serving import forward_flops
from benchmarks.snapshot import rerun_in_snapshot, snapshot_info
from benchmarks.snow import build_delta
from benchmarks.worker import setup_torch
from snowhub.device import amp_dtype, autocast
from snowhub.models.frozen import FrozenSource
from snowhub.training import delta_param_groups


class _StopForward(Exception):
    """Raised by the last tap's hook: everything after it is not needed."""


class HeadlessSource(FrozenSource):
    """A FrozenSource that runs the network only up to its last tap (proposed for delta training).

    Its taps come through the hook extractor's public ``run_with_sink``; a hook on the last tap, registered
    after the extractor's own, stops the forward pass there (only inside this class's own forward).

    Raises:
        TypeError: the source is FX-traced (it already skips its head when ``has_head=False``).
    """

    def __init__(self, pretrained: Pretrained):
        super().__init__(pretrained.spec, pretrained.copy(), has_head=False)
        self._stopping = False
        if not hasattr(self.extractor, "run_with_sink"):
            raise TypeError("FX-traced sources already skip their head when has_head=False")
        self.extractor.model.get_submodule(self.spec.taps[-1].name).register_forward_hook(self._stop)

    def _stop(self, *_):
        if self._stopping:
            raise _StopForward

    def forward(self, x):
        out: dict[str, torch.Tensor] = {}
        self._stopping = True
        with torch.no_grad():
            try:
                self.extractor.run_with_sink(x, out.__setitem__)
            except _StopForward:
                pass
            finally:
                self._stopping = False
        return [out[t.name] for t in self.spec.taps], None


def clock_name(device: torch.device) -> str:
    """What :func:`median_ms` measures on `device`."""
    return "GPU wall" if device.type == "cuda" else "CPU"


def median_ms(fn, repeats: int, device: torch.device = torch.device("cpu")) -> float:
    """Median milliseconds of `fn()` over `repeats` calls (after one warm-up call): CPU time of this
    process on the CPU; on CUDA wall time until the GPU has finished (kernels run asynchronously)."""
    if device.type == "cuda":
        def clock() -> float:
            torch.cuda.synchronize(device)
            return time.perf_counter()
    else:
        clock = time.process_time
    fn()
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return 1000 * statistics.median(times)


class Parts:
    """Times each part of a training step separately (the parts run in order, as in a real step)."""

    def __init__(self, repeats: int, device: torch.device = torch.device("cpu")):
        self.repeats, self.device, self.ms = repeats, device, {}

    def time(self, name: str, fn):
        out = None

        def run():
            nonlocal out
            out = fn()

        self.ms[name] = median_ms(run, self.repeats, self.device)
        return out


@torch.no_grad()
def _flops(source, delta, ft, x, taps, images) -> dict[str, int]:
    """FLOPs per image of the source's, the delta's and FT's forward, counted in eval mode (one image: a
    train-mode BatchNorm cannot normalise a 1×1 map at 32 px; the FLOPs are the same)."""
    delta.eval(), ft.eval()
    try:
        return {"source forward": forward_flops(lambda im: source(source.normalizer(im)), images),
                "delta forward": forward_flops(lambda _: delta(x[:1], [t[:1] for t in taps]), images),
                "FT forward": forward_flops(ft, images)}
    finally:
        delta.train(), ft.train()


def profile(config_name: str, repeats: int, batch: int | None) -> dict:
    config = get_config(config_name)
    device = setup_torch(config)
    batch = batch or config.batch_size

    def with_amp(fn):
        """`fn()` under the product's training autocast (a no-op on the CPU)."""
        with autocast(device):
            return fn()
    pretrained = load_pretrained(config.source)
    torch.manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, config.image_size, config.image_size), dtype=torch.uint8).to(device)
    labels = torch.randint(0, 10, (batch,), device=device)

    ft = build_baseline("FT", pretrained, 10).to(device).train()
    ft_opt = torch.optim.SGD([p for p in ft.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    ft_parts = Parts(repeats, device)
    loss = ft_parts.time("forward", lambda: with_amp(lambda: F.cross_entropy(ft(images).float(), labels)))
    ft_parts.time("backward", lambda: loss.backward(retain_graph=True))
    ft_parts.time("optimizer step", ft_opt.step)

    source = pretrained.frozen_source().to(device)
    delta = build_delta(pretrained.spec, 10, SnowVariant(), config.noise_var).to(device).train()
    opt = torch.optim.SGD(delta_param_groups(delta, 1e-3, 10.0, 1e-4), lr=1e-3, momentum=0.9)
    snow_parts = Parts(repeats, device)
    x = snow_parts.time("normalise", lambda: source.normalizer(images))
    taps, _ = snow_parts.time("source forward (no grad)", lambda: with_amp(lambda: source(x)))
    loss = snow_parts.time("delta forward", lambda: with_amp(lambda: F.cross_entropy(delta(x, taps).float(), labels)))
    snow_parts.time("delta backward", lambda: loss.backward(retain_graph=True))
    snow_parts.time("optimizer step", opt.step)

    headless = HeadlessSource(pretrained).to(device) if not isinstance(source.extractor, _FX) else None
    source_ms = {"with classifier (product)": median_ms(lambda: with_amp(lambda: source(x)), repeats, device)}
    if headless is not None:
        source_ms["stopping at the last tap"] = median_ms(lambda: with_amp(lambda: headless(x)), repeats, device)

    flops = _flops(source, delta, ft, x, taps, images)

    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":  # there the host only launches kernels: rank operators by GPU time
        activities.append(torch.profiler.ProfilerActivity.CUDA)

    def own_us(event) -> float:
        return event.self_device_time_total if device.type == "cuda" else event.self_cpu_time_total

    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(3):
            with_amp(lambda: F.cross_entropy(delta(x, taps).float(), labels)).backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    ops = sorted(prof.key_averages(), key=own_us, reverse=True)[:12]
    total_us = sum(own_us(e) for e in prof.key_averages()) or 1.0
    top_ops = [{"op": e.key, "calls_per_step": e.count // 3, "share": own_us(e) / total_us} for e in ops]

    return {"config": config_name, "batch": batch, "image_size": config.image_size, "source": config.source,
            "device": str(device), "clock": clock_name(device), "amp": str(amp_dtype(device)),
            "threads": torch.get_num_threads(), "ft_ms": ft_parts.ms, "snow_ms": snow_parts.ms,
            "source_forward_ms": source_ms,
            "flops_per_image": flops, "delta_top_ops": top_ops,
            "delta_params": sum(p.numel() for p in delta.parameters()), "delta_widths": list(delta.shape.widths)}


def markdown(r: dict) -> str:
    ft, snow = sum(r["ft_ms"].values()), sum(r["snow_ms"].values())
    f = r["flops_per_image"]
    clock = r.get("clock", "CPU")  # profiles written before the CUDA clock existed are CPU time
    lines = [f"{r['source']}, {r['image_size']} px, batch {r['batch']}, {r['threads']} thread(s); "
             f"{clock} ms per batch", "",
             "| FT part | ms |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in r["ft_ms"].items()] + [f"| **total** | **{ft:.1f}** |", ""]
    lines += ["| SNOW part | ms |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in r["snow_ms"].items()] + [f"| **total** | **{snow:.1f}** |", ""]
    delta_ms = sum(v for k, v in r["snow_ms"].items() if k.startswith("delta"))
    src_ms = r["snow_ms"]["source forward (no grad)"]
    lines += [f"FT ÷ SNOW step time: {ft / snow:.2f}×. FLOPs per image: source forward "
              f"{f['source forward'] / 1e6:.1f} M, delta forward {f['delta forward'] / 1e6:.2f} M "
              f"({100 * f['delta forward'] / f['source forward']:.1f} % of the source); delta forward + backward "
              f"takes {100 * delta_ms / src_ms:.0f} % of the source forward's time.", "",
              f"| delta operator (forward + backward) | calls per step | share of delta {clock.split()[0]} time |",
              "|---|---|---|"]
    lines += [f"| {o['op']} | {o['calls_per_step']} | {100 * o['share']:.1f} % |" for o in r["delta_top_ops"]]
    lines += ["", f"| source forward (no grad) | {clock} ms |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in r["source_forward_ms"].items()]
    return "\n".join(lines) + "\n"


def add_arguments(p: argparse.ArgumentParser, suite: str = "profile") -> None:
    """The ``profile`` suite's options."""
    p.add_argument("--config", default="cpu")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch", type=int)
    p.add_argument("--out", type=Path, help="results folder (default benchmarks/results/tmp/profile)")
    p.add_argument("--product", default="worktree", help="snowhub/ to profile: worktree or a git revision")


def run(args: argparse.Namespace) -> int:
    """Profile in a frozen copy of the code; print and write the results folder."""
    out = args.out or Path("benchmarks/results/tmp/profile")
    code = rerun_in_snapshot("profile", args.argv, args.product, {"--out": out})
    if code is not None:
        return code
    environment = describe_environment() | {"code": snapshot_info()}
    result = profile(args.config, args.repeats, args.batch)
    text = markdown(result)
    print(text)
    command = command_line("profile", args.argv)
    write_results(out, "profile", command, [result], "\n".join(header("profile", command, environment)) + text,
                  settings={"config": args.config, "repeats": args.repeats, "batch": result["batch"]},
                  environment=environment)
    return 0
