"""`snowhub serve` against the reference Open Inference Protocol client (NVIDIA's tritonclient, HTTP, its defaults
included) and an OpenAPI fuzzer (schemathesis), both talking to a real uvicorn server."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from serve_helpers import running
from snowhub import Hub
from snowhub.data import eval_transform, load_rgb

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

SCHEMATHESIS = Path(sys.executable).with_name("st")


def _images(fashion_dir: Path) -> list[Path]:
    return [p for d in sorted((fashion_dir / "val").iterdir()) for p in sorted(d.glob("*.png"))[:2]]


def _client(url: str):
    return httpclient.InferenceServerClient(url.removeprefix("http://"), network_timeout=60.0)


def _infer(client, name: str, array: np.ndarray, datatype: str, binary: bool, outputs: bool, version: str = ""):
    tensor = httpclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    wanted = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("logits", "labels", "probabilities")]
    return client.infer("fashion", [tensor], model_version=version, outputs=wanted if outputs else None)


def test_tritonclient_defaults_and_both_inputs_answer_as_hub_predict(trained_hub, fashion_dir):
    paths = _images(fashion_dir)
    with Hub.open(trained_hub) as hub:
        expected = hub.predict(paths, ["fashion"], top=3, device="cpu")
        pixels = torch.stack([eval_transform(32, 256 / 224)(load_rgb(p)) for p in paths]).numpy()
        logits = hub.predictor("cpu").logits(torch.from_numpy(pixels), ["fashion"])["fashion"].numpy()
    labels = np.array([[label for label, _ in r.tasks["fashion"]] for r in expected])
    files = np.array([p.read_bytes() for p in paths], dtype=np.object_)
    with running(trained_hub) as s:
        client = _client(s.url)
        meta = client.get_server_metadata()
        assert meta["name"] == "snowhub" and "binary_tensor_data" in meta["extensions"]
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("fashion") and client.is_model_ready("fashion", "1")
        assert not client.is_model_ready("fashion", "2") and not client.is_model_ready("cars")
        model = client.get_model_metadata("fashion", "1")
        assert model["versions"] == ["1"] and model == client.get_model_metadata("fashion")
        assert [(i["name"], i["datatype"]) for i in model["inputs"]] == [("images", "UINT8"), ("image_files", "BYTES")]

        cases = [("images", pixels, "UINT8"), ("image_files", files, "BYTES")]
        for (name, array, datatype), binary, outputs in [(c, b, o) for c in cases for b in (True, False)
                                                         for o in (True, False)]:
            if datatype == "BYTES" and not binary:  # JSON strings: the files base64-encoded, as the server asks
                array = np.array([base64.b64encode(f) for f in files], dtype=np.object_)
            result = _infer(client, name, array, datatype, binary, outputs, version="1" if outputs else "")
            got = result.as_numpy("logits")
            assert got.shape == logits.shape and np.allclose(got, logits, atol=1e-4), (name, binary, outputs)
            top = result.as_numpy("labels").astype(str)[:, :3]
            assert (top == labels).all(), (name, binary, outputs)
            probs = result.as_numpy("probabilities")[:, :3] * 100
            want = np.array([[p for _, p in r.tasks["fashion"]] for r in expected])
            assert np.allclose(probs, want, atol=1e-3)
            assert result.get_response()["model_version"] == "1" and "id" not in result.get_response()

        with pytest.raises(InferenceServerException, match="image_files"):  # files sent under the pixels' name
            _infer(client, "images", files, "BYTES", True, False)
        with pytest.raises(InferenceServerException, match="no version 7"):
            _infer(client, "images", pixels, "UINT8", True, False, version="7")
        echoed = client.infer("fashion", [_input(pixels)], request_id="req-1")
        assert echoed.get_response()["id"] == "req-1"


def _input(pixels: np.ndarray):
    tensor = httpclient.InferInput("images", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels)
    return tensor


def test_the_openapi_document_is_valid_and_fuzzing_finds_no_5xx_or_schema_violation(trained_hub, tmp_path):
    """schemathesis (examples, coverage and fuzzing; at most 15 examples per operation, fixed seed) against
    the running server: no 5xx, every status, content type, header and body as the document says, 405 with
    Allow for other methods. Its JSON report gives the number of requests."""
    config = tmp_path / "schemathesis.toml"
    config.write_text('[parameters]\n"path.task" = "fashion"\n"path.version" = "1"\n')
    report = tmp_path / "report.json"
    with running(trained_hub, tasks=("fashion",), max_images=4, max_image_bytes=100_000) as s:
        document = json.dumps(s.app.openapi())
        refs = set(re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', document))
        assert refs <= set(s.app.openapi()["components"]["schemas"]) and "$defs" not in document
        assert '"422"' not in document
        run = subprocess.run(
            [str(SCHEMATHESIS), "--config-file", str(config), "run", f"{s.url}/openapi.json", "-n", "15",
             "--seed", "1", "--generation-database", "none", "--workers", "1", "--request-timeout", "60",
             "--phases", "examples,coverage,fuzzing", "--no-color", "--report", "json",
             "--report-json-path", str(report), "--checks", "not_a_server_error,status_code_conformance,"
             "content_type_conformance,response_headers_conformance,response_schema_conformance,"
             "unsupported_method,allow_header_conformance"],
            capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    generated = re.search(r"(\d+) generated", run.stdout)
    assert generated and int(generated.group(1)) >= 200, run.stdout[-2000:]
    print(f"schemathesis: {generated.group(0)} test cases, exit 0")
