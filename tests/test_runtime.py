"""The runtime seam on a real hub: ONNX Runtime against PyTorch (the reference), its graphs cached in the hub and
checked on each task's probe set before use, in process and behind a real uvicorn server asked with httpx."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import httpx
import pytest
import torch
from typer.testing import CliRunner

from fixtures.hubkit import flip_byte, rewrite_task_file, small_dataset
from serve_helpers import assert_error, metric, running
from snowhub import Hub, RunOptions, TrainConfig
from snowhub.data import load_rgb
from snowhub.export.graph_cache import CACHE_DIR
from snowhub.export.onnx_file import ATOL, RTOL
from snowhub.serving.preprocessing import group_by_size, to_batch
from snowhub_cli.main import app as cli

TASKS = ["imagenet", "fashion", "fashion2"]


def _images(*folders: Path, per_class: int = 2) -> list[Path]:
    return [p for folder in folders for d in sorted(folder.iterdir()) if d.is_dir()
            for p in sorted(d.glob("*.png"))[:per_class]]


def _within_tolerance(got: torch.Tensor, want: torch.Tensor) -> None:
    """Same top-1 on every image, every logit within the export tolerance of the image's logit scale."""
    assert torch.equal(got.argmax(1), want.argmax(1))
    bound = ATOL + RTOL * want.abs().amax(1, keepdim=True)
    assert ((got - want).abs() <= bound).all(), float((got - want).abs().max())


def _graphs(hub: Path) -> dict[str, dict]:
    """Cache key → manifest of every graph in the hub's cache."""
    return {p.stem: json.loads(p.read_text()) for p in sorted((hub / CACHE_DIR).glob("*.json"))}


def _ready(c: httpx.Client, seconds: float = 300) -> dict:
    """The ready body once the server is ready (its first start may build and check graphs for a while)."""
    deadline = time.monotonic() + seconds
    while (health := c.get("/v2/health/ready")).status_code != 200 and "still loading" in health.text:
        assert time.monotonic() < deadline, health.text
        time.sleep(0.2)
    return health.json()


@pytest.fixture(scope="module")
def onnx_hub(trained_hub, tmp_path_factory) -> Path:
    """A copy of the test hub with its ONNX Runtime graphs built and checked: the source at 224 px (with its head)
    and at 32 px, and the deltas of fashion and fashion2."""
    hub = tmp_path_factory.mktemp("onnx") / "hub"
    shutil.copytree(trained_hub, hub)
    with Hub.open(hub) as h:
        assert h.predictor("cpu", "onnxruntime").prepare() == {}
    return hub


@pytest.fixture
def onnx_copy(onnx_hub, tmp_path) -> Path:
    return shutil.copytree(onnx_hub, tmp_path / "hub")


def test_both_runtimes_give_the_same_top1_and_logits_within_tolerance_for_every_task(onnx_hub, fashion_dir,
                                                                                     fashion_other_dir):
    paths = _images(fashion_dir / "val", fashion_other_dir)
    pictures = [load_rgb(p) for p in paths]
    assert sorted(m["built_from"]["graph"] for m in _graphs(onnx_hub).values()) == ["delta"] * 2 + ["source"] * 2
    with Hub.open(onnx_hub) as hub:
        reference, onnx = hub.predictor("cpu", "torch"), hub.predictor("cpu", "onnxruntime")
        for size, group in group_by_size(reference.tasks()).items():
            images, names = to_batch(pictures, size, reference.resize_ratio()), [t.name for t in group]
            passes = onnx.runtime.source_passes
            got, want = onnx.logits(images, names), reference.logits(images, names)
            assert onnx.runtime.source_passes == passes + 1  # every task of this size from one source pass
            for name in names:
                _within_tolerance(got[name], want[name])
        assert onnx.runtime.runtimes(TASKS) == dict.fromkeys(TASKS, "onnxruntime") and onnx.runtime.rebuilt == []
        labels = [[[label for label, _ in a] for a in r.tasks.values()] for r in onnx.predict(pictures, paths, top=2)]
        assert labels == [[[label for label, _ in a] for a in r.tasks.values()]
                          for r in reference.predict(pictures, paths, top=2)]
        # a one-off predict with `auto` uses the graphs built and checked before (it builds none itself)
        auto = hub.predictor("cpu", "auto")
        auto.predict(pictures[:1], paths[:1])
        assert auto.runtime.runtimes(TASKS) == dict.fromkeys(TASKS, "onnxruntime")


