"""Task versions on the server, in exports and in bundles: a real uvicorn server follows aliases and retirements
of another process within its poll interval, without a restart, under load from several clients.

The hub is a copy of the session hub with a second version of `fashion`: the `fashion2` task imported as
``--as fashion --new-version`` (no training), so the two versions tell apart by their classes and logits.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import zipfile

import httpx
import pytest
import torch
from typer.testing import CliRunner

from conftest import CLASSES
from fixtures.hubkit import assert_one_line_error
from serve_helpers import assert_error, running
from snowhub import Hub
from snowhub.data import eval_transform, load_rgb
from snowhub_cli.main import app as cli

pytestmark = pytest.mark.serial  # latency and switch-over times: scripts/test.sh runs this file alone

V1 = sorted(CLASSES.values())  # fashion@1's classes (fashion_dir)
V2 = sorted(["T-shirt_top", "Sneaker", "Ankle_boot"])  # fashion@2's: fashion2's, imported as its next version


def _cli(*args) -> object:
    return CliRunner().invoke(cli, [str(a) for a in args])


def _eventually(check, timeout: float = 15.0):
    """`check()`'s first truthy value, asked every 50 ms (an AssertionError after `timeout` s)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, "the server did not follow the registry in time"
        time.sleep(0.05)


def _oip(images: torch.Tensor) -> dict:
    return {"inputs": [{"name": "images", "shape": list(images.shape), "datatype": "UINT8",
                        "data": images.flatten().tolist()}]}


@pytest.fixture(scope="module")
def versioned(trained_hub, fashion_dir, tmp_path_factory) -> dict:
    """A hub with fashion@1 and fashion@2 (made with `export task` and `import --as fashion --new-version`), two
    uint8 images and each version's logits for them from the in-process predictor."""
    hub = tmp_path_factory.mktemp("versions") / "hub"
    shutil.copytree(trained_hub, hub)
    bundle = hub.parent / "fashion2.snowtask"
    assert _cli("export", "task", "fashion2", "--output", bundle, "--hub", hub).exit_code == 0
    result = _cli("import", bundle, "--as", "fashion", "--new-version", "--allow-unsigned", "--hub", hub)
    assert result.exit_code == 0 and "'fashion' version 2" in result.output, result.output
    paths = [p for d in sorted((fashion_dir / "val").iterdir()) for p in sorted(d.glob("*.png"))[:1]]
    transform = eval_transform(32, 1.0)
    images = torch.stack([transform(load_rgb(p)) for p in paths])
    with Hub.open(hub) as h:
        predictor = h.predictor("cpu", "torch")
        logits = {v: predictor.logits(images, [f"fashion@{v}"])[f"fashion@{v}"] for v in (1, 2)}
    return {"hub": hub, "bundle": bundle, "paths": paths, "images": images, "logits": logits}


@pytest.fixture(scope="module")
def server(versioned):
    with running(versioned["hub"], max_wait_ms=5) as s:
        yield s


def _version_of(body: dict, versioned: dict) -> str:
    """The version an OIP answer says it came from, checked against that version's own logits."""
    version = body["model_version"]
    logits = next(o for o in body["outputs"] if o["name"] == "logits")
    expected = versioned["logits"][int(version)][:logits["shape"][0]]
    assert torch.allclose(torch.tensor(logits["data"]).view(expected.shape), expected, atol=1e-4), version
    return version


def test_an_alias_moved_under_load_switches_versions_with_no_failed_request(versioned, server):
    """Three clients ask without pause while another process moves `production` 1 → 2 → 1: every answer comes
    whole from one of the two versions, and each move is followed within the poll interval."""
    answers: list[tuple[float, str]] = []  # (when the request was sent, the version that answered)
    failures: list[str] = []
    stop = threading.Event()
    files = [("file", (p.name, p.read_bytes(), "image/png")) for p in versioned["paths"]]

    def client(i: int) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            while not stop.is_set():
                sent, r = time.monotonic(), None
                try:
                    if i == 2:  # /v1/predict: the version shows in the labels it answers with
                        r = c.post("/v1/predict?tasks=fashion&top=3", files=files)
                        labels = sorted(a["label"] for a in r.json()[0]["tasks"]["fashion"])
                        version = {tuple(V1): "1", tuple(V2): "2"}[tuple(labels)]
                    else:
                        r = c.post("/v2/models/fashion/infer", json=_oip(versioned["images"]))
                        version = _version_of(r.json(), versioned)
                    answers.append((sent, version))
                except Exception as error:  # noqa: BLE001 - every failure is reported below
                    failures.append(f"{type(error).__name__}: {error} ({r and r.status_code}: {r and r.text[:200]})")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    switched = []
    try:
        with Hub.open(versioned["hub"]) as h:
            for version in ("1", "2", "1"):
                h.set_alias("fashion", "production", int(version))
                moved = time.monotonic()
                _eventually(lambda: any(at > moved and v == version for at, v in answers[-6:]))
                switched.append(time.monotonic() - moved)
                seen = time.monotonic()
                _eventually(lambda: sum(at > seen for at, _ in answers) >= 6)
                assert {v for at, v in answers if at > seen} == {version}, "an answer from the version moved off"
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not failures, failures[:3]
    assert {v for _, v in answers} == {"1", "2"} and len(answers) > 30
    assert max(switched) < 5, switched  # poll 0.2 s; generous for a loaded 2-core machine
    with Hub.open(versioned["hub"]) as h:
        h.delete_alias("fashion", "production")


