"""``POST /v2/models/{task}/infer``: the Open Inference Protocol v2 inference route.

One input: a ``UINT8`` tensor ``[B, 3, S, S]`` at the task's image size ``S`` (see ``GET /v2/models/{task}``),
or ``BYTES`` holding base64-encoded image files, decoded and resized as ``snowhub predict`` does. Outputs:
``logits`` (FP32 ``[B, classes]``), ``labels`` (BYTES ``[B, top]``, most likely first) and ``probabilities``
(FP32 ``[B, top]``, softmax in 0..1); all three when the request names none.
"""

from __future__ import annotations

import asyncio
import json

import torch
from fastapi import APIRouter, Depends, Request
from pydantic import ValidationError

from snowhub.serving.http._catalog import ServedTask
from snowhub.serving.http._errors import ServeError, one_line
from snowhub.serving.http._inputs import base64_images, decode, uint8_tensor
from snowhub.serving.http._schemas import ERRORS, InferRequest, InferResponse
from snowhub.serving.http._state import ServerState, get_state

router = APIRouter(tags=["inference"])
OUTPUTS = ("logits", "labels", "probabilities")
DEFAULT_TOP = 5


def _parse(body: bytes) -> InferRequest:
    try:
        return InferRequest.model_validate(json.loads(body))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ServeError(400, f"the body is not JSON ({one_line(error)})") from None
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise ServeError(400, f"malformed inference request: {where}: {first['msg']}") from None


def _top(value: object, classes: int) -> int:
    if value is None:
        return min(DEFAULT_TOP, classes)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ServeError(400, f"top must be a positive integer, got {value!r}")
    return min(value, classes)


def _outputs(request: InferRequest, task: ServedTask) -> list[tuple[str, int]]:
    default_top = (request.parameters or {}).get("top")
    wanted = request.outputs or [{"name": n} for n in OUTPUTS]
    out = []
    for o in wanted:
        name, params = (o["name"], {}) if isinstance(o, dict) else (o.name, o.parameters or {})
        if name not in OUTPUTS:
            raise ServeError(400, f"unknown output {name!r}; this task's outputs are {', '.join(OUTPUTS)}")
        out.append((name, _top(params.get("top", default_top), len(task.classes))))
    return out


def _tensor(state: ServerState, request: InferRequest, task: ServedTask) -> torch.Tensor | list:
    """The request's images: a uint8 batch (UINT8 input) or decoded pictures (BYTES input)."""
    if len(request.inputs) != 1:
        raise ServeError(400, f"send exactly one input tensor (images), got {len(request.inputs)}")
    spec = request.inputs[0]
    if spec.datatype == "UINT8":
        return uint8_tensor(spec.data, spec.shape, task.image_size, state.config)
    if spec.datatype == "BYTES":
        files = base64_images(spec.data, spec.shape, state.config)
        return [decode(data, f"{spec.name}[{i}]", state.config) for i, data in enumerate(files)]
    raise ServeError(400, f"input datatype {spec.datatype!r} is not accepted: send UINT8 [B, 3, "
                          f"{task.image_size}, {task.image_size}] or BYTES (encoded image files)")


@router.post("/v2/models/{task}/infer", response_model=InferResponse,
             responses={400: ERRORS[400], 404: ERRORS[404], 413: ERRORS[413], 503: ERRORS[503]},
             openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                 "schema": InferRequest.model_json_schema()}}}})
async def infer(task: str, request: Request, state: ServerState = Depends(get_state)) -> dict:
    """Run `task` on a batch of images (OIP v2 inference request; see the module docstring)."""
    served = await asyncio.to_thread(state.catalog.get, task)  # 404 unknown, 503 unavailable
    body = _parse(await request.body())
    outputs = _outputs(body, served)
    images = await asyncio.to_thread(_tensor, state, body, served)
    if isinstance(images, list):
        logits = (await state.logits(images, [served]))[task]
    else:
        logits = (await state.submit(images, [served]))[task]
    probs = logits.softmax(dim=1)
    result = []
    for name, top in outputs:
        if name == "logits":
            result.append({"name": name, "shape": list(logits.shape), "datatype": "FP32",
                           "data": logits.flatten().tolist()})
            continue
        values, indices = probs.topk(top, dim=1)
        if name == "labels":
            result.append({"name": name, "shape": list(indices.shape), "datatype": "BYTES",
                           "data": [served.classes[i] for i in indices.flatten().tolist()]})
        else:
            result.append({"name": name, "shape": list(values.shape), "datatype": "FP32",
                           "data": values.flatten().tolist()})
    return {"model_name": task, "model_version": str(served.seq), "id": body.id, "outputs": result}