def test_an_onnx_runtime_server_answers_every_route_and_serves_a_task_added_meanwhile_after_its_probe_check(
        onnx_copy, fashion_dir, tmp_path):
    paths = _images(fashion_dir / "val", per_class=1)
    files = [("file", (p.name, p.read_bytes(), "image/png")) for p in paths]
    by_torch = CliRunner().invoke(cli, ["predict", *map(str, paths), "--runtime", "torch", "--json", "--hub",
                                        str(onnx_copy), "--device", "cpu"])
    assert by_torch.exit_code == 0, by_torch.output
    with Hub.open(onnx_copy) as hub:
        fashion_logits = hub.predictor("cpu", "torch").logits(to_batch([load_rgb(p) for p in paths], 32, 256 / 224),
                                                               ["fashion"])["fashion"]
    with running(onnx_copy, wait_ready=False, runtime="onnxruntime") as s, \
            httpx.Client(base_url=s.url, timeout=60) as c:
        health = _ready(c)
        assert health["ready"] and health["tasks"] == TASKS and health["unavailable"] == {}
        assert health["runtimes"] == dict.fromkeys(TASKS, "onnxruntime") and health["fallbacks"] == {}
        assert c.get("/v2/health/live").status_code == 200
        assert [m["name"] for m in c.get("/v2/models").json()["models"]] == TASKS
        assert c.get("/v2/models/fashion").json()["image_size"] == 32
        assert c.get("/v2/models/fashion/ready").status_code == 200
        answer = c.post("/v1/predict", files=files)
        assert answer.status_code == 200, answer.text
        assert [{t: [a["label"] for a in v] for t, v in r["tasks"].items()} for r in answer.json()] == \
            [{t: [a["label"] for a in v] for t, v in r["tasks"].items()} for r in json.loads(by_torch.stdout)]
        images = to_batch([load_rgb(p) for p in paths], 32, 256 / 224)
        infer = c.post("/v2/models/fashion/infer", json={"inputs": [{
            "name": "images", "shape": list(images.shape), "datatype": "UINT8", "data": images.flatten().tolist()}],
            "outputs": [{"name": "logits"}]})
        assert infer.status_code == 200, infer.text
        logits = torch.tensor(infer.json()["outputs"][0]["data"]).view(len(paths), -1)
        _within_tolerance(logits, fashion_logits)
        assert metric(s.url, "snowhub_source_passes_total") >= 1
        assert "openapi" in c.get("/openapi.json").json()

        # a task added while the server runs: its graph is built off the request path, checked, then used
        with Hub.open(onnx_copy) as writer:
            writer.add_task("late", small_dataset(tmp_path / "late", classes=3, per_class=8),
                            TrainConfig(epochs=1, image_size=32, batch_size=16, run=RunOptions(device="cpu",
                                                                                                num_workers=0)))
            record = writer.registry.get_task("late")
        deadline = time.monotonic() + 240
        while (health := c.get("/v2/health/ready").json())["runtimes"].get("late") != "onnxruntime":
            assert "late" not in health["unavailable"] and time.monotonic() < deadline, health
            time.sleep(0.2)
        assert health["fallbacks"] == {} and s.state.runtime.rebuilt == []
        late = c.post("/v1/predict?tasks=late", files=files)
        assert late.status_code == 200, late.text
        with Hub.open(onnx_copy) as hub:
            expected = hub.predict(paths, ["late"], device="cpu", runtime="torch")
        assert [[a["label"] for a in r["tasks"]["late"]] for r in late.json()] == \
            [[label for label, _ in r.tasks["late"]] for r in expected]
    built = [m["built_from"] for m in _graphs(onnx_copy).values() if m["built_from"]["graph"] == "delta"]
    assert record.weights_file_sha256 in [b["weights_sha256"] for b in built]  # cached for the next start


