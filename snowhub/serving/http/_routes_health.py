"""``/v2/health/live``, ``/v2/health/ready`` and ``/metrics``."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response

from snowhub.serving.http._state import ServerState, get_state

router = APIRouter()


@router.get("/v2/health/live", tags=["health"])
async def live() -> dict:
    """The server process answers (OIP v2 liveness)."""
    return {"live": True}


@router.get("/v2/health/ready", tags=["health"], responses={503: {"description": "not ready"}})
async def ready(state: ServerState = Depends(get_state)) -> JSONResponse:
    """Ready once the source and every task were loaded and verified (OIP v2 readiness): 200, else 503.

    ``tasks`` lists the tasks served; ``unavailable`` maps each task whose files failed their check to the
    reason (those answer 503; the others are served).
    """
    body = await asyncio.to_thread(state.health)
    return JSONResponse(body, status_code=200 if body["ready"] else 503)


@router.get("/metrics", tags=["health"], response_class=Response)
async def metrics(state: ServerState = Depends(get_state)) -> Response:
    """Prometheus metrics: requests, errors, latency, batch sizes, queue wait, source passes."""
    await asyncio.to_thread(state.health)  # refreshes the task gauges
    return Response(state.metrics.render(), media_type=state.metrics.content_type)
