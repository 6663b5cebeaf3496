"""Checks of the benchmark harness: ``.venv/bin/pytest benchmarks/tests`` (about 2 minutes); ``pytest`` and
``scripts/test.sh`` run them with the rest of the suite.

They need the offline efficientnet_lite0 weights (the ``offline`` extra); the images are generated here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.backbones import load_pretrained, suffix_after_tap
from benchmarks.baselines import build_baseline
from benchmarks.configs import CONFIGS, DatasetSpec, Job, SnowVariant
from benchmarks.snow import build_delta
from benchmarks.training_job import load_split, run_training
from snowhub.models.channel_pooling import ChannelPooling
from snowhub.progress import SilentProgress
from snowhub.training import DeltaConfig, RunOptions, TrainConfig, train_delta

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pretrained():
    return load_pretrained("efficientnet_lite0")


@pytest.fixture(scope="module")
def images_dir(tmp_path_factory) -> Path:
    """A train/val ImageFolder of 3 classes of seeded 28×28 grey images (class = brightness band)."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for part, n in (("train", 12), ("val", 4)):
        for c in range(3):
            (root / part / f"c{c}").mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(60 * c, 60 * c + 100, (28, 28)).astype(np.uint8)
                Image.fromarray(pixels, mode="L").save(root / part / f"c{c}" / f"{i}.png")
    return root


def test_snow_job_trains_through_the_product_loop_and_measures_its_curve(pretrained, images_dir):
    """The SNOW job's model is the product's (same losses and accuracy as ``train_delta`` with the same seed),
    and what it reports is read off the product loop's hooks: a validation point every half epoch, the images
    and training seconds at each."""
    config = CONFIGS["smoke"].replace(image_size=32, batch_size=8, epochs=2, max_train_per_class=None,
                                      max_val_per_class=None, device="cpu", evals_per_epoch=2, skip_steps=1)
    dataset = DatasetSpec("toy", str(images_dir))
    ours = run_training(config, Job("train", "SNOW", "toy"), dataset, images_dir, pretrained,
                        torch.device("cpu"), SilentProgress())
    product = train_delta(
        pretrained.frozen_source(), load_split(dataset, images_dir, config),
        TrainConfig(epochs=2, batch_size=8, lr=config.snow_lr, score_lr_scale=config.score_lr_scale,
                    weight_decay=config.weight_decay, warmup_epochs=config.warmup_epochs, image_size=32,
                    hflip=True, seed=config.seed,
                    delta=DeltaConfig(k_ratio=1 / 8, width_divisor=8, noise_var=config.noise_var),
                    run=RunOptions(device="cpu", num_workers=0)),
        torch.device("cpu"))
    loop = ours["loop"]
    assert loop["epoch_losses"] == [h["train_loss"] for h in product.history]
    assert loop["step_losses"] == product.step_losses[:20]
    # 36 training images, batch 8: 4 steps per epoch; validations after steps 2 and 4 of each epoch.
    assert [(p["epoch"], p["images"]) for p in loop["curve"]] == [(0.5, 16), (1.0, 32), (1.5, 48), (2.0, 64)]
    assert [p["top1"] for p in loop["curve"][1::2]] == [h["val_top1"] for h in product.history]
    assert ours["top1"] == product.val.top1 and loop["images"] == 64
    seconds = [p["train_seconds"] for p in loop["curve"]]
    assert seconds == sorted(seconds) and seconds[-1] == loop["train_seconds"]


def test_fe_suffix_continues_the_source(pretrained):
    """FE serving: the part after the second-to-last tap, fed that tap, gives the full network's logits."""
    source = pretrained.frozen_source()
    x = source.normalizer(torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8))
    taps, logits = source(x)
    with torch.no_grad():
        out = suffix_after_tap(pretrained.spec, pretrained.copy().eval(), -2)(taps[-2])
    torch.testing.assert_close(out, logits, rtol=1e-4, atol=1e-4)


