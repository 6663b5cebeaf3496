"""`snowhub serve`: a real uvicorn server on 127.0.0.1 around real hubs, asked with a real HTTP client (httpx)."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch
from typer.testing import CliRunner

from fixtures.hubkit import SNOWHUB, assert_one_line_error, flip_byte, small_dataset
from serve_helpers import assert_error, free_port, metric, running
from snowhub import Hub, __version__
from snowhub.data import eval_transform, load_rgb
from snowhub_cli.main import app as cli

TESTS = Path(__file__).resolve().parent


def _images(fashion_dir: Path, per_class: int = 2) -> list[Path]:
    return [p for d in sorted((fashion_dir / "val").iterdir()) for p in sorted(d.glob("*.png"))[:per_class]]


def _uint8(paths: list[Path], size: int = 32) -> torch.Tensor:
    transform = eval_transform(size, 1.0)
    return torch.stack([transform(load_rgb(p)) for p in paths])


def _oip(images: torch.Tensor, **extra) -> dict:
    return {"inputs": [{"name": "images", "shape": list(images.shape), "datatype": "UINT8",
                        "data": images.flatten().tolist()}], **extra}


def _files(paths: list[Path]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("file", (p.name, p.read_bytes(), "image/png")) for p in paths]


def _same_answers(served: list[dict], expected) -> None:
    """Labels identical, probabilities (%) within 1e-4, for every image and task, in the same order."""
    assert len(served) == len(expected)
    for got, want in zip(served, expected):
        assert list(got["tasks"]) == list(want.tasks)
        for task, answers in want.tasks.items():
            assert [a["label"] for a in got["tasks"][task]] == [label for label, _ in answers]
            assert max(abs(a["probability"] - p) for a, (_, p) in zip(got["tasks"][task], answers)) < 1e-4


def test_every_route_answers_and_predictions_equal_hub_predict(trained_hub, fashion_dir):
    paths = _images(fashion_dir)
    with Hub.open(trained_hub) as hub:
        expected_all = hub.predict(paths, device="cpu")  # imagenet (224 px) + fashion + fashion2 (32 px)
        expected_top2 = hub.predict(paths, ["fashion2", "fashion"], top=2, device="cpu")
        logits = hub.predictor("cpu").logits(_uint8(paths), ["fashion"])["fashion"]
        record = hub.registry.get_task("fashion")
    with running(trained_hub) as s, httpx.Client(base_url=s.url, timeout=60) as c:
        assert s.state.registry.read_only  # opened without writing, though the hub is writable
        assert c.get("/v2/health/live").json() == {"live": True}
        assert c.get("/v2/health/ready").json() == {"ready": True, "tasks": ["imagenet", "fashion", "fashion2"],
                                                    "unavailable": {}, "fallbacks": {},
                                                    "runtimes": dict.fromkeys(["imagenet", "fashion", "fashion2"],
                                                                              "torch")}
        assert [(m["name"], m["version"], m["image_size"], m["ready"]) for m in c.get("/v2/models").json()["models"]] \
            == [("imagenet", "1", 224, True), ("fashion", "1", 32, True), ("fashion2", "1", 32, True)]
        meta = c.get("/v2/models/fashion").json()
        assert (meta["name"], meta["seq"], meta["image_size"], meta["classes"], meta["sha256"]) == \
            ("fashion", 1, 32, record.class_names, record.weights_file_sha256)
        assert meta["metrics"]["val_top1"] == record.val_top1 and meta["inputs"][0]["shape"] == [-1, 3, 32, 32]
        assert c.get("/v2/models/fashion/ready").json() == {"name": "fashion", "ready": True}

        # /v1/predict: several files under `file`, all tasks, answered exactly as `snowhub predict --json`
        answer = c.post("/v1/predict", files=_files(paths))
        assert answer.status_code == 200, answer.text
        _same_answers(answer.json(), expected_all)
        assert [a["image"] for a in answer.json()] == [p.name for p in paths]
        _same_answers(c.post("/v1/predict?tasks=fashion2,fashion&top=2", files=_files(paths)).json(), expected_top2)

        # OIP v2 infer: UINT8 tensor → logits equal to the in-process predictor's; BYTES → the same labels
        out = c.post("/v2/models/fashion/infer", json=_oip(_uint8(paths), id="r1")).json()
        assert (out["model_name"], out["model_version"], out["id"]) == ("fashion", "1", "r1")
        by_name = {o["name"]: o for o in out["outputs"]}
        assert by_name["logits"]["shape"] == list(logits.shape)
        assert torch.allclose(torch.tensor(by_name["logits"]["data"]).view(logits.shape), logits, atol=1e-4)
        labels = [[label for label, _ in r.tasks["fashion"][:3]] for r in expected_all]
        assert by_name["labels"]["shape"] == [len(paths), 3]
        assert [by_name["labels"]["data"][i * 3:i * 3 + 3] for i in range(len(paths))] == labels
        encoded = [base64.b64encode(p.read_bytes()).decode() for p in paths]
        out = c.post("/v2/models/fashion/infer", json={
            "inputs": [{"name": "image_files", "shape": [len(paths)], "datatype": "BYTES", "data": encoded}],
            "outputs": [{"name": "labels", "parameters": {"top": 1}}]}).json()
        assert out["outputs"] == [{"name": "labels", "shape": [len(paths), 1], "datatype": "BYTES",
                                   "data": [row[0] for row in labels]}]
        assert "id" not in out  # echoed only when the request sent one

        paths_documented = c.get("/openapi.json").json()["paths"]
        assert {"/v2/health/live", "/v2/health/ready", "/v2/models", "/v2/models/{task}", "/v2/models/{task}/ready",
                "/v2/models/{task}/infer", "/v1/predict", "/metrics"} <= set(paths_documented)
        assert c.get("/docs").status_code == 200
        text = c.get("/metrics").text
        for name in ("snowhub_requests_total", "snowhub_request_errors_total", "snowhub_request_seconds_bucket",
                     "snowhub_batch_images_bucket", "snowhub_queue_wait_seconds_bucket", "snowhub_source_passes_total"):
            assert name in text, name


def test_16_clients_are_answered_correctly_with_fewer_source_passes_than_requests(trained_hub, fashion_dir):
    paths = _images(fashion_dir, 4)
    with Hub.open(trained_hub) as hub:
        expected = hub.predict(paths, ["fashion", "fashion2"], top=3, device="cpu")
    with running(trained_hub, max_wait_ms=20) as s:
        before = metric(s.url, "snowhub_source_passes_total")
        answers, failures = [], []

        def client(i: int) -> None:
            with httpx.Client(base_url=s.url, timeout=60) as c:
                for j in range(10):
                    k = (i + j) % len(paths)
                    r = c.post("/v1/predict?tasks=fashion,fashion2&top=3", files=_files([paths[k]]))
                    (answers if r.status_code == 200 else failures).append((k, r))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        passes = metric(s.url, "snowhub_source_passes_total") - before
    assert failures == [] and len(answers) == 160
    for k, r in answers:
        _same_answers(r.json(), [expected[k]])
    assert 0 < passes < 160, passes  # counted by a forward hook on the source module itself
    assert passes == s.state.batcher.passes  # one source pass per batch (one image size here)


def test_a_task_added_by_another_process_is_served_without_a_restart(hub_copy, tmp_path, fashion_dir):
    data = small_dataset(tmp_path / "data", classes=4, per_class=10)
    paths = _images(fashion_dir, 1)
    add = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(TESTS)!r})
        import snowhub.hub as hub_module
        from fixtures.hubkit import cached_training
        from snowhub import Hub, RunOptions, TrainConfig
        hub_module.train_delta = cached_training  # the registration is tested here, not the training
        with Hub.open({str(hub_copy)!r}) as hub:
            hub.add_task("late", {str(data)!r}, TrainConfig(epochs=1, image_size=32, batch_size=16,
                                                             run=RunOptions(device="cpu", num_workers=0)))
        """)
    with running(hub_copy) as s, httpx.Client(base_url=s.url, timeout=60) as c:
        assert_error(c.get("/v2/models/late"), 404, "no task named 'late'")
        writer = subprocess.Popen([sys.executable, "-c", add], stderr=subprocess.PIPE, text=True)
        served_meanwhile = 0
        while writer.poll() is None:  # serving goes on while add-task runs in the other process
            assert c.post("/v1/predict?tasks=fashion", files=_files(paths)).status_code == 200
            served_meanwhile += 1
        assert writer.returncode == 0, writer.stderr.read()
        assert served_meanwhile > 0
        deadline = time.monotonic() + 10
        while c.get("/v2/models/late/ready").status_code != 200:
            assert time.monotonic() < deadline, c.get("/v2/models/late/ready").text
            time.sleep(0.1)
        answer = c.post("/v1/predict?tasks=late,fashion", files=_files(paths)).json()
        assert list(answer[0]["tasks"]) == ["late", "fashion"] and len(answer[0]["tasks"]["late"]) == 4
        assert c.get("/v2/models/late").json()["seq"] == 3
        assert "late" in c.get("/v2/health/ready").json()["tasks"]