def test_a_damaged_or_foreign_cached_graph_is_never_served_but_rebuilt(onnx_copy):
    graphs = _graphs(onnx_copy)
    with Hub.open(onnx_copy) as hub:
        sha = {t.name: t.weights_file_sha256 for t in hub.registry.tasks()}
    key = {name: next(k for k, m in graphs.items() if m["built_from"].get("weights_sha256") == digest)
           for name, digest in sha.items()}
    cache = onnx_copy / CACHE_DIR

    def graph(name: str) -> Path:
        return cache / f"{key[name]}.onnx"

    # foreign, its manifest made to match: fashion2's graph in fashion's place, its sha256 in fashion's manifest
    shutil.copy(graph("fashion2"), graph("fashion"))
    (cache / f"{key['fashion']}.json").write_text(
        json.dumps(graphs[key["fashion"]] | {"sha256": graphs[key["fashion2"]]["sha256"]}))
    flip_byte(graph("fashion2"), 5000)  # damaged: one byte of fashion2's graph flipped

    with Hub.open(onnx_copy) as hub:
        onnx = hub.predictor("cpu", "onnxruntime")
        assert onnx.prepare() == {}
        rebuilt = sorted(onnx.runtime.rebuilt)
        assert len(rebuilt) == 2 and rebuilt[0].startswith("task 'fashion': on its probe set")  # sha256 matched
        assert rebuilt[1].startswith("task 'fashion2': ") and rebuilt[1].endswith("(damaged)")
        assert onnx.runtime.runtimes(TASKS) == dict.fromkeys(TASKS, "onnxruntime")
    after = _graphs(onnx_copy)
    for name in ("fashion", "fashion2"):  # rebuilt in place: whole, and built from what they should be
        assert hashlib.sha256(graph(name).read_bytes()).hexdigest() == after[key[name]]["sha256"]
        assert after[key[name]]["built_from"] == graphs[key[name]]["built_from"]


def test_a_graph_that_fails_its_probe_check_is_not_served(onnx_copy, fashion_dir):
    paths = _images(fashion_dir / "val", per_class=1)

    def shifted(tensors: dict) -> dict:  # the recorded probe logits no longer what the delta computes
        tensors["logits"] = tensors["logits"] + 0.5
        return tensors

    rewrite_task_file(onnx_copy, 1, "probe", shifted)  # fashion; its file hashes and seal made to match
    with Hub.open(onnx_copy) as hub:
        auto = hub.predictor("cpu", "auto")  # answers it by PyTorch, with the reason
        answers = auto.predict([load_rgb(p) for p in paths], paths, ["fashion", "fashion2"])
        assert auto.runtime.runtimes(["fashion", "fashion2"]) == {"fashion": "torch", "fashion2": "onnxruntime"}
        assert "probe set" in auto.runtime.fallbacks(["fashion"])["fashion"]
        expected = hub.predict(paths, ["fashion", "fashion2"], device="cpu", runtime="torch")
        assert [{t: [label for label, _ in a] for t, a in r.tasks.items()} for r in answers] == \
            [{t: [label for label, _ in a] for t, a in r.tasks.items()} for r in expected]
        assert [r.tasks["fashion"] for r in answers] == [r.tasks["fashion"] for r in expected]  # PyTorch's own
    # strict (`snowhub serve --runtime onnxruntime`): the task is refused with the reason, the others served
    with running(onnx_copy, wait_ready=False, runtime="onnxruntime") as s, \
            httpx.Client(base_url=s.url, timeout=60) as c:
        health = _ready(c)
        assert "probe set" in health["unavailable"]["fashion"] and health["runtimes"]["fashion2"] == "onnxruntime"
        assert_error(c.post("/v1/predict?tasks=fashion", files=[("file", ("a.png", paths[0].read_bytes()))]), 503,
                     "probe set")
        upload = [("file", ("a.png", paths[0].read_bytes()))]
        assert c.post("/v1/predict?tasks=fashion2", files=upload).status_code == 200
