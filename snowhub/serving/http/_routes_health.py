"""``GET /v2`` (server metadata), ``/v2/health/live``, ``/v2/health/ready`` (GET and HEAD) and ``/metrics``."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response

from snowhub._version import __version__
from snowhub.serving.http._schemas import EXTENSIONS, Live, Ready, ServerMetadata
from snowhub.serving.http._state import ServerState, get_state

router = APIRouter()
_NOT_READY = {503: {"model": Ready, "description": "not ready (the reason in error)"}}


@router.get("/v2", tags=["health"], response_model=ServerMetadata)
async def server_metadata() -> dict:
    """OIP v2 server metadata: name, version and the protocol extensions supported."""
    return {"name": "snowhub", "version": __version__, "extensions": EXTENSIONS}


@router.get("/v2/health/live", tags=["health"], response_model=Live)
@router.head("/v2/health/live", tags=["health"], response_model=Live)
async def live() -> dict:
    """The server process answers (OIP v2 liveness). Nothing a request does holds the event loop that answers
    this: large bodies are parsed in another process, images decoded and models run in worker threads."""
    return {"live": True}


@router.get("/v2/health/ready", tags=["health"], response_model=Ready, responses=_NOT_READY)
@router.head("/v2/health/ready", tags=["health"], response_model=Ready, responses=_NOT_READY)
async def ready(state: ServerState = Depends(get_state)) -> JSONResponse:
    """Ready once the source and every task were loaded and verified (OIP v2 readiness): 200, else 503.

    ``tasks`` lists the tasks served; ``unavailable`` maps each task whose files failed their check to the
    reason (those answer 503; the others are served).
    """
    body = await asyncio.to_thread(state.health)
    return JSONResponse(body, status_code=200 if body["ready"] else 503)


@router.get("/metrics", tags=["health"], response_class=Response,
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                             "description": "Prometheus text format"}})
async def metrics(state: ServerState = Depends(get_state)) -> Response:
    """Prometheus metrics: requests, errors, latency, batch sizes, queue wait, source passes."""
    await asyncio.to_thread(state.health)  # refreshes the task gauges
    return Response(state.metrics.render(), media_type=state.metrics.content_type)