def test_a_damaged_delta_gives_503_for_that_task_only(hub_copy, fashion_dir):
    paths = _images(fashion_dir, 1)
    with running(hub_copy) as s, httpx.Client(base_url=s.url, timeout=60) as c:
        assert c.post("/v1/predict?tasks=fashion", files=_files(paths)).status_code == 200
        flip_byte(hub_copy / "tasks" / "0001-fashion.delta.safetensors", -1)
        reason = assert_error(c.post("/v1/predict?tasks=fashion", files=_files(paths)), 503, "sha256")
        assert "fashion" in reason and "0001-fashion.delta.safetensors" in reason
        assert_error(c.post("/v2/models/fashion/infer", json=_oip(_uint8(paths))), 503, "0001-fashion.delta")
        ready = c.get("/v2/models/fashion/ready")
        assert ready.status_code == 503 and ready.json()["ready"] is False
        assert c.get("/v2/models/fashion2/ready").status_code == 200
        assert c.post("/v2/models/fashion2/infer", json=_oip(_uint8(paths))).status_code == 200
        health = c.get("/v2/health/ready").json()
        assert health["tasks"] == ["imagenet", "fashion2"] and list(health["unavailable"]) == ["fashion"]
        every = c.post("/v1/predict", files=_files(paths))  # every task: the others answer, fashion is named apart
        assert every.status_code == 200 and list(every.json()[0]["tasks"]) == ["imagenet", "fashion2"]
        assert every.headers["Snowhub-Unavailable-Tasks"] == "fashion"
        assert [m["ready"] for m in c.get("/v2/models").json()["models"]] == [True, False, True]


