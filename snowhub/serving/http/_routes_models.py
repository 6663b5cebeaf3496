"""``/v2/models``, ``/v2/models/{task}`` and ``/v2/models/{task}/ready`` (OIP v2 model metadata)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from snowhub.serving.http._catalog import Unavailable
from snowhub.serving.http._schemas import ERRORS
from snowhub.serving.http._state import ServerState, get_state

router = APIRouter(tags=["models"])


def _listing(state: ServerState) -> dict:
    state.catalog.refresh(at_most_every_s=state.config.poll_s)
    problems = state.catalog.problems()
    models = []
    for name in state.catalog.names():
        task = state.catalog.known(name)
        entry = {"name": name, "version": str(task.seq), "image_size": task.image_size,
                 "classes": len(task.classes), "ready": name not in problems}
        if name in problems:
            entry["reason"] = problems[name]
        models.append(entry)
    return {"models": models}


@router.get("/v2/models")
async def models(state: ServerState = Depends(get_state)) -> dict:
    """Every task (the source's own head first, then append order), with whether it is served now."""
    return await asyncio.to_thread(_listing, state)


@router.get("/v2/models/{task}", responses={404: ERRORS[404]})
async def model(task: str, state: ServerState = Depends(get_state)) -> dict:
    """OIP model metadata of `task`, plus its classes, image size, metrics, seq and delta sha256."""
    def find() -> dict:
        found = state.catalog.known(task)
        if found is None:
            found = state.catalog.get(task)  # TaskNotFoundError (404) after one look at the registry
        return found.metadata()

    return await asyncio.to_thread(find)


@router.get("/v2/models/{task}/ready", responses={404: ERRORS[404], 503: ERRORS[503]})
async def model_ready(task: str, state: ServerState = Depends(get_state)) -> JSONResponse:
    """200 when `task` is served (its files verified), 503 with the reason when not, 404 when unknown."""
    try:
        await asyncio.to_thread(state.catalog.get, task)
    except Unavailable as error:
        return JSONResponse({"name": task, "ready": False, "error": str(error)}, status_code=503)
    return JSONResponse({"name": task, "ready": True})
