"""`snowhub export onnx`: one graph (the source once, every delta), verified with ONNX Runtime, with its card.

The session hub (efficientnet_lite0, tasks 'fashion' and 'fashion2' at 32 px) is exported once per module
through the CLI (other sources go through the same export in tests/test_backbones.py's matrix). The card's
ONNX Runtime example is run as written, on real images, and must give the top-1 of `snowhub predict`.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from PIL import Image
from typer.testing import CliRunner

from fixtures.hubkit import snapshot
from snowhub import Hub
from snowhub.export import ExportError
from snowhub.export import onnx_file
from snowhub_cli.main import app


def _cli(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def exported(trained_hub, tmp_path_factory) -> dict:
    """`snowhub export onnx --all` of the session hub, once: the directory and what --json printed."""
    out = tmp_path_factory.mktemp("onnx") / "fashion-onnx"
    result = _cli("export", "onnx", "--all", "--output", out, "--hub", trained_hub, "--json")
    assert result.exit_code == 0, result.output
    return {"dir": out, "report": json.loads(result.stdout)}


def _front_matter(card: str) -> dict:
    """The card's YAML front matter; every value is one line of JSON (which is YAML too)."""
    head = card.split("---\n")[1]
    return {key: json.loads(value) for key, value in (line.split(": ", 1) for line in head.splitlines())}


def _example(card: str) -> str:
    return re.search(r"```python\n(.*?)```", card, re.S).group(1)


def test_export_writes_a_graph_with_a_dynamic_batch_and_one_output_per_task(exported, trained_hub):
    out, report = exported["dir"], exported["report"]
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "labels.json", "model.onnx", "preprocessing.json"]
    assert not list(out.parent.glob(".*.tmp"))  # the temporary directory was renamed, nothing else left
    model = onnx.load(out / "model.onnx")
    onnx.checker.check_model(model)
    (inp,) = model.graph.input
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert inp.name == "images" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert dims == ["batch", 3, 32, 32]
    assert [o.name for o in model.graph.output] == ["logits_fashion", "logits_fashion2"]
    assert report["tasks"] == ["fashion", "fashion2"] and report["opset"] == 18
    assert report["files"]["model.onnx"] == (out / "model.onnx").stat().st_size
    v = report["verification"]
    assert v["batches"] == [1, 16] and v["top1_agree"] and 0 <= v["max_abs_diff"] < 1e-2
    with Hub.open(trained_hub) as hub:
        assert json.loads((out / "labels.json").read_text()) == {t: hub.task(t).classes for t in ("fashion", "fashion2")}
        pre = json.loads((out / "preprocessing.json").read_text())
        assert (pre["size"], pre["resize"]) == (32, round(32 * 256 / 224))
        assert pre["mean"] == hub.source_record().preprocessing["mean"]


def test_the_source_is_in_the_graph_once_and_channel_pooling_is_a_gather_of_the_frozen_indices(exported, trained_hub):
    graph = onnx.load(exported["dir"] / "model.onnx").graph
    constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    constants |= {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node if n.op_type == "Constant"}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            if name.startswith("network.source.extractor."):
                uses[name] = uses.get(name, 0) + 1
    assert len(uses) > 90 and set(uses.values()) == {1}  # every source weight feeds exactly one node
    assert not [n.op_type for n in graph.node if n.op_type.startswith("Random")]  # no selection noise
    gathers = [constants[n.input[1]].tolist() for n in graph.node
               if n.op_type == "Gather" and any(a.name == "axis" and a.i == 1 for a in n.attribute)]
    with Hub.open(trained_hub) as hub:
        for task in ("fashion", "fashion2"):
            for tap, indices in hub.task(task).details["cp_indices"].items():
                assert indices in gathers, f"{task}: channel pooling of {tap} is not a gather of its frozen indices"


def test_onnx_runtime_answers_as_the_predictor_at_any_batch_size(exported, trained_hub):
    session = ort.InferenceSession(str(exported["dir"] / "model.onnx"), providers=["CPUExecutionProvider"])
    with Hub.open(trained_hub) as hub:
        images = torch.cat([hub.artifacts(torch.device("cpu")).probe(r).images for r in hub.registry.tasks()])[:5]
        expected = hub.predictor("cpu").logits(images, ["fashion", "fashion2"])
    got = dict(zip(["fashion", "fashion2"], session.run(None, {"images": images.numpy()})))
    for task, logits in expected.items():
        assert got[task].shape == (5, 3)
        np.testing.assert_allclose(got[task], logits.numpy(), rtol=1e-3, atol=1e-5)
        assert (got[task].argmax(1) == logits.numpy().argmax(1)).all()


