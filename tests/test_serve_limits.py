"""`snowhub serve` under attack: pixel budgets measured on the server process's own peak RSS, liveness while a
large JSON body is parsed, and a full queue answered 503 with Retry-After. The server runs in a subprocess (its
memory and its event loop are its own), with the default budgets."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from serve_helpers import assert_error, free_port, running
from snowhub.serving.http import ServeConfig

pytestmark = pytest.mark.serial  # latency and switch-over times: scripts/test.sh runs this file alone

MB = 1 << 20


def _kib(pid: int, field: str) -> int:
    """``VmHWM`` (peak resident set) or ``VmRSS`` of process `pid`, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


@pytest.fixture(scope="module")
def server(trained_hub):
    """The real server on `trained_hub` (task fashion, 32 px; default budgets) in a subprocess."""
    port = free_port()
    code = textwrap.dedent(f"""
        from snowhub.serving.http import ServeConfig, serve
        serve({str(trained_hub)!r}, ServeConfig(device="cpu", tasks=("fashion",)), port={port}, access_log=False,
              log_level="warning")
        """)
    process = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
            try:
                if httpx.get(f"{url}/v2/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        yield url, process.pid
    finally:
        process.terminate()
        process.wait(timeout=60)


def _png(size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (120, 30, 200)).save(out, "PNG", compress_level=1)
    return out.getvalue()


def _jpeg(size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (120, 30, 200)).save(out, "JPEG", quality=50)
    return out.getvalue()


def _files(blobs: list[bytes], suffix: str) -> list:
    return [("file", (f"{i}.{suffix}", b, "application/octet-stream")) for i, b in enumerate(blobs)]


def test_large_images_stay_within_the_pixel_budgets_measured_on_the_servers_rss(server):
    url, pid = server
    budget = ServeConfig()
    with httpx.Client(base_url=url, timeout=120) as c:
        assert c.post("/v1/predict?tasks=fashion", files=_files([_png((64, 64))], "png")).status_code == 200
        before = _kib(pid, "VmHWM")
        # The attack: 8 PNGs of 9400 x 9400 (88 megapixels each, 0.7 MB uploaded), refused from their headers.
        bomb = _png((9400, 9400))
        started = time.perf_counter()
        assert_error(c.post("/v1/predict", files=_files([bomb] * 8, "png")), 413, "`max_image_pixels`")
        refused_s = time.perf_counter() - started
        # The same as JPEGs: decoded at 1/8 scale (1175 x 1175), so they are answered.
        photos = c.post("/v1/predict", files=_files([_jpeg((9400, 9400))] * 8, "jpg"))
        assert photos.status_code == 200 and len(photos.json()) == 8, photos.text
        # Within the per-image budget but over the request's: refused before decoding.
        big = _png((4000, 4000))  # 16 megapixels
        assert_error(c.post("/v1/predict", files=_files([big] * 4, "png")), 413, "--max-request-pixels")
        # Within both: decoded one at a time, each cropped before the next is decoded.
        assert c.post("/v1/predict", files=_files([big] * 3, "png")).status_code == 200
        grew = (_kib(pid, "VmHWM") - before) * 1024
    allowed = budget.max_request_pixels * 8  # 3 bytes a pixel, twice while converting, and room for the rest
    print(f"peak RSS grew by {grew / MB:.0f} MiB (allowed {allowed / MB:.0f}); 8 PNG bombs refused in "
          f"{refused_s * 1000:.0f} ms")
    assert grew < allowed, (grew / MB, allowed / MB)
    assert refused_s < 2.0


def _probe(url: str, until) -> list[float]:
    """Latencies (s) of ``GET /v2/health/live``, one every 20 ms, until `until()` is true."""
    latencies = []
    with httpx.Client(base_url=url, timeout=10) as c:
        while not until():
            started = time.perf_counter()
            assert c.get("/v2/health/live").status_code == 200
            latencies.append(time.perf_counter() - started)
            time.sleep(0.02)
    return sorted(latencies)


def test_liveness_answers_within_100_ms_while_a_large_json_body_is_read_and_parsed(server, tmp_path):
    """The issue's 168 MB JSON tensor (40 million values) sent from another process; /v2/health/live is
    asked every 20 ms meanwhile. Its 99th percentile must stay under 100 ms, and its worst within 100 ms of the
    worst of an idle stretch measured just before (on a loaded machine the scheduler alone delays a probe)."""
    url, _ = server
    body = tmp_path / "tensor.json"
    body.write_bytes(b'{"inputs": [{"name": "images", "shape": [64, 3, 32, 32], "datatype": "UINT8", "data": ['
                     + b"255," * (40_000_000 - 1) + b"255]}]}")
    deadline = time.monotonic() + 3
    idle = _probe(url, lambda: time.monotonic() > deadline)
    send = textwrap.dedent(f"""
        import http.client
        c = http.client.HTTPConnection("127.0.0.1", {url.rsplit(":", 1)[1]}, timeout=300)
        with open({str(body)!r}, "rb") as fh:
            c.request("POST", "/v2/models/fashion/infer", fh, {{"content-type": "application/json",
                                                                "content-length": "{body.stat().st_size}"}})
        r = c.getresponse()
        print(r.read().decode() + "\\n" + str(r.status))
        """)
    sender = subprocess.Popen([sys.executable, "-c", send], stdout=subprocess.PIPE, text=True)
    busy = _probe(url, lambda: sender.poll() is not None)
    answer, status = sender.stdout.read().strip().rsplit("\n", 1)
    assert status == "400" and "needs 196608 values" in answer, answer  # parsed (in the child process), checked
    p99 = busy[int(len(busy) * 0.99)]
    print(f"/v2/health/live during a {body.stat().st_size / MB:.0f} MiB JSON body: {len(busy)} probes, median "
          f"{busy[len(busy) // 2] * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, worst {busy[-1] * 1000:.1f} ms "
          f"(idle just before: worst {idle[-1] * 1000:.1f} ms of {len(idle)})")
    assert len(busy) >= 10 and p99 < 0.1 and busy[-1] < idle[-1] + 0.1, (busy[-5:], idle[-3:])


def test_a_full_queue_answers_503_with_retry_after(trained_hub):
    pixels = {"inputs": [{"name": "images", "shape": [1, 3, 32, 32], "datatype": "UINT8", "data": [7] * 3072}]}
    with running(trained_hub, max_queue=1, max_wait_ms=1500, tasks=("fashion",)) as s:
        first: list[httpx.Response] = []
        holder = threading.Thread(target=lambda: first.append(
            httpx.post(f"{s.url}/v2/models/fashion/infer", json=pixels, timeout=60)))
        holder.start()
        deadline = time.monotonic() + 30
        while s.state.in_flight == 0:  # the first request waits 1.5 s for its batch to fill
            assert time.monotonic() < deadline
            time.sleep(0.01)
        busy = httpx.post(f"{s.url}/v2/models/fashion/infer", json=pixels, timeout=60)
        holder.join()
        assert_error(busy, 503, "--max-queue")
        assert busy.headers["retry-after"] == "1"
        assert first[0].status_code == 200
        assert httpx.get(f"{s.url}/v2/health/live").status_code == 200
