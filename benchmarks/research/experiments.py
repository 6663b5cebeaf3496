"""Experiments behind docs/benchmarks.md's "why is SNOW behind" section: candidate product changes, tried
here by patching the product from the outside (the product itself is unchanged).

    python -m benchmarks experiment NAME [--config cpu] [--dataset fashion] [--product REV] [--out DIR]
                                         [--seed N] [--set FIELD=VALUE ...]

Each experiment trains SNOW (the ``SNOW`` job of the configuration) with one change, in a frozen copy of
the code (:mod:`benchmarks.snapshot`), and writes a results folder (:mod:`benchmarks.output`) whose one row
is the same result as a benchmark job's; ``python -m benchmarks seeds`` reads such folders. Names:

* ``baseline``: no change (re-measured beside the others);
* ``epochs6``: 6 epochs instead of the configuration's;
* ``lr_paper``: the paper's SNOW learning rate, 1.0 at batch 256, scaled linearly to the batch size;
* ``head_tap``: the last tap moves from ``_blocks.15`` (320 channels) to ``_bn1`` (the 1280 channels
  efficientnet_lite0's own classifier reads), so the delta can subscribe to the source's best features;
* ``expand3``: the delta's inverted-residual blocks expand 3× instead of 6×;
* ``min_width4``: the delta's stages may be as narrow as 4 channels instead of 8 (``MIN_WIDTH``), so the
  first stages of a lean source are closer to its width ÷ 8;
* ``spread_0.5``, ``spread_1``: channel pooling scores start at 1 + s·N(0, 1) with s = 0.5 or 1 instead of
  the product's ``INIT_SPREAD``, so fewer channels sit within the noise σ of the top-K boundary;
* ``std_floor``: channel pooling's calibrated standard deviation is floored at 0.1 × the tap's median,
  so a channel that is (almost) constant on the calibration images cannot be amplified 10⁵×.
* ``start_at_fo``: the classifier's weights on the delta's own features start at zero (DTL's zero-initialised
  side branch, LoRA's B = 0), so at step 0 the task is exactly a linear probe (FO) on the source's last tap
  and the delta can only add to it (issue 14, idea 2).
* ``pruned_copy``: each delta stage starts from the weights of the source blocks it mirrors on the
  channels ranked highest by BatchNorm |γ|, and each channel pooling layer on the next-ranked source
  channels (Ladder Side-Tuning's start; ``benchmarks/research/pruned_copy.py``; issue 14, idea 1).
* ``bf16_source``: the training source runs under bfloat16 autocast (``StagedForward(source_dtype=bfloat16)``),
  the delta in float32 (issue 15: is the reduced-precision source exact enough to train on?).

The experiments that became product defaults (the classifier reading the whole last tap, channel pooling
slots, spread initial scores) were removed with issue 23: on today's product they changed nothing; so was
``headless_source``, whose source is bypassed by today's staged training forward (``python -m benchmarks
profile`` still times the source stopping at its last tap).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import sys
from pathlib import Path

import torch

from benchmarks.backbones import Pretrained, load_pretrained
from benchmarks.configs import Job, SnowVariant, get_config
from benchmarks.environment import describe_environment
from benchmarks.memory import peak_rss_mib
from benchmarks.output import command_line, header, write_results
from benchmarks.run import DEFAULT_DATA
from benchmarks.snapshot import rerun_in_snapshot, snapshot_info
from benchmarks.training_job import run_training
from benchmarks.worker import JsonLinesProgress, setup_torch
from snowhub.models.channel_pooling import ChannelPooling
from snowhub.models.sources import Tap


@contextlib.contextmanager
def _replaced(owner: object, attr: str, value: object):
    """Set ``owner.attr = value`` for the duration of the block (a class's staticmethod is restored as one)."""
    original = inspect.getattr_static(owner, attr)
    setattr(owner, attr, value)
    try:
        yield
    finally:
        setattr(owner, attr, original)


def _replacement(name: str) -> tuple[object, str, object] | None:
    """``(owner, attribute, new value)`` that applies experiment `name` to the product, or None."""
    import snowhub.models.channel_pooling as channel_pooling_module
    import snowhub.models.delta as delta_module

    if name == "expand3":
        block = delta_module.InvertedResidual
        return delta_module, "InvertedResidual", lambda cin, cout, stride, expand_ratio: block(cin, cout, stride, 3)
    if name == "min_width4":
        return delta_module, "MIN_WIDTH", 4
    if name.startswith("spread_"):
        return channel_pooling_module, "INIT_SPREAD", float(name.removeprefix("spread_"))
    if name == "start_at_fo":
        init = delta_module.Delta._init_weights

        def zero_delta_columns(self):
            init(self)
            torch.nn.init.zeros_(self.classifier.weight[:, :self.shape.widths[-1]])  # concat(delta, last tap)

        return delta_module.Delta, "_init_weights", zero_delta_columns
    if name == "std_floor":
        calibrate = ChannelPooling.calibrate
        return ChannelPooling, "calibrate", lambda self, mean, std: calibrate(
            self, mean, std.clamp_min(0.1 * float(std.median())))
    return None


@contextlib.contextmanager
def patched(name: str, pretrained: Pretrained):
    """Apply experiment `name` to the product (and `pretrained`) for the duration of the block."""
    if name == "head_tap":
        taps = pretrained.spec.taps[:-1] + (Tap("_bn1", 1280, 32, pretrained.spec.taps[-1].blocks),)
        pretrained.spec = dataclasses.replace(pretrained.spec, taps=taps)
    replacement = _replacement(name)
    if name == "pruned_copy":
        import snowhub.models.delta as delta_module
        from benchmarks.research.pruned_copy import apply_pruned_copy

        init = delta_module.Delta._init_weights

        def pruned_copy_init(self):
            init(self)
            apply_pruned_copy(self, pretrained.model)

        replacement = (delta_module.Delta, "_init_weights", pruned_copy_init)
    with _replaced(*replacement) if replacement else contextlib.nullcontext():
        yield


class SelectionRecorder:
    """Records, for every training step and channel pooling layer: the share of its K channels that
    changed since the previous step (1 = a completely new subset, 0 = the same subset), how far its
    selected scores moved, and how many channels sit within one noise σ of the top-K boundary (the ones
    the noise can swap in or out)."""

    def __init__(self):
        self.churn: dict[int, list[float]] = {}
        self.score_step: dict[int, list[float]] = {}
        self.boundary: dict[int, list[int]] = {}
        self.selected_mean: dict[int, list[float]] = {}
        self._last: dict[int, tuple[set, torch.Tensor]] = {}
        self._original = ChannelPooling.select

    def __enter__(self) -> "SelectionRecorder":
        recorder, original = self, self._original

        def select(pool):
            idx = original(pool)
            if pool.training and not bool(pool.frozen):
                recorder._record(pool, idx)
            return idx

        ChannelPooling.select = select
        return self

    def _record(self, pool: ChannelPooling, idx: torch.Tensor) -> None:
        current, scores, key = set(idx.tolist()), pool.scores.detach().float().cpu().clone(), id(pool)
        if key in self._last:
            last_set, last_scores = self._last[key]
            self.churn.setdefault(key, []).append(1 - len(current & last_set) / pool.k)
            self.score_step.setdefault(key, []).append(float((scores - last_scores)[idx.cpu()].abs().mean()))
        self.selected_mean.setdefault(key, []).append(float(scores[idx.cpu()].mean()))
        if pool.k < pool.channels:
            ranked = scores.sort(descending=True).values
            threshold = float(ranked[pool.k - 1] + ranked[pool.k]) / 2
            self.boundary.setdefault(key, []).append(int(((scores - threshold).abs() < pool.noise_std).sum()))
        self._last[key] = (current, scores)

    def __exit__(self, *exc) -> None:
        ChannelPooling.select = self._original

    @staticmethod
    def _per(series: dict[int, list], every: int, digits: int) -> list[list[float]]:
        return [[round(sum(c[i:i + every]) / len(c[i:i + every]), digits) for i in range(0, len(c), every)]
                for c in series.values()]

    def summary(self, every: int = 10) -> dict[str, list[list[float]]]:
        """Per channel pooling layer (tap order), means over each run of `every` steps."""
        return {"selection_churn_per_10_steps": self._per(self.churn, every, 3),
                "selected_score_step_per_10_steps": self._per(self.score_step, every, 5),
                "selected_score_mean_per_10_steps": self._per(self.selected_mean, every, 3),
                "channels_within_noise_sigma_of_boundary_per_10_steps": self._per(self.boundary, every, 1)}


EXPERIMENTS = ("baseline", "epochs6", "lr_paper", "head_tap", "expand3", "min_width4",
               "spread_0.5", "spread_1", "std_floor", "start_at_fo", "bf16_source", "pruned_copy")


def add_arguments(p: argparse.ArgumentParser, suite: str = "experiment") -> None:
    """The ``experiment`` suite's options."""
    p.add_argument("name", choices=EXPERIMENTS)
    p.add_argument("--config", default="cpu")
    p.add_argument("--dataset", default="fashion")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--out", type=Path, help="results folder (default benchmarks/results/tmp/experiments/"
                                           "NAME[-SETTINGS]-DATASET[-seedS])")
    p.add_argument("--product", default="worktree", help="snowhub/ to patch: worktree or a git revision")
    p.add_argument("--seed", type=int, default=None, help="override the configuration's seed")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a numeric configuration field, e.g. --set snow_lr=0.05 (repeatable)")


def _configure(args: argparse.Namespace):
    config = get_config(args.config)
    if args.seed is not None:
        config = config.replace(seed=args.seed)
    for override in args.overrides:
        field_name, _, value = override.partition("=")
        config = config.replace(**{field_name: type(getattr(config, field_name))(float(value))})
    if args.name == "epochs6":
        config = config.replace(epochs=6)
    if args.name == "lr_paper":
        config = config.replace(snow_lr=1.0 * config.batch_size / 256, score_lr_scale=1.0)
    return config


def run(args: argparse.Namespace) -> int:
    """Train SNOW with experiment ``args.name`` in a frozen copy of the code; write the results folder."""
    stem = "-".join([args.name, *(o.replace("=", "") for o in args.overrides), args.dataset]
                    + ([] if args.seed is None else [f"seed{args.seed}"]))
    out = args.out or DEFAULT_DATA.parent / "experiments" / stem
    # in a frozen copy of the code, as benchmark jobs are
    code = rerun_in_snapshot("experiment", args.argv, args.product, {"--out": out, "--data": args.data})
    if code is not None:
        return code
    config = _configure(args)
    environment = describe_environment() | {"code": snapshot_info()}
    device = setup_torch(config)
    pretrained = load_pretrained(config.source)
    dataset = next(d for d in config.datasets if d.name == args.dataset)
    with patched(args.name, pretrained), SelectionRecorder() as recorder:
        # bf16_source: the training source under bfloat16 autocast (StagedForward), the delta in float32.
        variant = SnowVariant(source_precision="bfloat16") if args.name == "bf16_source" else SnowVariant()
        result = run_training(config, Job("train", "SNOW", dataset.name, variant), dataset, args.data.resolve(),
                              pretrained, device, JsonLinesProgress())
    result |= {"experiment": args.name, "overrides": args.overrides, "seed": config.seed, "rss_peak_mib": peak_rss_mib()}
    loop = result["loop"]
    line = (f"{args.name}: top-1 {result['top1']:.2f} %, top-5 {result['top5']:.2f} %, {loop['images_per_s']:.1f} "
            f"images/s, {loop['images_per_cpu_s']:.1f} images/CPU-s, delta {result['params']['task']} params")
    command = command_line("experiment", args.argv)
    write_results(out, "experiment", command, [result], "\n".join(header("experiment", command, environment)) + line,
                  settings=config.to_dict() | {"experiment": args.name, "overrides": args.overrides},
                  environment=environment, summary=recorder.summary())
    print(line, file=sys.stderr)
    return 0
