"""Helpers of the server tests: a real uvicorn server on 127.0.0.1 (a free port) in a thread, and its metrics."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn

from snowhub.serving.http import ServeConfig, create_app
from snowhub.serving.http.server import _listen


@dataclass
class Running:
    url: str
    app: object

    @property
    def state(self):
        return self.app.state.snowhub


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running(root: Path, wait_ready: bool = True, registry_url: str | None = None, **config) -> Iterator[Running]:
    """`snowhub serve`'s app for the hub at `root` (its registry at `registry_url` if given) under a real uvicorn
    server in a thread, until the block ends."""
    app = create_app(root, ServeConfig(device="cpu", **{"poll_s": 0.2, **config}), registry_url)
    sock = _listen("127.0.0.1", 0)  # as `snowhub serve` listens (TCP_NODELAY: no 40 ms wait per response)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        if wait_ready:
            while httpx.get(f"{url}/v2/health/ready").status_code != 200:
                assert time.monotonic() < deadline, httpx.get(f"{url}/v2/health/ready").text
                time.sleep(0.05)
        yield Running(url, app)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def metric(url: str, name: str) -> float:
    """The sum of every sample of Prometheus metric `name` at ``url/metrics``."""
    text = httpx.get(f"{url}/metrics").text
    return sum(float(v) for v in re.findall(rf"^{re.escape(name)}(?:{{.*}})? (\S+)$", text, re.M))


def assert_error(response: httpx.Response, status: int, contains: str = "") -> str:
    """A JSON ``{"error": one line}`` answer with `status` (never a traceback)."""
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert list(body) == ["error"] and "\n" not in body["error"] and "Traceback" not in body["error"], body
    assert contains.lower() in body["error"].lower(), body["error"]
    return body["error"]
