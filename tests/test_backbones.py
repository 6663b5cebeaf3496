"""Any timm or torchvision backbone as the source (issue 25): a matrix of architectures from different families
at random weights and 32 px, each through `snowhub init` → `add-task` (one epoch on real Fashion-MNIST
images) → `predict --all` → `verify-forgetting`; two of them (a ViT and a torchvision model) through the CLI
and also `export onnx` checked by ONNX Runtime and a bundle exported and imported into a second hub. Then what the taps are, `--taps`, `--weights FILE`, and every bad input in one line."""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub
import numpy as np
import onnxruntime as ort
import pytest
import timm
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from conftest import FAST, write_fashion
from snowhub import Hub, TrainConfig
from snowhub.errors import SourceError
from snowhub.models.sources import get_spec
from snowhub_cli.main import app

SIZE = 32
TRAIN = ["--epochs", "1", "--image-size", str(SIZE), "--batch-size", "8", "--seed", "0", "--device", "cpu",
         "--workers", "0"]
# (source, block family the delta is built from, tap layout). FULL also go through ONNX and a bundle.
FULL = [
    ("timm:vit_tiny_patch16_224", "basic", "NLC"),
    ("torchvision:mobilenet_v3_small", "inverted_residual", "NCHW"),
    ("timm:convnext_atto", "basic", "NCHW"),
]
SHORT = [
    ("timm:resnet10t", "basic", "NCHW"),
    ("timm:regnetx_002", "bottleneck", "NCHW"),
    ("timm:tf_efficientnetv2_b0", "inverted_residual", "NCHW"),
    ("timm:ghostnet_050", "basic", "NCHW"),
    ("timm:mambaout_femto", "basic", "NHWC"),
]


def _cli(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    """Three Fashion-MNIST classes, five training images each."""
    return write_fashion(tmp_path_factory.mktemp("backbones") / "data", "train", per_class=5)


def _one_image(data: Path) -> Path:
    return sorted(data.rglob("*.png"))[0]


def _chain(source: str, family: str, layout: str, data: Path, hub: Path) -> dict:
    """init → add-task → predict --all → verify-forgetting; returns the source record as --json printed it."""
    made = _cli("init", "--source", source, "--weights", "random", "--image-size", SIZE, "--hub", hub, "--json")
    assert made.exit_code == 0, made.output
    record = json.loads(made.output)
    added = _cli("add-task", "shoes", "--data", data, *TRAIN, "--hub", hub)
    assert added.exit_code == 0, added.output
    with Hub.open(hub) as h:
        task = h.registry.get_task("shoes")
        assert task.hyperparams["delta_shape"]["block"] == family
        assert [t.get("layout", "NCHW") for t in h.source_record().taps] == [layout] * len(h.source_record().taps)
    predicted = _cli("predict", _one_image(data), "--all", "--json", "--hub", hub)
    assert predicted.exit_code == 0, predicted.output
    answer = json.loads(predicted.output)[0]
    assert set(answer["tasks"]) == {"shoes"}  # random weights: no ImageNet head served as task 0
    verified = _cli("verify-forgetting", "--json", "--hub", hub, "--device", "cpu")
    assert verified.exit_code == 0, verified.output
    assert json.loads(verified.output)["bwt"] == 0.0
    return record


@pytest.mark.parametrize("source, family, layout", SHORT, ids=[s for s, _, _ in SHORT])
def test_a_source_of_any_family_takes_a_task_and_never_forgets_it(source, family, layout, small_data, tmp_path):
    """The same chain through the library in one session (the source is built once, not once per command)."""
    with Hub.init(tmp_path / "hub", source, weights="random", image_size=SIZE) as hub:
        assert hub.source_record().weights_origin == "random" and hub.source_record().head_classes is None
        assert {t.get("layout", "NCHW") for t in hub.source_record().taps} == {layout}
        config = TrainConfig(**(FAST | {"epochs": 1, "batch_size": 8}))
        info = hub.add_task("shoes", small_data, config)
        assert hub.registry.get_task("shoes").hyperparams["delta_shape"]["block"] == family
        (answer,) = hub.predict([str(_one_image(small_data))], None, 3, "cpu")
        assert list(answer.tasks) == ["shoes"] and len(answer.tasks["shoes"]) == 3
        report = hub.verify_forgetting("cpu")
        assert report.ok and report.bwt == 0.0 and info.name == "shoes"


@pytest.mark.parametrize("source, family, layout", FULL, ids=[s for s, _, _ in FULL])
def test_a_source_of_any_layout_exports_to_onnx_and_bundles(source, family, layout, small_data, tmp_path):
    hub = tmp_path / "hub"
    _chain(source, family, layout, small_data, hub)
    exported = _cli("export", "onnx", "--all", "--output", tmp_path / "onnx", "--hub", hub)
    assert exported.exit_code == 0, exported.output
    with Hub.open(hub) as h:
        images = h.artifacts(torch.device("cpu")).probe(h.registry.get_task("shoes")).images[:3]
        expected = h.predictor("cpu").logits(images, ["shoes"])["shoes"].numpy()
    session = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"images": images.numpy()})
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)
    assert _cli("export", "task", "shoes", "--output", tmp_path / "shoes.snowtask", "--hub", hub).exit_code == 0
    second = tmp_path / "second"
    assert _cli("init", "--source", source, "--weights", "random", "--image-size", SIZE, "--hub", second).exit_code == 0
    imported = _cli("import", tmp_path / "shoes.snowtask", "--allow-unsigned", "--hub", second)
    assert imported.exit_code == 0 and "bit-identical" in imported.output, imported.output
    with Hub.open(second) as h:
        bundle_source = h.source_record()
        assert bundle_source.name == source  # the architecture id is the source's identity, with the weights' sha256