def test_version_routes_list_and_pin_versions_and_follow_aliases(versioned, server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        # no alias: the bare name is the latest version
        _eventually(lambda: c.get("/v2/models/fashion").json()["version"] == "2")
        listing = {m["name"]: m for m in c.get("/v2/models").json()["models"]}
        assert (listing["fashion"]["version"], listing["fashion"]["versions"]) == ("2", ["1", "2"])
        assert listing["fashion2"]["versions"] == ["1"] and listing["imagenet"]["versions"] == ["1"]
        meta = c.get("/v2/models/fashion").json()
        assert (meta["versions"], meta["version"], meta["aliases"]) == (["1", "2"], "2", {})
        assert sorted(meta["classes"]) == V2
        old = c.get("/v2/models/fashion/versions/1").json()
        assert (old["version"], sorted(old["classes"]), old["seq"]) == ("1", V1, 1)
        assert c.get("/v2/models/fashion@1").json() == old
        for route in ("/v2/models/fashion/versions/1/infer", "/v2/models/fashion@1/infer"):
            assert _version_of(c.post(route, json=_oip(versioned["images"])).json(), versioned) == "1"
        assert _version_of(c.post("/v2/models/fashion/infer", json=_oip(versioned["images"])).json(), versioned) == "2"

        with Hub.open(versioned["hub"]) as h:
            h.set_alias("fashion", "staging", 1)
        _eventually(lambda: c.get("/v2/models/fashion").json()["aliases"] == {"staging": "1"})
        route = "/v2/models/fashion/versions/staging/infer"
        assert _version_of(c.post(route, json=_oip(versioned["images"])).json(), versioned) == "1"
        answer = c.post("/v1/predict?tasks=fashion,fashion@staging&top=3", files=[
            ("file", (p.name, p.read_bytes(), "image/png")) for p in versioned["paths"][:1]]).json()[0]["tasks"]
        assert sorted(a["label"] for a in answer["fashion"]) == V2
        assert sorted(a["label"] for a in answer["fashion@staging"]) == V1

        one = _oip(versioned["images"][:1])
        assert_error(c.post("/v2/models/fashion/versions/9/infer", json=one), 404, "no version 9")
        assert_error(c.post("/v2/models/fashion/versions/0/infer", json=one), 404, "no version '0'")
        assert_error(c.get("/v2/models/fashion/versions/nope/ready"), 404, "no alias 'nope'")
        assert_error(c.post("/v2/models/fashion@1@2/infer", json=one), 400, "invalid task reference")
        with Hub.open(versioned["hub"]) as h:
            h.delete_alias("fashion", "staging")


def test_a_retired_version_is_not_served_nor_predicted_until_restored(versioned, server):
    one = _oip(versioned["images"][:1])
    files = [("file", (p.name, p.read_bytes(), "image/png")) for p in versioned["paths"][:1]]
    with httpx.Client(base_url=server.url, timeout=60) as c, Hub.open(versioned["hub"]) as h:
        h.retire("fashion@1")
        error = _eventually(lambda: (r := c.post("/v2/models/fashion/versions/1/infer", json=one)).status_code == 404
                            and r)
        assert_error(error, 404, "fashion@1 is retired; bring it back with `snowhub restore fashion@1`")
        assert_error(c.post("/v1/predict?tasks=fashion@1", files=files), 404, "retired")
        assert c.get("/v2/models/fashion").json()["versions"] == ["2"]
        assert list(h.predict(versioned["paths"][:1], device="cpu")[0].tasks) == ["imagenet", "fashion", "fashion2"]

        h.retire("fashion@2")  # every version retired: the name is served no more, and not predicted
        _eventually(lambda: "fashion" not in [m["name"] for m in c.get("/v2/models").json()["models"]])
        assert list(c.post("/v1/predict", files=files).json()[0]["tasks"]) == ["imagenet", "fashion2"]
        assert_error(c.post("/v2/models/fashion/infer", json=one), 404, "every version of 'fashion' is retired")
        assert list(h.predict(versioned["paths"][:1], device="cpu")[0].tasks) == ["imagenet", "fashion2"]
        predicted = _cli("predict", versioned["paths"][0], "--all", "--json", "--device", "cpu", "--hub",
                         versioned["hub"])
        assert list(json.loads(predicted.stdout)[0]["tasks"]) == ["imagenet", "fashion2"], predicted.output

        h.restore("fashion@1")  # back without a restart, as the latest version served
        _eventually(lambda: c.get("/v2/models/fashion").json().get("version") == "1")
        assert _version_of(c.post("/v2/models/fashion/infer", json=one).json(), versioned) == "1"
        h.restore("fashion@2")
        _eventually(lambda: c.get("/v2/models/fashion").json()["versions"] == ["1", "2"])


def test_bundles_and_onnx_exports_take_references(versioned, tmp_path):
    """`export task` and `export onnx` take references; `import --new-version` needs the task, plain `import` a
    free name; every refusal one line with nothing written."""
    hub = versioned["hub"]
    exported = _cli("export", "task", "fashion@1", "--output", tmp_path / "v1.snowtask", "--hub", hub, "--json")
    assert exported.exit_code == 0 and json.loads(exported.stdout)["task"] == "fashion@1", exported.output
    with zipfile.ZipFile(tmp_path / "v1.snowtask") as zf:
        task = json.loads(zf.read("task.json"))
    assert (task["name"], task["version"], task["seq"], sorted(task["class_names"])) == ("fashion", 1, 1, V1)

    before = sorted(p.name for p in (hub / "tasks").iterdir())
    assert_one_line_error(_cli("import", versioned["bundle"], "--as", "fashion", "--allow-unsigned", "--hub", hub),
                          "--new-version")
    assert_one_line_error(_cli("import", versioned["bundle"], "--as", "birds", "--new-version", "--allow-unsigned",
                               "--hub", hub), "no task named 'birds'")
    assert_one_line_error(_cli("export", "task", "fashion@7", "--output", tmp_path / "x.snowtask", "--hub", hub),
                          "no version 7")
    assert_one_line_error(_cli("export", "onnx", "fashion@1", "fashion@2", "--output", tmp_path / "x", "--hub", hub),
                          "two versions of one task")
    assert sorted(p.name for p in (hub / "tasks").iterdir()) == before
    assert not (tmp_path / "x.snowtask").exists() and not (tmp_path / "x").exists()

    # fashion@1 resolves, then the sizes are refused (32 px and the head's 224 px): a full export of a pinned
    # version (labels.json with its classes, the card's "fashion (version 1)") costs too long to run here
    assert_one_line_error(_cli("export", "onnx", "fashion@1", "imagenet", "--output", tmp_path / "x", "--hub", hub),
                          "different sizes")
    with Hub.open(hub) as h:
        h.retire("fashion@1")
        try:
            assert_one_line_error(_cli("export", "onnx", "fashion@1", "--output", tmp_path / "x", "--hub", hub),
                                  "fashion@1 is retired")
            assert_one_line_error(_cli("export", "task", "fashion@1", "--output", tmp_path / "x.snowtask", "--hub",
                                       hub), "fashion@1 is retired")
        finally:
            h.restore("fashion@1")
    assert not (tmp_path / "x.snowtask").exists() and not (tmp_path / "x").exists()


def test_on_postgresql_the_server_follows_an_alias_and_a_retirement_too(versioned, fresh_database):
    """The same hub's registry copied into PostgreSQL (`snowhub registry copy`), served from there."""
    one = _oip(versioned["images"][:1])
    Hub.copy_registry(versioned["hub"], fresh_database)
    with running(versioned["hub"], registry_url=fresh_database) as s, httpx.Client(base_url=s.url, timeout=60) as c, \
            Hub.open(versioned["hub"], registry=fresh_database) as h:
        assert (c.get("/v2/models/fashion").json()["versions"], c.get("/v2/models/fashion").json()["version"]) == \
            (["1", "2"], "2")
        h.set_alias("fashion", "production", 1)
        _eventually(lambda: c.get("/v2/models/fashion").json()["version"] == "1")
        assert _version_of(c.post("/v2/models/fashion/infer", json=one).json(), versioned) == "1"
        h.retire("fashion@2")
        _eventually(lambda: c.get("/v2/models/fashion").json()["versions"] == ["1"])
        assert_error(c.post("/v2/models/fashion/versions/2/infer", json=one), 404, "fashion@2 is retired")
