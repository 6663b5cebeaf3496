"""``/v2/models``, ``/v2/models/{task}[/versions/{version}]`` and their ``/ready`` (OIP v2 model metadata).

``{task}`` is a task reference (``birds``, ``birds@2``, ``birds@staging``) and ``{version}`` a version number
or an alias; ``/v2/models`` lists every served name with the version it means now and every version served.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from snowhub.serving.http._catalog import Unavailable, route_reference
from snowhub.serving.http._schemas import ModelList, ModelMetadata, ModelReady, errors
from snowhub.serving.http._state import ServerState, get_state

router = APIRouter(tags=["models"])
_NOT_READY = {503: {"model": ModelReady, "description": "the task's files failed their check (the reason in error)"}}


def _listing(state: ServerState) -> dict:
    state.catalog.refresh(at_most_every_s=state.config.poll_s)
    problems = state.catalog.problems()
    models = []
    for name in state.catalog.names():
        task = state.catalog.known(name)
        if task is None:
            continue
        entry = {"name": name, "version": str(task.version), "versions": [str(v) for v in state.catalog.versions(name)],
                 "seq": task.seq, "image_size": task.image_size, "classes": len(task.classes),
                 "ready": name not in problems}
        if name in problems:
            entry["reason"] = problems[name]
        models.append(entry)
    return {"models": models}


def metadata(state: ServerState, task: str, version: str | None) -> dict:
    """``GET /v2/models/{task}[/versions/{version}]``'s body (errors as :meth:`Catalog.get`, 503 included)."""
    found = state.catalog.lookup(route_reference(task, version))  # metadata even of a task that is not ready
    return found.metadata(state.catalog.versions(found.name), state.catalog.aliases(found.name))


@router.get("/v2/models", response_model=ModelList, response_model_exclude_none=True)
async def models(state: ServerState = Depends(get_state)) -> dict:
    """Every task (the source's own head first, then append order), with whether it is served now."""
    return await asyncio.to_thread(_listing, state)


@router.get("/v2/models/{task}", response_model=ModelMetadata, responses=errors(404, 503))
async def model(task: str, state: ServerState = Depends(get_state)) -> dict:
    """OIP model metadata of `task`, plus its classes, image size, metrics, seq and delta sha256."""
    return await asyncio.to_thread(metadata, state, task, None)


@router.get("/v2/models/{task}/versions/{version}", response_model=ModelMetadata, responses=errors(404, 503))
async def model_version(task: str, version: str, state: ServerState = Depends(get_state)) -> dict:
    """OIP model metadata of version `version` of `task` (404 for a version it does not have)."""
    return await asyncio.to_thread(metadata, state, task, version)


async def _ready(state: ServerState, task: str, version: str | None) -> JSONResponse:
    def check() -> None:
        state.catalog.get(route_reference(task, version))

    try:
        await asyncio.to_thread(check)
    except Unavailable as error:
        return JSONResponse({"name": task, "ready": False, "error": str(error)}, status_code=503)
    return JSONResponse({"name": task, "ready": True})


@router.get("/v2/models/{task}/ready", response_model=ModelReady, responses={**errors(404), **_NOT_READY})
async def model_ready(task: str, state: ServerState = Depends(get_state)) -> JSONResponse:
    """200 when `task` is served (its files verified), 503 with the reason when not, 404 when unknown."""
    return await _ready(state, task, None)


@router.get("/v2/models/{task}/versions/{version}/ready", response_model=ModelReady,
            responses={**errors(404), **_NOT_READY})
async def model_version_ready(task: str, version: str, state: ServerState = Depends(get_state)) -> JSONResponse:
    """As ``/v2/models/{task}/ready``, for version `version` (404 for a version the task does not have)."""
    return await _ready(state, task, version)