def test_card_front_matter_follows_the_hugging_face_convention(exported, trained_hub):
    meta = _front_matter((exported["dir"] / "README.md").read_text())
    with Hub.open(trained_hub) as hub:
        source = hub.source_record()
        assert meta["library_name"] == "snowhub" and meta["base_model_relation"] == "adapter"
        assert meta["base_model"] == "efficientnet_lite0" and meta["base_model_sha256"] == source.weights_file_sha256
        assert {"snowhub", "onnx", "efficientnet_lite0"} <= set(meta["tags"])
        (entry,) = meta["model-index"]
        for result, task in zip(entry["results"], ("fashion", "fashion2"), strict=True):
            info = hub.task(task)
            assert result["task"]["name"] == task
            metrics = {m["name"]: m["value"] for m in result["metrics"]}
            assert metrics == {"val top-1": round(info.val_top1, 2), "val top-5": round(info.val_top5, 2)}
            assert result["dataset"]["args"]["train_images"] == info.details["dataset"]["train_images"]


def test_the_card_example_runs_and_gives_the_top1_of_predict(exported, trained_hub, fashion_dir, monkeypatch,
                                                             tmp_path):
    card = (exported["dir"] / "README.md").read_text()
    code = _example(card)
    assert len(code.strip().splitlines()) <= 14
    images = sorted((fashion_dir / "val").rglob("*.png"))[::4]  # 9 real images, every class
    for image in images[:3]:  # as 16-bit PNGs too: `convert("RGB")` alone would clip them to white
        wide = np.asarray(Image.open(image).convert("L"), dtype=np.uint16) * 257
        Image.fromarray(wide).save(tmp_path / f"16bit-{image.name}")
        images.append(tmp_path / f"16bit-{image.name}")
    with Hub.open(trained_hub) as hub:
        predicted = hub.predict(images, ["fashion", "fashion2"], top=1, device="cpu")
    monkeypatch.chdir(exported["dir"])
    for image, prediction in zip(images, predicted):
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(code.replace('"photo.jpg"', repr(str(image))), {})  # the card's code, as written
        answers = dict(line.split(" ", 1) for line in printed.getvalue().splitlines())
        assert answers == {task: labels[0][0] for task, labels in prediction.tasks.items()}, image


def test_a_graph_that_disagrees_with_pytorch_is_refused_and_leaves_nothing(exported, trained_hub, tmp_path,
                                                                          monkeypatch):
    """ONNX Runtime really runs a wrong graph: the real export with one task's classifier bias changed."""
    model = onnx.load(exported["dir"] / "model.onnx")
    bias = next(i for i in model.graph.initializer if i.name.endswith("fashion.classifier.bias"))
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + np.float32(0.5), bias.name))

    def wrong_graph(network, example, opset, path):
        onnx.save(model, path)

    monkeypatch.setattr(onnx_file, "export_graph", wrong_graph)
    before = snapshot(trained_hub)
    with Hub.open(trained_hub) as hub, pytest.raises(ExportError, match="disagrees with PyTorch on task 'fashion'"):
        hub.export_onnx(None, tmp_path / "out")
    assert list(tmp_path.iterdir()) == [] and snapshot(trained_hub) == before


@pytest.mark.parametrize("args, message", [
    (["fashion", "imagenet"], "served at different sizes (fashion at 32 px; imagenet at 224 px)"),
    (["nope"], "no task named 'nope'"),
    (["--all", "--opset", "11"], "--opset 11 is too old for the dynamo exporter"),
])
def test_bad_export_requests_are_one_line_and_write_nothing(trained_hub, tmp_path, args, message):
    result = _cli("export", "onnx", *args, "--output", tmp_path / "out", "--hub", trained_hub)
    assert result.exit_code == 1 and message in result.output and len(result.output.strip().splitlines()) <= 2
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


def test_an_existing_output_directory_is_never_overwritten(trained_hub, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep")
    result = _cli("export", "onnx", "--all", "--output", tmp_path / "out", "--hub", trained_hub)
    assert result.exit_code == 1 and "not an empty directory" in result.output
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["mine.txt"]
