"""``snowhub serve``: every task of a hub over HTTP (Open Inference Protocol v2, ``/v1/predict``)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from snowhub.errors import SnowhubError
from snowhub_cli.flags import SERVE_FLAGS
from snowhub_cli.options import DeviceOption, HubOption, RegistryOption, Runtime, one_line_errors


def serve(
    hub: HubOption = None,
    registry: RegistryOption = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.", min=0, max=65535)] = 8000,
    device: DeviceOption = "auto",
    runtime: Annotated[Runtime, typer.Option(
        "--runtime", help="auto (ONNX Runtime on a CPU, a task whose graph fails its check answered by PyTorch; "
        "PyTorch on a GPU), torch, or onnxruntime (such a task gets 503 with the reason).")] = Runtime.auto,
    max_batch_size: Annotated[int, typer.Option(
        help="Most images answered by one batched forward pass (1: no batching across requests).")] = 32,
    max_wait_ms: Annotated[float, typer.Option(
        help="How long the first queued request waits for others to join its batch (ms).")] = 5.0,
    tasks: Annotated[Optional[str], typer.Option(
        "--tasks", help="Serve only these tasks, comma-separated (default: every task, new ones too).")] = None,
    max_image_bytes: Annotated[int, typer.Option(help="Largest image upload accepted (bytes); larger: 413.")]
    = 10 * 1024 * 1024,
    max_images: Annotated[int, typer.Option(help="Most images in one request; more: 413.")] = 64,
    max_image_pixels: Annotated[int, typer.Option(
        help="Most pixels one image may decode to (JPEGs above it decode at 1/2-1/8 scale if that fits); more: 413.")]
    = 25_000_000,
    max_request_pixels: Annotated[int, typer.Option(
        help="Most decoded pixels of one request's images, and of all images being decoded at once; more: 413.")]
    = 50_000_000,
    max_queue: Annotated[int, typer.Option(
        help="Most inference requests in the server at once; one more gets 503 with Retry-After.")] = 128,
    threads: Annotated[Optional[int], typer.Option(
        help="Threads for the forward passes on a CPU, PyTorch's and ONNX Runtime's (default: the usable CPUs minus "
        "one, left to HTTP).",
        min=1)] = None,
    access_log: Annotated[bool, typer.Option("--access-log/--no-access-log", help="Log every request.")] = True,
) -> None:
    """Serve every task over HTTP: one source pass per batch of requests; read-only, new tasks without restart.

    Routes: /v2/health/live and /ready, /v2/models, /v2/models/TASK and /ready, POST /v2/models/TASK/infer (Open
    Inference Protocol v2), POST /v1/predict (image uploads; the JSON of `snowhub predict --json`),
    /metrics (Prometheus) and /docs. SIGTERM or Ctrl-C finishes the requests in flight, then exits 0.
    """
    with one_line_errors(SERVE_FLAGS):
        try:
            from snowhub.serving.http import ServeConfig
            from snowhub.serving.http import serve as run
        except ImportError as error:
            raise SnowhubError(f"snowhub serve needs the serve extra ({error.name} is missing): "
                               "pip install 'snowhub[serve]'") from None
        names = None if tasks is None else tuple(n.strip() for n in tasks.split(",") if n.strip())
        config = ServeConfig(device=device, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, tasks=names,
                             max_image_bytes=max_image_bytes, max_images=max_images,
                             max_image_pixels=max_image_pixels, max_request_pixels=max_request_pixels,
                             max_queue=max_queue, threads=threads,
                             runtime=runtime.value)
        run(hub, config, host, port, access_log=access_log, registry_url=registry)
