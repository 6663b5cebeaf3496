"""``snowhub serve`` under load: requests/s and p50/p99 latency at 1, 4 and 16 concurrent clients, dynamic
batching on and off, against a loop of ``Hub.predict`` in one process.

Each request is one PNG upload to ``POST /v1/predict`` answered for every task (the source's own task at its
224 px plus the added tasks at 32 px), or for the added tasks only (``--scope deltas``: one 32 px source pass).
The server is the real command (``snowhub serve``, a subprocess); the clients are asyncio + httpx in this process,
each sending its requests one after another, a bounded number, to 127.0.0.1 only. The hub is built here with
short trainings (one epoch on a few Fashion-MNIST images): accuracy does not change the cost of a forward pass.

    python -m benchmarks serving-http                       # builds a hub, ~5 min on 2 cores
    python -m benchmarks serving-http --hub PATH --tasks 5   # reuse a hub
    python -m benchmarks serving-http --runtime torch,onnxruntime --batching on --image-size 64 --scope deltas
                                                             # the two runtimes side by side, one run
    python -m benchmarks serving-http --geometry paper --runtime torch,onnxruntime
                                                             # ResNet-50, 224 px, source + 1/5/20 tasks

Writes ``results.json`` (one row per batching setting and client count; the in-process loop and the ratios
in its summary), ``results.md`` and ``serving_http.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from benchmarks.environment import describe_environment
from benchmarks.output import command_line, default_out, header, write_results

REPO = Path(__file__).resolve().parent.parent
SNOWHUB = Path(sys.executable).parent / "snowhub"
CLIENTS = (1, 4, 16)
FASHION = [{0: "T-shirt_top", 1: "Trouser", 2: "Pullover"}, {3: "Dress", 4: "Coat", 5: "Sandal"},
           {6: "Shirt", 7: "Sneaker", 8: "Bag"}, {9: "Ankle_boot", 0: "T-shirt_top", 5: "Sandal"},
           {1: "Trouser", 8: "Bag", 7: "Sneaker"}]


def build_hub(root: Path, tasks: int, image_size: int = 32) -> Path:
    """efficientnet_lite0 + `tasks` tasks at `image_size` px, one epoch on 20 images per class (seconds each)."""
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import write_fashion

    from snowhub import Hub, RunOptions, TrainConfig

    hub_path = root / "hub"
    with Hub.init(hub_path, "efficientnet_lite0") as hub:
        for i in range(tasks):
            data = write_fashion(root / f"data{i}", "train", 20, FASHION[i % len(FASHION)], offset=20 * i)
            hub.add_task(f"task{i + 1}", data, TrainConfig(epochs=1, image_size=image_size, batch_size=16, seed=i,
                                                           run=RunOptions(device="cpu", num_workers=0)))
    write_fashion(root / "queries", "t10k", 8, {k: v for d in FASHION for k, v in d.items()})
    return hub_path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def _multipart(data: bytes) -> tuple[bytes, str]:
    """One PNG as a multipart/form-data body (as httpx sends ``files=[("file", ("q.png", data, "image/png"))]``)."""
    boundary = "snowhubbenchmarkboundary"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="q.png"\r\n'
            "Content-Type: image/png\r\n\r\n").encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


async def _raw_client(url: str, requests: list[bytes], latencies: list[float], errors: list[int]) -> None:
    """Send prepared HTTP/1.1 `requests` one after another on one keep-alive connection; a few lines of asyncio
    streams instead of httpx, whose per-request CPU on this 2-core machine was 3× the server's (py-spy)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        for request in requests:
            start = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - start)
            if not head.startswith(b"HTTP/1.1 200"):
                errors.append(int(head.split(b" ", 2)[1]))
    finally:
        writer.close()