def _trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_baselines_train_what_their_definition_says(pretrained):
    fo, fe, ft, mp, pn = (build_baseline(m, pretrained, 5) for m in ("FO", "FE", "FT", "MP", "PN"))
    assert _trainable(fo) == {"backbone._fc.weight", "backbone._fc.bias"}
    assert "backbone._blocks.11._project_conv.weight" in _trainable(fe)
    assert not any(n.startswith("backbone._blocks.10.") for n in _trainable(fe))
    assert _trainable(ft) == {n for n, _ in ft.named_parameters()}
    assert all("_bn" in n or "_fc" in n for n in _trainable(mp))
    assert not any(n.startswith("source.") for n in _trainable(pn)) and "laterals.0.0.weight" in _trainable(pn)
    for model in (fo, fe, mp):
        model.train()
    assert not fo.backbone._bn1.training and fo.backbone._dropout.training
    assert not fe.backbone._blocks[10].training and fe.backbone._blocks[11].training
    assert mp.backbone._bn0.training
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    for model in (fo, fe, ft, mp, pn):
        assert model(images).shape == (2, 5)


@pytest.mark.parametrize("subscription", ["channel_pooling", "conv1x1", "attention", "all"])
def test_subscription_alternatives_plug_into_the_delta(pretrained, subscription):
    spec = pretrained.spec
    delta = build_delta(spec, 5, SnowVariant(subscription=subscription), 1e-3)
    keep_all = subscription in ("attention", "all")
    stage_taps, last = spec.taps[:-1], spec.taps[-1]  # the classifier reads all of the last tap
    assert delta.shape.ks == tuple(t.channels if keep_all else max(1, round(t.channels / 8)) for t in stage_taps) \
        + (last.channels,)
    assert all(isinstance(p, ChannelPooling) for p in delta.pools) == (subscription in ("channel_pooling", "all"))
    source = pretrained.frozen_source()
    x = source.normalizer(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    taps, _ = source(x)
    for pool, tap, k in zip(delta.pools, taps, delta.shape.ks):
        assert pool(tap).shape == (2, k, *tap.shape[2:])
    assert delta(x, taps).shape == (2, 5)


def _run(argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run `argv` in its own process group; past `timeout` seconds (or on any interruption, e.g. pytest-timeout)
    the whole group, its worker processes included, is killed."""
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException as exc:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, err = proc.communicate()
        if not isinstance(exc, subprocess.TimeoutExpired):
            raise
        pytest.fail(f"{' '.join(argv)} did not finish in {timeout:.0f} s; its stderr ends:\n{err[-3000:]}")
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def test_smoke_configuration_runs_end_to_end(tmp_path):
    """``python -m benchmarks methods --config smoke`` finishes every job and writes the report; its ratios are
    those of the jobs' own measurements. FT and SNOW only (with the configuration's variants and serving): the
    other methods' jobs are the same harness with another network, checked one by one above."""
    run = tmp_path / "run"
    argv = ["methods", "--config", "smoke", "--methods", "FT,SNOW", "--out", str(run)]
    done = _run([sys.executable, "-m", "benchmarks", *argv], timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((run / "results.json").read_text())
    assert (report["schema"], report["suite"]) == (1, "methods")
    assert report["command"] == f"python -m benchmarks {' '.join(argv)}"
    assert report["settings"]["methods"] == ["FT", "SNOW"]
    summary, rows = report["summary"], report["rows"]
    assert summary["failed"] == []
    assert len(rows) == len(report["settings"]["methods"]) + len(report["settings"]["variants"]) + 1
    snow, ft = (next(r for r in rows if r["job"]["label"] == f"{m} · fashion") for m in ("SNOW", "FT"))
    ratios = summary["datasets"]["fashion"]["ratios"]
    assert snow["loop"]["images_per_s"] > 0 and ft["loop"]["images_per_s"] > 0
    assert ratios["snow_over_ft_train_images_per_s"] == pytest.approx(snow["loop"]["images_per_s"]
                                                                      / ft["loop"]["images_per_s"])
    assert ratios["ft_over_snow_memory"] == pytest.approx(ft["memory"]["training_mib"] / snow["memory"]["training_mib"])
    assert ratios["snow_minus_ft_top1"] == pytest.approx(snow["top1"] - ft["top1"])
    assert snow["params"]["trainable"] < ft["params"]["trainable"] / 5  # the delta, not a copy of the source
    serve = next(r for r in rows if r["job"]["kind"] == "serve")["table"]
    assert summary["serving_ratios"]["snow_over_ft_serving_images_per_s"] == pytest.approx(
        serve["SNOW"]["images_per_s"] / serve["FT"]["images_per_s"])
    assert f"SNOW ÷ FT training images/s: **{ratios['snow_over_ft_train_images_per_s']:.2f}×**" in (
        run / "results.md").read_text()
    assert {p.name for p in run.iterdir()} >= {"results.md", "results.json", "serving.png", "training_fashion.png"}