@pytest.fixture(scope="module")
def strict_server(trained_hub):
    with running(trained_hub, max_images=3, max_image_bytes=2000) as s:
        yield s


def _bad_inputs(tmp: Path, good: Path) -> list[tuple[str, dict, int, str]]:
    (tmp / "notes.txt").write_text("not an image at all")
    data = good.read_bytes()
    big = tmp / "big.bmp"
    from PIL import Image

    Image.new("RGB", (40, 40), (9, 9, 9)).save(big)  # 4.9 kB, over the 2000-byte limit
    one = _uint8([good])
    return [
        ("not an image", {"files": [("file", ("notes.txt", (tmp / "notes.txt").read_bytes()))]}, 400, "not an image"),
        ("truncated", {"files": [("file", ("half.png", data[:len(data) // 2]))]}, 400, "truncated"),
        ("zero bytes", {"files": [("file", ("empty.png", b""))]}, 400, "empty (0 bytes)"),
        ("too large", {"files": [("file", ("big.bmp", big.read_bytes()))]}, 413, "--max-image-bytes"),
        ("too many uploads", {"files": [("file", ("a.png", data))] * 4}, 413, "--max-images"),
        ("no file", {"content": b'--B\r\nContent-Disposition: form-data; name="x"\r\n\r\n1\r\n--B--\r\n',
                     "headers": {"content-type": "multipart/form-data; boundary=B"}}, 400, "no image"),
        ("not multipart", {"content": b"hello"}, 400, "multipart/form-data"),
        ("unknown task", {"files": [("file", ("a.png", data))], "params": {"tasks": "cars"}}, 404, "no task named 'cars'"),
        ("bad top", {"files": [("file", ("a.png", data))], "params": {"top": "0"}}, 400, "top"),
        ("infer: unknown task", {"url": "/v2/models/cars/infer", "json": _oip(one)}, 404, "known tasks"),
        ("infer: not JSON", {"url": "/v2/models/fashion/infer", "content": b"{inputs"}, 400, "not JSON"),
        ("infer: no inputs", {"url": "/v2/models/fashion/infer", "json": {"outputs": []}}, 400, "inputs"),
        ("infer: wrong shape", {"url": "/v2/models/fashion/infer", "json": _oip(_uint8([good], 24))}, 400,
         "[B, 3, 32, 32]"),
        ("infer: wrong dtype", {"url": "/v2/models/fashion/infer", "json": {"inputs": [
            {"name": "images", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": [0.5] * 3072}]}}, 400, "UINT8"),
        ("infer: floats as UINT8", {"url": "/v2/models/fashion/infer", "json": {"inputs": [
            {"name": "images", "shape": [1, 3, 32, 32], "datatype": "UINT8", "data": [0.5] * 3072}]}}, 400, "integers"),
        ("infer: data short of shape", {"url": "/v2/models/fashion/infer", "json": {"inputs": [
            {"name": "images", "shape": [1, 3, 32, 32], "datatype": "UINT8", "data": [1, 2, 3]}]}}, 400, "3072"),
        ("infer: too many images", {"url": "/v2/models/fashion/infer", "json": _oip(_uint8([good] * 4))}, 413,
         "--max-images"),
        ("infer: bad base64", {"url": "/v2/models/fashion/infer", "json": {"inputs": [
            {"name": "image_files", "shape": [1], "datatype": "BYTES", "data": ["%%%"]}]}}, 400, "base64"),
        ("infer: unknown output", {"url": "/v2/models/fashion/infer", "json": _oip(one, outputs=[{"name": "x"}])},
         400, "outputs.0.name"),
        ("infer: unknown input", {"url": "/v2/models/fashion/infer", "json": {"inputs": [
            {"name": "pixels", "shape": [1, 3, 32, 32], "datatype": "UINT8", "data": [0] * 3072}]}}, 400, "inputs.0.name"),
        ("infer: files as pixels", {"url": "/v2/models/fashion/infer", "json": {"inputs": [
            {"name": "images", "shape": [1], "datatype": "BYTES", "data": ["AAAA"]}]}}, 400, "'image_files'"),
        ("infer: two inputs", {"url": "/v2/models/fashion/infer", "json": {"inputs": _oip(one)["inputs"] * 2}}, 400,
         "at most 1"),
        ("infer: nested 100,000 deep", {"url": "/v2/models/fashion/infer", "content": b"[" * 100_000}, 400,
         "nested too deeply"),
        ("infer: a JSON array", {"url": "/v2/models/fashion/infer", "content": b"[1, 2]"}, 400, "JSON object"),
        ("infer: unknown version", {"url": "/v2/models/fashion/versions/2/infer", "json": _oip(one)}, 404,
         "no version 2; its versions: 1"),
        ("infer: binary sizes past the body", {"url": "/v2/models/fashion/infer", "content": b'{"inputs": [{"name": '
         b'"images", "shape": [1, 3, 32, 32], "datatype": "UINT8", "parameters": {"binary_data_size": 3072}}]}',
         "headers": {"Inference-Header-Content-Length": "120"}}, 400, "binary_data_size"),
        ("no such route", {"url": "/v3/nothing"}, 404, "/docs"),
    ]


def test_every_bad_input_is_one_json_line_and_the_server_keeps_serving(strict_server, trained_hub, fashion_dir,
                                                                       tmp_path):
    good = _images(fashion_dir, 1)[0]
    with httpx.Client(base_url=strict_server.url, timeout=60) as c:
        for what, request, status, contains in _bad_inputs(tmp_path, good):
            url = request.pop("url", "/v1/predict")
            method = "GET" if url == "/v3/nothing" else "POST"
            assert_error(c.request(method, url, **request), status, contains), what
            ok = c.post("/v1/predict?tasks=fashion", files=_files([good]))
            assert ok.status_code == 200 and ok.json()[0]["tasks"]["fashion"], what
        assert metric(strict_server.url, "snowhub_request_errors_total") >= 20


def test_protocol_routes_head_and_405_with_allow(strict_server):
    with httpx.Client(base_url=strict_server.url, timeout=60) as c:
        assert c.get("/v2").json() == {"name": "snowhub", "version": __version__, "extensions": ["binary_tensor_data"]}
        for path in ("/v2/health/live", "/v2/health/ready"):
            head = c.head(path)
            assert head.status_code == 200 and head.content == b""
            refused = c.delete(path)
            assert_error(refused, 405, "DELETE is not allowed")
            assert refused.headers["allow"] == "GET, HEAD"
        assert c.put("/v2/models/fashion/infer").headers["allow"] == "POST"
        assert c.get("/v2/models/fashion/versions/1").json() == c.get("/v2/models/fashion").json()
        assert c.get("/v2/models/fashion/versions/1/ready").json() == {"name": "fashion", "ready": True}
        assert_error(c.get("/v2/models/fashion/versions/0/ready"), 404, "no version '0'")


def test_serve_refuses_a_missing_hub_a_bad_option_and_a_taken_port_in_one_line(trained_hub, tmp_path):
    for argv, contains in ((["--hub", str(tmp_path / "none")], "no snowhub hub"),
                           (["--hub", str(trained_hub), "--max-batch-size", "0"], "--max-batch-size"),
                           (["--hub", str(trained_hub), "--tasks", "cars"], "no task named 'cars'")):
        assert_one_line_error(CliRunner().invoke(cli, ["serve", *argv]), contains)
    threads = torch.get_num_threads()
    with running(trained_hub, wait_ready=False) as s:
        port = s.url.rsplit(":", 1)[1]
        assert_one_line_error(CliRunner().invoke(cli, ["serve", "--hub", str(trained_hub), "--port", port]),
                              "port is in use")
    assert torch.get_num_threads() == threads  # a serve that never served leaves the process's threads alone


def test_sigterm_finishes_the_requests_in_flight_then_exits_0(trained_hub, fashion_dir):
    paths = _images(fashion_dir, 1)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # Requests wait 1.5 s for their batch to fill: SIGTERM arrives while they are queued.
    server = subprocess.Popen([str(SNOWHUB), "serve", "--hub", str(trained_hub), "--port", str(port), "--device", "cpu",
                               "--runtime", "torch", "--max-wait-ms", "1500", "--no-access-log"],
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None and time.monotonic() < deadline, server.stderr.read() if server.poll() else ""
            try:
                if httpx.get(f"{url}/v2/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        results: list[httpx.Response] = []

        def ask() -> None:
            results.append(httpx.post(f"{url}/v1/predict?tasks=fashion", files=_files(paths), timeout=60))

        threads = [threading.Thread(target=ask) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        server.send_signal(signal.SIGTERM)
        for t in threads:
            t.join()
        assert server.wait(timeout=30) == 0, server.stderr.read()
    finally:
        if server.poll() is None:
            server.kill()
    assert [r.status_code for r in results] == [200, 200, 200]
    assert all(r.json()[0]["tasks"]["fashion"] for r in results)
    assert os.path.exists(trained_hub / "hub.db")


def test_the_server_socket_sends_small_responses_without_waiting_for_acks():
    """Every accepted connection has TCP_NODELAY: without it each keep-alive response waited ~40 ms for the
    client's delayed ACK (asyncio sets it only on sockets whose protocol is IPPROTO_TCP)."""
    import socket

    from snowhub.serving.http.server import _listen

    listening = _listen("127.0.0.1", 0)
    try:
        assert listening.proto == socket.IPPROTO_TCP
        with socket.create_connection(listening.getsockname()[:2]):
            accepted, _ = listening.accept()
            with accepted:
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        listening.close()


def test_the_servers_preprocessing_equals_the_eval_transform(fashion_dir):
    """to_batch (PIL + NumPy, no torch op in the worker thread) gives eval_transform's tensors bit for bit."""
    from snowhub.serving.preprocessing import to_batch

    pictures = [load_rgb(p) for p in sorted((fashion_dir / "val" / "Bag").glob("*.png"))[:3]]
    pictures.append(pictures[0].resize((90, 17)))  # not square: the centre crop decides
    for size in (32, 224):
        batch = to_batch(pictures, size, 256 / 224)
        assert batch.dtype == torch.uint8 and batch.is_contiguous()
        assert torch.equal(batch, torch.stack([eval_transform(size, 256 / 224)(p) for p in pictures]))


def test_the_forward_passes_leave_one_cpu_to_the_event_loop():
    from snowhub.errors import ConfigError
    from snowhub.serving.http import ServeConfig

    assert [ServeConfig().intra_op_threads(cpus) for cpus in (1, 2, 16)] == [1, 1, 15]
    assert ServeConfig(threads=4).intra_op_threads(2) == 4
    with pytest.raises(ConfigError, match="`threads` must be at least 1"):
        ServeConfig(threads=0).validate()
