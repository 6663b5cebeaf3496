"""`create_app`: the FastAPI application of one hub (routers, error handlers, limits, metrics, lifespan)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from snowhub._version import __version__
from snowhub.serving.http import _errors, _routes_health, _routes_infer, _routes_models, _routes_predict, _routes_ui
from snowhub.serving.http._errors import error_response
from snowhub.serving.http._metrics import MetricsMiddleware
from snowhub.serving.http._openapi import document
from snowhub.serving.http._state import ServerState
from snowhub.serving.http.config import ServeConfig

DESCRIPTION = """Every task of a snowhub hub over HTTP: one source forward pass per batch of requests and image
size serves every task (SNOW, section 3.2). Open Inference Protocol v2 routes under `/v2`, and `/v1/predict`
for image uploads, answering exactly `snowhub predict --json`. Errors are `{"error": "<one line>"}`."""


class _BodyLimit:
    """ASGI middleware: 413 for a request body over ``limit()`` bytes, by its Content-Length or as it streams."""

    def __init__(self, app, limit: Callable[[], int]):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limit()
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            response = error_response(413, f"the request body is {int(length)} bytes, over the limit of "
                                           f"{limit} bytes (derived from --max-images and --max-image-bytes)")
            return await response(scope, receive, send)
        seen = 0

        async def counting():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _errors.ServeError(413, f"the request body is over the limit of {limit} bytes")
            return message

        await self.app(scope, counting, send)


def create_app(root: Path | str | None, config: ServeConfig | None = None, registry_url: str | None = None) -> FastAPI:
    """The HTTP app serving the hub at `root` (opened read-only; models load in the background at start).

    Args:
        root: the hub directory (None: ``$SNOWHUB_HOME`` or ``./.snowhub``, or the one the registry records).
        config: batching, limits, device and task selection (default :class:`ServeConfig`).
        registry_url: a registry behind a database URL; None = the hub's own ``hub.db``.

    Raises:
        HubNotFoundError, HubVersionError, TaskNotFoundError, ConfigError: see :class:`ServerState`.
    """
    state = ServerState(None if root is None else Path(root), config or ServeConfig(), registry_url)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        state.start()
        try:
            yield
        finally:
            await state.parser.close()
            state.stop()

    app = FastAPI(title="snowhub", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.snowhub = state
    for module in (_routes_health, _routes_models, _routes_infer, _routes_predict, _routes_ui):
        app.include_router(module.router)
    _errors.install(app)
    app.add_middleware(_BodyLimit, limit=state.body_limit)
    app.openapi = lambda: document(app)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    return app
