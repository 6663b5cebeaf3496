"""``POST /v2/models/{task}[/versions/{version}]/infer``: Open Inference Protocol v2 inference.

The body is read chunk by chunk (413 past the limit), parsed off the event loop when large
(:mod:`snowhub.serving.http._parser`), checked against the task (:mod:`snowhub.serving.http._oip`), then
answered by the batcher. JSON bodies and the binary tensor data extension (``Inference-Header-Content-Length``)
are both accepted, and outputs come back as JSON or binary data as the request asks.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from snowhub.serving.http import _oip
from snowhub.serving.http._catalog import route_reference
from snowhub.serving.http._parser import header_length_of, read_body
from snowhub.serving.http._schemas import InferRequest, InferResponse, errors
from snowhub.serving.http._state import ServerState, get_state

router = APIRouter(tags=["inference"])

_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/InferRequest"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}, "description":
                                 "binary tensor data extension: the JSON request (its length in the "
                                 "Inference-Header-Content-Length header), then the inputs' bytes"}}}}
_OK = {200: {"description": "the outputs, as JSON or (any binary output) a JSON header of "
                            "Inference-Header-Content-Length bytes followed by the binary outputs",
             "content": {"application/json": {"schema": {"$ref": "#/components/schemas/InferResponse"}},
                         "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}
MODELS = (InferRequest, InferResponse)  # their schemas go into the OpenAPI document's components


async def _infer(state: ServerState, request: Request, task: str, version: str | None) -> Response:
    async with state.admitted():  # 503 + Retry-After when the queue is full, before the body is read
        # the version the route names now: 404 unknown or retired, 503 unavailable
        served = await asyncio.to_thread(state.catalog.get, route_reference(task, version))
        header_length = header_length_of(request)
        body = await read_body(request, state.config.max_request_bytes(served.image_size))
        header, data = await state.parser.parse(body, header_length, served.image_size)
        del body
        parsed = _oip.parse(header, data, served, state.config)
        if parsed.files is not None:
            logits = (await state.logits_of_files(parsed.files, [served]))[served.key]
        else:
            logits = (await state.submit(parsed.tensor, [served]))[served.key]
        return _oip.respond(served, parsed, logits)


@router.post("/v2/models/{task}/infer", response_class=Response, openapi_extra=_BODY,
             responses={**_OK, **errors(400, 404, 413, 503)})
async def infer(task: str, request: Request, state: ServerState = Depends(get_state)) -> Response:
    """Run `task` on a batch of images: OIP v2 inference (see the module docstring). `task` is a reference: a
    bare name answers with the version alias ``production`` points to, else the latest one not retired."""
    return await _infer(state, request, task, None)


@router.post("/v2/models/{task}/versions/{version}/infer", response_class=Response, openapi_extra=_BODY,
             responses={**_OK, **errors(400, 404, 413, 503)})
async def infer_version(task: str, version: str, request: Request, state: ServerState = Depends(get_state)) -> Response:
    """Run version `version` (a number, or an alias) of `task` on a batch of images (404 for a version the task
    does not have or that is retired)."""
    return await _infer(state, request, task, version)
