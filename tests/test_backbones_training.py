"""Training paths on discovered sources (issue 25): `add-task --cache-features` on a timm ViT (token taps), two
DDP processes on a timm ConvNeXt, and a DINOv2-style patch-14 ViT through init → add-task
→ predict. Random weights, real Fashion-MNIST images, small sizes, one epoch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import FAST, write_fashion
from fixtures.hubkit import REPO, task_names
from snowhub import Hub, TrainConfig
from snowhub.errors import SourceError
from snowhub_cli.main import app

SIZE = 32
TRAIN = ["--epochs", "1", "--image-size", str(SIZE), "--batch-size", "8", "--seed", "0", "--device", "cpu",
         "--workers", "0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Three Fashion-MNIST classes, eight training images each (enough for two ranks of four)."""
    return write_fashion(tmp_path_factory.mktemp("backbones-training") / "data", "train", per_class=8)


def _cli(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def _init(source: str, hub: Path) -> None:
    made = _cli("init", "--source", source, "--weights", "random", "--image-size", SIZE, "--hub", hub)
    assert made.exit_code == 0, made.output


def _verified_bit_identical(hub: Path) -> None:
    verified = _cli("verify-forgetting", "--json", "--hub", hub, "--device", "cpu")
    assert verified.exit_code == 0, verified.output
    report = json.loads(verified.output)
    assert report["ok"] and [(t["name"], t["verdict"]) for t in report["tasks"]] == [("shoes", "bit-identical")]


def test_a_timm_vit_trains_from_its_cached_taps(data, tmp_path):
    """The cache holds the taps as the delta reads them: the ViT's tokens already folded into maps."""
    hub = tmp_path / "hub"
    _init("timm:vit_tiny_patch16_224", hub)
    added = _cli("add-task", "shoes", "--data", data, *TRAIN, "--cache-features", "--hub", hub)
    assert added.exit_code == 0, added.output
    with Hub.open(hub) as h:
        row = h.registry.get_task("shoes")
        (answer,) = h.predict([sorted(data.rglob("*.png"))[0]], device="cpu", runtime="torch")
    # The taps were cached once and every step read them.
    assert row.hyperparams["feature_cache"] is True and 0 < row.metrics["cache_seconds"] < row.train_seconds
    assert list(answer.tasks) == ["shoes"] and len(answer.tasks["shoes"]) == 3
    assert list((hub / "staging").iterdir()) == []
    _verified_bit_identical(hub)


def test_two_processes_train_one_delta_on_a_timm_source(data, tmp_path):
    hub = tmp_path / "hub"
    _init("timm:convnext_atto", hub)
    done = subprocess.run([sys.executable, "-m", "snowhub_cli", "add-task", "shoes", "--data", str(data), *TRAIN,
                           "--nproc-per-node", "2", "--json", "--hub", str(hub)],
                          capture_output=True, text=True, env=dict(os.environ), cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    assert task_names(hub) == ["shoes"] and "Traceback" not in done.stderr
    with Hub.open(hub) as h:
        recorded = h.task("shoes").to_dict()["hyperparams"]
    assert (recorded["processes"], recorded["image_size"], recorded["batch_size"]) == (2, SIZE, 8)
    _verified_bit_identical(hub)


def test_a_dinov2_style_patch_14_vit_takes_a_task_and_answers(data, tmp_path):
    """timm's vit_small_patch14_dinov2 (random weights) at 42 px: 3 × 3 patches of 14 px, one class token."""
    with Hub.init(tmp_path / "hub", "timm:vit_small_patch14_dinov2", weights="random", image_size=42) as hub:
        taps = hub.source_record().taps
        assert [(t["name"], t["channels"], t["stride"], t["layout"], t["prefix_tokens"]) for t in taps] == [
            (f"blocks.{i}", 384, 14, "NLC", 1) for i in (2, 5, 8, 11)]
        with pytest.raises(SourceError, match=r"does not take 40x40 px images .*divisible by patch size \(14\)"):
            hub.add_task("shoes", data, TrainConfig(**(FAST | {"epochs": 1, "image_size": 40})))
        info = hub.add_task("shoes", data, TrainConfig(**(FAST | {"epochs": 1, "image_size": 42, "batch_size": 8})))
        assert [t["stride"] for t in hub.registry.get_task("shoes").hyperparams["delta_shape"]["taps"]] == [14] * 4
        (answer,) = hub.predict([sorted(data.rglob("*.png"))[0]], device="cpu", runtime="torch")
        assert info.name == "shoes" and list(answer.tasks) == ["shoes"] and len(answer.tasks["shoes"]) == 3
        assert hub.verify_forgetting("cpu").ok