def test_convnext_at_224_px_taps_one_map_per_stage_and_records_how_to_rebuild_it():
    spec = get_spec("timm:convnext_atto")
    assert [(t.name, t.channels, t.stride) for t in spec.taps] == [
        ("stages.0", 40, 4), ("stages.1", 80, 8), ("stages.2", 160, 16), ("stages.3", 320, 32)]
    assert [t.blocks for t in spec.taps] == [2, 2, 6, 2] and spec.head == "head.fc"
    cfg = timm.create_model("convnext_atto").pretrained_cfg
    assert spec.preprocessing == {"mean": list(cfg["mean"]), "std": list(cfg["std"]), "image_size": 224,
                                  "resize": round(224 / cfg["crop_pct"]), "crop": 224, "interpolation": "bicubic"}


def test_a_vit_is_tapped_at_the_end_of_four_equal_groups_of_blocks_as_maps():
    spec = get_spec("timm:vit_tiny_patch16_224", image_size=64)
    assert [(t.name, t.stride, t.blocks, t.prefix_tokens) for t in spec.taps] == [
        ("blocks.2", 16, 3, 1), ("blocks.5", 16, 3, 1), ("blocks.8", 16, 3, 1), ("blocks.11", 16, 3, 1)]
    tokens = torch.arange(2 * 17 * 192, dtype=torch.float32).view(2, 17, 192)
    grid = spec.taps[0].to_map(tokens, 64, 64)
    assert grid.shape == (2, 192, 4, 4) and torch.equal(grid[1, :, 0, 1], tokens[1, 2])  # class token dropped


def test_torchvision_taps_are_the_last_block_output_at_each_stride():
    spec = get_spec("torchvision:resnet18", image_size=64)
    assert [(t.name, t.stride, t.blocks) for t in spec.taps] == [
        ("relu", 2, 1), ("layer1.1.relu_1", 4, 2), ("layer2.1.relu_1", 8, 2), ("layer3.1.relu_1", 16, 2),
        ("layer4.1.relu_1", 32, 2)]
    assert spec.block == "basic" and spec.head == "fc" and spec.torchvision_weights == "ResNet18_Weights.IMAGENET1K_V1"
    regnet = get_spec("torchvision:regnet_x_400mf", image_size=64)  # blocks named block1-0, block1-1, …
    assert [(t.name, t.stride, t.blocks) for t in regnet.taps] == [
        ("stem", 2, 1), ("trunk_output.block1.block1-0.activation", 4, 1), ("trunk_output.block2.block2-1.activation", 8, 2),
        ("trunk_output.block3.block3-6.activation", 16, 7), ("trunk_output.block4.block4-11.activation", 32, 12)]


def test_taps_named_on_the_command_line_replace_the_discovered_ones(tmp_path):
    made = _cli("init", "--source", "timm:resnet10t", "--weights", "random", "--taps", "layer2,layer4",
                "--image-size", SIZE, "--hub", tmp_path / "hub", "--json")
    assert made.exit_code == 0, made.output
    with Hub.open(tmp_path / "hub") as h:
        assert h.source_record().taps == [{"name": "layer2", "channels": 128, "stride": 8, "blocks": 1},
                                          {"name": "layer4", "channels": 512, "stride": 32, "blocks": 1}]


def test_weights_file_of_the_whole_model_or_its_backbone(tmp_path):
    model = timm.create_model("resnet10t")
    whole = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(whole, tmp_path / "whole.safetensors")
    torch.save({k: v for k, v in whole.items() if not k.startswith("fc.")}, tmp_path / "backbone.pt")
    with Hub.init(tmp_path / "a", "timm:resnet10t", weights=tmp_path / "whole.safetensors", image_size=SIZE) as h:
        assert h.source_record().head_classes[:2] == ["tench", "goldfish"]  # task 0: the ImageNet-1k head
        digest = h.source_record().tensors_sha256
        assert h.source_record().weights_origin.startswith("file:")
    with Hub.init(tmp_path / "b", "timm:resnet10t", weights=tmp_path / "backbone.pt", image_size=SIZE) as h:
        assert h.source_record().head_classes is None
        state = h.artifacts(torch.device("cpu")).source().backbone_state_dict()
    assert digest and all(torch.equal(state[k], v) for k, v in whole.items() if k in state and not k.startswith("fc."))


def _refused(tmp_path: Path, *args: object) -> str:
    result = _cli("init", *args, "--hub", tmp_path / "hub")
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and not (tmp_path / "hub").exists()
    return lines[0]


