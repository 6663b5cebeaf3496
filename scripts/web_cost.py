"""What the web pages cost the server: requests/s of ``POST /v1/predict`` without the pages, and with a client
polling them (the hub page and a task page, alternately), on 127.0.0.1.

    .venv/bin/python scripts/web_cost.py --hub HUB --image IMAGE [--seconds 15] [--clients 4] [--tasks a,b]

Starts ``snowhub serve``'s server (``snowhub.serving.http.serve``, as the command runs it) in a subprocess,
then for each setting runs `--clients` threads that each POST `IMAGE` one request after another for
`--seconds` (a bounded loop), while a further thread GETs the pages back to back ("every 0 s"), once a second,
or never (first and again last, to see how far the machine drifted). Prints one line per setting and a JSON
summary.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(hub: Path, port: int) -> subprocess.Popen:
    code = (f"from snowhub.serving.http import ServeConfig, serve; "
            f"serve({str(hub)!r}, ServeConfig(device='cpu'), port={port}, access_log=False, log_level='warning')")
    server = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or server.poll() is not None:
            server.kill()
            raise SystemExit("the server did not become ready")
        time.sleep(0.2)


def _measure(url: str, image: bytes, params: dict, clients: int, seconds: float, poll_s: float | None) -> dict:
    stop = time.monotonic() + seconds
    done, pages, page_seconds, errors = [0] * clients, [0], [0.0], []

    def client(i: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as c:
            while time.monotonic() < stop:
                r = c.post("/v1/predict", params=params, files=[("file", ("image.png", image, "image/png"))])
                if r.status_code != 200:
                    errors.append(r.text)
                done[i] += 1

    def poller() -> None:
        with httpx.Client(base_url=url, timeout=60) as c:
            task = c.get("/v2/models").json()["models"][-1]["name"]
            while time.monotonic() < stop:
                start = time.perf_counter()
                if c.get("/" if pages[0] % 2 == 0 else f"/tasks/{task}").status_code != 200:
                    errors.append("page")
                page_seconds[0] += time.perf_counter() - start
                pages[0] += 1
                if poll_s:
                    time.sleep(poll_s)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    if poll_s is not None:
        threads.append(threading.Thread(target=poller))
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    if errors:
        raise SystemExit(f"{len(errors)} requests failed, e.g. {errors[0][:200]}")
    return {"poll_s": poll_s, "predict_requests": sum(done), "seconds": round(elapsed, 2),
            "predict_per_s": round(sum(done) / elapsed, 2), "pages": pages[0],
            "page_ms": round(1000 * page_seconds[0] / pages[0], 1) if pages[0] else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hub", type=Path, required=True)
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=12.0, help="per setting (four settings)")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--tasks", default=None, help="tasks to ask /v1/predict for (default: every task)")
    args = parser.parse_args()
    port = _free_port()
    server = _start(args.hub, port)
    url, image = f"http://127.0.0.1:{port}", args.image.read_bytes()
    params = {"tasks": args.tasks} if args.tasks else {}
    try:
        _measure(url, image, params, args.clients, 4.0, None)  # warm-up: every network built once
        results = []
        for poll_s in (None, 1.0, 0.0, None):  # no page client again last: how far the machine drifted
            row = _measure(url, image, params, args.clients, args.seconds, poll_s)
            results.append(row)
            what = "no page client" if poll_s is None else f"pages polled every {poll_s:g} s"
            print(f"{what:>26}: {row['predict_per_s']:6.2f} /v1/predict requests/s ({row['predict_requests']} in "
                  f"{row['seconds']} s), {row['pages']} pages, {row['page_ms']} ms per page", flush=True)
        print(json.dumps({"clients": args.clients, "tasks": args.tasks or "every task", "results": results}))
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