async def _load(url: str, images: list[bytes], clients: int, per_client: int, query: str,
                client_kind: str = "httpx") -> dict:
    latencies: list[float] = []
    errors: list[int] = []

    async def client(i: int) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=120) as c:
            for j in range(per_client):
                data = images[(i * per_client + j) % len(images)]
                start = time.perf_counter()
                r = await c.post(f"/v1/predict{query}", files=[("file", ("q.png", data, "image/png"))])
                latencies.append(time.perf_counter() - start)
                if r.status_code != 200:
                    errors.append(r.status_code)

    def prepared(i: int) -> list[bytes]:
        out = []
        for j in range(per_client):
            body, content_type = _multipart(images[(i * per_client + j) % len(images)])
            out.append(f"POST /v1/predict{query} HTTP/1.1\r\nHost: {url.removeprefix('http://')}\r\n"
                       f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        return out

    bodies = [prepared(i) for i in range(clients)] if client_kind == "raw" else []
    start = time.perf_counter()
    if client_kind == "raw":
        await asyncio.gather(*(_raw_client(url, bodies[i], latencies, errors) for i in range(clients)))
    else:
        await asyncio.gather(*(client(i) for i in range(clients)))
    wall = time.perf_counter() - start
    return {"clients": clients, "requests": len(latencies), "errors": len(errors), "seconds": wall, "requests_per_s": len(latencies) / wall,
            "p50_ms": 1000 * statistics.median(latencies), "p99_ms": 1000 * _percentile(latencies, 0.99)}


def _metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


def measure_server(hub: Path, images: list[bytes], batching: bool, requests: int, query: str,
                   runtime: str = "auto", client_kind: str = "httpx") -> list[dict]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    flags = ["--max-batch-size", "32", "--max-wait-ms", "5"] if batching else ["--max-batch-size", "1",
                                                                               "--max-wait-ms", "0"]
    server = subprocess.Popen([str(SNOWHUB), "serve", "--hub", str(hub), "--port", str(port), "--device", "cpu",
                               "--runtime", runtime, "--no-access-log", *flags], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600  # a first start builds the ONNX Runtime graphs
        while True:
            try:
                if httpx.get(f"{url}/v2/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("snowhub serve did not become ready")
            time.sleep(0.2)
        asyncio.run(_load(url, images, 4, 5, query, client_kind))  # warm-up
        rows = []
        for clients in CLIENTS:
            passes = _metric(url, "snowhub_source_passes_total")
            row = asyncio.run(_load(url, images, clients, max(1, requests // clients), query, client_kind))
            row |= {"runtime": runtime, "batching": batching, "client": client_kind,
                    "source_passes": _metric(url, "snowhub_source_passes_total") - passes}
            rows.append(row)
            print(f"  {runtime} batching {'on ' if batching else 'off'} {clients:2d} clients: "
                  f"{row['requests_per_s']:6.1f} requests/s, p50 {row['p50_ms']:6.1f} ms, p99 {row['p99_ms']:6.1f} ms, "
                  f"{row['source_passes']:.0f} source passes for {row['requests']} requests, {row['errors']} errors",
                  flush=True)
        return rows
    finally:
        server.terminate()  # SIGTERM: in-flight requests finish first
        try:
            server.wait(timeout=300)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def measure_in_process(hub: Path, paths: list[Path], tasks: list[str] | None, requests: int, runtime: str = "auto",
                       batch: int = 16) -> dict:
    import torch

    from snowhub import Hub
    from snowhub.device import available_cpus

    torch.set_num_threads(max(1, available_cpus() - 1))  # as `snowhub serve` runs its forward passes
    with Hub.open(hub) as h:
        for p in paths[:4]:  # warm-up: models loaded and verified (ONNX Runtime: graphs built and checked)
            h.predict([p], tasks, device="cpu", runtime=runtime)
        start = time.perf_counter()
        for i in range(requests):
            h.predict([paths[i % len(paths)]], tasks, device="cpu", runtime=runtime)
        one = requests / (time.perf_counter() - start)
        start = time.perf_counter()
        for i in range(0, requests, batch):
            h.predict([paths[(i + k) % len(paths)] for k in range(batch)], tasks, device="cpu", runtime=runtime)
        batched = batch * len(range(0, requests, batch)) / (time.perf_counter() - start)
    print(f"  {runtime} in-process Hub.predict: {one:6.1f} images/s one image per call, {batched:6.1f} in calls of "
          f"{batch}", flush=True)
    return {"images_per_s_one_per_call": one, "images_per_s_batched": batched, "batch": batch}


def plot(path: Path, rows: list[dict], in_process: dict[str, dict], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, lat) = plt.subplots(1, 2, figsize=(10, 4))
    runtimes = list(in_process)
    colours = ("tab:green", "tab:red", "tab:blue", "tab:orange", "tab:purple", "tab:brown")
    for (runtime, batching), colour in zip([(rt, b) for rt in runtimes for b in (True, False)], colours):
        mine = [r for r in rows if r["batching"] == batching and r["runtime"] == runtime]
        if not mine:
            continue
        label = f"{runtime}, " + ("batching on (32 images, 5 ms)" if batching else "batching off")
        ax.plot([r["clients"] for r in mine], [r["requests_per_s"] for r in mine], "o-", color=colour, label=label)
        lat.plot([r["clients"] for r in mine], [r["p50_ms"] for r in mine], "o-", color=colour, label=f"p50, {label}")
        lat.plot([r["clients"] for r in mine], [r["p99_ms"] for r in mine], "s--", color=colour, label=f"p99, {label}")
    for runtime, style in zip(runtimes, (":", "-.")):
        loop = in_process[runtime]
        ax.axhline(loop["images_per_s_one_per_call"], color="tab:gray", ls=style,
                   label=f"{runtime}, in-process Hub.predict, 1/call")
        ax.axhline(loop["images_per_s_batched"], color="black", ls=style,
                   label=f"{runtime}, in-process Hub.predict, {loop['batch']}/call")
    ax.set(xscale="log", xticks=list(CLIENTS), xticklabels=list(map(str, CLIENTS)), xlabel="concurrent clients",
           ylabel="requests/s (1 image each)", title=title)
    lat.set(xscale="log", yscale="log", xticks=list(CLIENTS), xticklabels=list(map(str, CLIENTS)),
            xlabel="concurrent clients", ylabel="latency (ms)", title="latency")
    ax.legend(fontsize=7)
    lat.legend(fontsize=7)
    ax.grid(alpha=0.3)
    lat.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(rows: list[dict], in_process: dict[str, dict], summary: dict) -> list[str]:
    """The Markdown table of the server rows, the in-process loops and the ratios."""
    lines = ["| runtime | batching | clients | requests/s | p50 ms | p99 ms | source passes | requests | errors |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['runtime']} | {'on' if r['batching'] else 'off'} | {r['clients']} | {r['requests_per_s']:.1f} | "
              f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['source_passes']:.0f} | {r['requests']} | {r['errors']} |"
              for r in rows]
    lines.append("")
    lines += [f"In-process `Hub.predict` ({runtime}): {loop['images_per_s_one_per_call']:.1f} images/s one image per "
              f"call, {loop['images_per_s_batched']:.1f} in calls of {loop['batch']}."
              for runtime, loop in in_process.items()]
    return lines + ["", ", ".join(f"{k} {v:.2f}" for k, v in summary.items()) + "."]


def summarise(rows: list[dict], in_process: dict[str, dict]) -> dict[str, float]:
    """Per runtime: batching on ÷ off and the server against the in-process loops at 16 clients; with two
    runtimes, the second's requests/s (batching on) and in-process images/s ÷ the first's."""
    summary = {}
    for runtime, loop in in_process.items():
        at16 = {r["batching"]: r["requests_per_s"] for r in rows if r["clients"] == 16 and r["runtime"] == runtime}
        if True in at16 and False in at16:
            summary[f"{runtime}_batching_ratio_16_clients"] = at16[True] / at16[False]
        best = at16.get(True, at16.get(False))
        summary[f"{runtime}_server_vs_in_process_one_per_call"] = best / loop["images_per_s_one_per_call"]
        summary[f"{runtime}_server_vs_in_process_batched"] = best / loop["images_per_s_batched"]
    if len(in_process) == 2:
        first, second = in_process
        for clients in CLIENTS:
            rate = {r["runtime"]: r["requests_per_s"] for r in rows if r["clients"] == clients and r["batching"]}
            if len(rate) == 2:
                summary[f"{second}_vs_{first}_requests_per_s_{clients}_clients"] = rate[second] / rate[first]
        for key, label in (("images_per_s_one_per_call", "in_process_batch_1"),
                           ("images_per_s_batched", "in_process_batched")):
            summary[f"{second}_vs_{first}_{label}"] = in_process[second][key] / in_process[first][key]
    return summary


def add_arguments(parser: argparse.ArgumentParser, suite: str = "serving-http") -> None:
    """The ``serving-http`` suite's options."""
    parser.add_argument("--hub", type=Path, help="an existing hub (default: build one under --out)")
    parser.add_argument("--tasks", type=int, default=5, help="tasks of the hub built (default 5)")
    parser.add_argument("--requests", type=int, default=96, help="requests per measurement (default 96)")
    parser.add_argument("--scope", choices=("all", "deltas"), default="all",
                        help="all: the source's task (224 px) + every task; deltas: the added tasks only")
    parser.add_argument("--runtime", default="auto",
                        help="comma-separated runtimes measured one after another: auto, torch, onnxruntime "
                        "(default auto)")
    parser.add_argument("--batching", default="on,off", help="on, off or on,off (default on,off)")
    parser.add_argument("--image-size", type=int, default=32,
                        help="image size of the tasks of the hub built (default 32)")
    parser.add_argument("--in-process-batch", type=int, default=16, help="images per in-process call (default 16)")
    parser.add_argument("--client", choices=("httpx", "raw"), default="httpx",
                        help="the load's clients: httpx (default), or raw: prepared HTTP/1.1 requests on asyncio "
                        "streams, whose own CPU cost is a fraction of httpx's")
    parser.add_argument("--geometry", choices=("http", "paper"), default="http",
                        help="http: the server under load (default); paper: ResNet-50 (random weights) at 224 px, "
                        "source + 1/5/20 tasks in process, at batch 1 and 32 (benchmarks/serving_paper.py)")
    parser.add_argument("--min-seconds", type=float, default=3.0,
                        help="--geometry paper: seconds per measurement at batch 1 at least (default 3)")
    parser.add_argument("--paper-tasks", default="1,5,20",
                        help="--geometry paper: numbers of added tasks measured (default 1,5,20)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="--geometry paper: interleaved rounds, the best of which counts (default 2)")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results/...)")


def run(args: argparse.Namespace) -> int:
    """Build or open the hub, measure in process and through the server, write the results folder."""
    if args.geometry == "paper":
        from benchmarks.serving_paper import run_paper

        return run_paper(args)
    out = args.out or default_out("serving-http")
    out.mkdir(parents=True, exist_ok=True)
    environment, started = describe_environment(), time.perf_counter()
    hub = args.hub or build_hub(out / "work", args.tasks, args.image_size)
    queries = sorted((hub.parent / "queries").rglob("*.png")) if (hub.parent / "queries").is_dir() else []
    from snowhub import Hub

    with Hub.open(hub) as h:
        names = [t.name for t in h.tasks()]
    deltas = [n for n in names if n != "imagenet"]
    tasks = None if args.scope == "all" else deltas
    query = "" if tasks is None else "?tasks=" + ",".join(tasks)
    images = [p.read_bytes() for p in queries]
    print(f"hub {hub}: {', '.join(names)}; asking {'every task' if tasks is None else ', '.join(tasks)}", flush=True)
    runtimes = [r.strip() for r in args.runtime.split(",") if r.strip()]
    batchings = [{"on": True, "off": False}[b.strip()] for b in args.batching.split(",") if b.strip()]
    in_process, rows = {}, []
    for runtime in runtimes:  # in process first: an onnxruntime loop builds the graphs the server then reads
        in_process[runtime] = measure_in_process(hub, queries, tasks, args.requests, runtime, args.in_process_batch)
        rows += [r for b in batchings for r in measure_server(hub, images, b, args.requests, query, runtime, args.client)]
    summary = summarise(rows, in_process)
    print("  " + ", ".join(f"{k} {v:.2f}" for k, v in summary.items()), flush=True)
    wall, command = time.perf_counter() - started, command_line("serving-http", args.argv)
    settings = {k: v for k, v in vars(args).items() if k not in ("argv", "out", "suite")} | {
        "tasks_served": names, "asked": tasks or names, "clients": list(CLIENTS)}
    text = header("serving-http", command, environment, wall) + markdown(rows, in_process, summary)
    write_results(out, "serving-http", command, rows, "\n".join(text), settings=settings, environment=environment,
                  summary=summary | {"in_process": in_process}, wall_seconds=wall)
    plot(out / "serving_http.png", rows, in_process,
         f"snowhub serve, {len(tasks or names)} tasks, {os.cpu_count()} CPU cores")
    print(f"results in {out}")
    return 0