def test_bad_sources_are_refused_in_one_line_and_nothing_is_written(tmp_path):
    assert "did you mean convnext_atto" in _refused(tmp_path, "--source", "timm:convnext_atoo", "--weights", "random")
    assert "resnet18" in _refused(tmp_path, "--source", "torchvision:resnet81", "--weights", "random")
    assert "timm:<arch>" in _refused(tmp_path, "--source", "vgg")
    assert "not a feature map" in _refused(tmp_path, "--source", "timm:resnet10t", "--weights", "random",
                                           "--taps", "global_pool.flatten")
    assert "does not take 40 px" in _refused(tmp_path, "--source", "timm:vit_tiny_patch16_224", "--weights",
                                             "random", "--image-size", "40")


def test_weights_that_do_not_fit_name_the_first_bad_tensor_and_its_shape(tmp_path, monkeypatch):
    state = {k: v.contiguous() for k, v in timm.create_model("resnet10t").state_dict().items()}
    state["conv1.0.weight"] = torch.zeros(24, 3, 5, 5)
    save_file(state, tmp_path / "bad.safetensors")
    line = _refused(tmp_path, "--source", "timm:resnet10t", "--weights", tmp_path / "bad.safetensors")
    assert "'conv1.0.weight' is (24, 3, 5, 5) in the file, (24, 3, 3, 3) in the model" in line
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # tests never download
    with pytest.raises(SourceError, match="no pretrained weights for timm:resnet10t: .*`weights` random"):
        Hub.init(tmp_path / "c", "timm:resnet10t")  # nothing in the Hugging Face cache
    assert not (tmp_path / "c").exists()


def test_sources_lists_the_built_in_names_and_how_to_name_any_model():
    result = _cli("sources")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[:4] == ["resnet50", "resnet18", "mobilenet_v2", "efficientnet_lite0"]
    assert any(line.startswith("timm:<arch>") for line in lines)
    assert any(line.startswith("torchvision:<arch>") for line in lines)


@pytest.mark.parametrize("source", ["timm:vit_tiny_patch16_224", "timm:mambaout_femto"])
def test_low_memory_training_forward_and_fused_serving_read_token_and_nhwc_taps_as_maps(source):
    from snowhub.models.delta import Delta, DeltaShape
    from snowhub.models.frozen import FrozenSource
    from snowhub.models.fused import FusedDeltas
    from snowhub.models.network import task_logits
    from snowhub.models.staged import StagedForward
    from snowhub.models.weights import random_weights

    spec = get_spec(source, image_size=SIZE)
    backbone = spec.build()
    backbone.load_state_dict(random_weights(spec))
    frozen = FrozenSource(spec, backbone, has_head=False)
    torch.manual_seed(0)
    delta = Delta(DeltaShape.from_ratios(spec.block, spec.taps, 8, 1 / 8, 3)).eval()
    images = torch.randint(0, 256, (4, 3, SIZE, SIZE), dtype=torch.uint8)
    expected = task_logits(frozen, delta, images)
    torch.testing.assert_close(StagedForward(frozen, delta, source_chunk=2)(images), expected, rtol=1e-5, atol=1e-6)
    delta.freeze_channel_pooling()
    x = frozen.normalizer(images)
    taps, _ = frozen(x)
    (fused,) = FusedDeltas([delta])(x, taps)
    torch.testing.assert_close(fused, delta(x, taps), rtol=1e-5, atol=1e-5)


def test_timm_pretrained_weights_come_from_the_hugging_face_cache_offline(tmp_path, monkeypatch):
    """A cache laid out as huggingface_hub writes it (refs/main → snapshots/<rev>/model.safetensors)."""
    repo = timm.models.get_pretrained_cfg("resnet10t").hf_hub_id
    model = timm.create_model("resnet10t")
    torch.nn.init.constant_(model.fc.bias, 0.25)  # weights unlike any random initialisation
    folder = tmp_path / "hf" / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0123abcd")
    (folder / "snapshots" / "0123abcd").mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "snapshots" / "0123abcd" / "model.safetensors")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with Hub.init(tmp_path / "hub", "timm:resnet10t", image_size=SIZE) as h:
        assert h.source_record().weights_origin == f"timm:{repo}"
        assert h.source_record().head_classes[:1] == ["tench"]
        state = h.artifacts(torch.device("cpu")).source().backbone_state_dict()
    assert torch.equal(state["fc.bias"], torch.full((1000,), 0.25))


def test_add_task_at_a_size_the_source_refuses_is_one_line_and_leaves_the_hub_as_it_was(small_data, tmp_path):
    with Hub.init(tmp_path / "hub", "timm:vit_tiny_patch16_224", weights="random", image_size=SIZE) as hub:
        config = TrainConfig(**(FAST | {"epochs": 1, "image_size": 40}))
        with pytest.raises(SourceError, match=r"^timm:vit_tiny_patch16_224 does not take 40x40 px images \(Input "
                                              r"height \(40\) should be divisible by patch size \(16\)\.\)"):
            hub.add_task("shoes", small_data, config)
        assert hub.tasks() == [] and not any((tmp_path / "hub" / "tasks").glob("*"))
