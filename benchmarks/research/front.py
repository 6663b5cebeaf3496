"""Issue 28: accuracy against the parameters a task adds, every method and SNOW at several budgets, and the
candidate changes that should keep SNOW at or above a linear probe (FO) with little data or few steps.

    python -m benchmarks front --epochs 2 --seeds 0,1,2 --datasets fashion,mnist,digits,fashion30 \\
        --data DATA --out DIR [--methods FO,FE-paper,FE,FT,SNOW,...] [--image-size 32]
    python -m benchmarks front --report DIR [DIR ...] --out DIR   # table.md, rows per method, front_<ds>.png

One process trains every (seed, dataset, method) in turn with the harness's ``run_training`` (the product's
loop, loaders and update rule; one compute thread, no loader process) and appends one JSON line per run to
``DIR/rows.jsonl``; a rerun skips the runs already there, so a grid can be stopped and resumed. The
configuration is ``cpu``'s recipe (batch 64, the product's SNOW learning rates, the baselines' 0.025) at
`--image-size` px with 60 training and 30 validation images per class (``fashion30``: Fashion-MNIST with 30
per class, the small-data set), one evaluation per epoch.

Methods: ``FO``, ``FE`` (shown as FE-stage: the source's last stage retrained), ``FE-paper`` (a few new
layers on the second-to-last tap, :class:`benchmarks.baselines.PaperFeatureExtraction`), ``FT``, ``SNOW``
(the product), and SNOW variants:

* ``SNOW gate``: the classifier's columns on the delta's own features are multiplied by a learnable scalar
  gate that starts at 0, so step 0 is a linear probe on the last tap and the delta enters as the gate opens;
* ``SNOW head``: the classifier reads the source's pre-logit map (efficientnet_lite0's ``_bn1``, 1280
  channels: FO's features before the activation) instead of the last block's 320 channels; the delta's
  widths stay the product's;
* ``SNOW head gate``: both;
* ``SNOW clf-lr``: the classifier at FO's learning rate (``config.lr``), the rest of the delta at the product's;
* ``FO lr0.1`` (any baseline with `` lr0.1``): the baseline at SNOW's peak learning rate, 0.1, instead of
  the paper's 0.1 × 64/256 = 0.025 (with a few dozen steps the paper's rate leaves FO far from converged);
  ``SNOW lr0.05`` (any SNOW method with `` lrX``): the delta's peak learning rate X instead of the product's
  0.1 (the scores keep their ×10);
* ``SNOW@BUDGET`` (``SNOW@500k``, ``SNOW@2.68M``: FE-stage's size): the product's delta at the width divisor and K ratio that
  ``snowhub.models.budget.fit_budget`` (``add-task --budget``) picks for that many parameters.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

from benchmarks.configs import DatasetSpec, Job, SnowVariant, get_config

DATASETS = {"fashion": (DatasetSpec("fashion", "fashion", hflip=True), 60),
            "mnist": (DatasetSpec("mnist", "mnist", hflip=False), 60),
            "digits": (DatasetSpec("digits", "digits", hflip=False), 60),
            "fashion30": (DatasetSpec("fashion30", "fashion", hflip=True), 30)}
DEFAULT_METHODS = "FO,FE-paper,FE,FT,SNOW,SNOW gate,SNOW head,SNOW head gate,SNOW clf-lr,SNOW@500k,SNOW@2.68M"


def parse_budget(text: str) -> int:
    """``"500k"`` → 500000, ``"2.7M"`` → 2700000, ``"140000"`` → 140000."""
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1].lower(), 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def split_rate(method: str) -> tuple[str, dict[str, float]]:
    """``"FO lr0.1"`` → ``("FO", {"lr": 0.1})``; ``"SNOW gate lr0.05"`` → ``("SNOW gate", {"snow_lr": 0.05})``
    (SNOW's delta has its own rate); ``"SNOW"`` → ``("SNOW", {})``."""
    name, _, rate = method.partition(" lr")
    if not rate:
        return method, {}
    return name, {"snow_lr" if name.startswith("SNOW") else "lr": float(rate)}


class GatedClassifier(nn.Module):
    """``linear(concat(gate · delta features, last tap))``: the delta's `width` columns scaled by a learnable
    scalar that starts at 0 (so the task starts as a linear probe on the last tap)."""

    def __init__(self, linear: nn.Linear, width: int):
        super().__init__()
        self.linear, self.width = linear, width
        self.gate = nn.Parameter(torch.zeros(1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        gated = torch.cat([features[:, :self.width] * self.gate, features[:, self.width:]], dim=1)
        return self.linear(gated)


@contextlib.contextmanager
def _snow_variant(method: str, pretrained, config):
    """Patch the harness/product for SNOW variant `method`; yields the :class:`SnowVariant` to train."""
    import benchmarks.snow as snow_module
    import benchmarks.training_job as job_module
    from snowhub.models.budget import fit_budget
    from snowhub.models.sources import Tap

    variant, spec = SnowVariant(), pretrained.spec
    build, groups = snow_module.build_delta, job_module.delta_param_groups
    if "@" in method:
        choice = fit_budget(spec.block, spec.taps, 10, parse_budget(method.split("@")[1]))
        variant = SnowVariant(k_ratio=choice.k_ratio, width_divisor=choice.width_divisor)
    if "head" in method:
        last = spec.taps[-1]
        pretrained.spec = dataclasses.replace(spec, taps=spec.taps[:-1] + (Tap("_bn1", 1280, last.stride, last.blocks),))

        def build_head(s, num_classes, v, noise_var, reduction=16):
            delta_shape = snow_module.delta_shape(spec, num_classes, v, noise_var)
            from snowhub.models.delta import Delta

            return Delta(dataclasses.replace(delta_shape, taps=pretrained.spec.taps, ks=delta_shape.ks[:-1] + (1280,)))

        snow_module.build_delta = job_module.build_delta = build_head
    if "gate" in method:
        inner = job_module.build_delta

        def build_gated(*a, **k):
            delta = inner(*a, **k)
            delta.classifier = GatedClassifier(delta.classifier, delta.shape.widths[-1])
            return delta

        job_module.build_delta = build_gated
    if method == "SNOW clf-lr":
        def clf_groups(delta, lr, score_lr_scale, weight_decay):
            out = groups(delta, lr, score_lr_scale, weight_decay)
            clf = {id(p) for p in delta.classifier.parameters()}
            out[0]["params"] = [p for p in out[0]["params"] if id(p) not in clf]
            return out + [{"params": list(delta.classifier.parameters()), "weight_decay": config.weight_decay,
                           "lr": config.lr}]

        job_module.delta_param_groups = clf_groups
    try:
        yield variant
    finally:
        pretrained.spec = spec
        snow_module.build_delta = job_module.build_delta = build
        job_module.delta_param_groups = groups


def _train_one(method: str, dataset: str, seed: int, args, pretrained, device) -> dict:
    from benchmarks.training_job import run_training
    from snowhub.progress import SilentProgress

    spec, per_class = DATASETS[dataset]
    config = get_config("cpu").replace(image_size=args.image_size, epochs=args.epochs, seed=seed, evals_per_epoch=1,
                                       max_train_per_class=per_class, max_val_per_class=30, num_workers=0, threads=1)
    started = time.perf_counter()
    method_run, rate = split_rate(method)
    if rate:
        config = config.replace(**rate)
    if method.startswith("SNOW"):
        with _snow_variant(method_run, pretrained, config) as variant:
            result = run_training(config, Job("train", "SNOW", dataset, variant), spec, args.data.resolve(),
                                  pretrained, device, SilentProgress())
    else:
        result = run_training(config, Job("train", method_run, dataset), spec, args.data.resolve(), pretrained, device,
                              SilentProgress())
    return {"method": method, "dataset": dataset, "seed": seed, "epochs": args.epochs, "image_size": args.image_size,
            "top1": result["top1"], "curve": [p["top1"] for p in result["loop"]["curve"]],
            "params": result["params"], "train_images": result["dataset"]["train_images"],
            "val_images": result["dataset"]["val_images"], "seconds": round(time.perf_counter() - started, 1)}


def run_grid(args: argparse.Namespace) -> int:
    from benchmarks.backbones import load_pretrained

    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    rows_path = args.out / "rows.jsonl"
    done = set()
    if rows_path.exists():
        done = {(r["method"], r["dataset"], r["seed"], r["epochs"]) for r in map(json.loads, rows_path.read_text().splitlines())}
    pretrained = load_pretrained("efficientnet_lite0")
    device = torch.device("cpu")
    for seed in map(int, args.seeds.split(",")):
        for dataset in args.datasets.split(","):
            for method in args.methods.split(","):
                if (method, dataset, seed, args.epochs) in done:
                    continue
                row = _train_one(method, dataset, seed, args, pretrained, device)
                with rows_path.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(f"{method:>16} {dataset:>9} seed {seed} {args.epochs} ep: {row['top1']:6.2f} % "
                      f"({row['params']['task']} params, {row['seconds']} s)", file=sys.stderr, flush=True)
    return 0


def add_arguments(p: argparse.ArgumentParser, suite: str = "front") -> None:
    """The ``front`` suite's options."""
    p.add_argument("--report", nargs="+", type=Path, metavar="DIR", help="tabulate and plot these grids' rows.jsonl")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--datasets", default="fashion30,fashion,mnist,digits")
    p.add_argument("--methods", default=DEFAULT_METHODS)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--data", type=Path, default=Path("benchmarks/results/tmp/data"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/tmp/front"))


def run(args: argparse.Namespace) -> int:
    """Train the grid, or with ``--report`` write its table and plots."""
    if args.report:
        from benchmarks.research.front_report import report

        return report(args.report, args.out)
    return run_grid(args)
