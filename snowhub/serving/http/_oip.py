"""Open Inference Protocol v2 inference: a parsed request to images, logits to a response (JSON or binary).

Input rule: one input per request, named by how the images come. ``images``: ``UINT8 [B, 3, S, S]`` decoded
RGB pixels at the task's size S. ``image_files``: ``BYTES [B]`` (or ``[B, 1]``) encoded image files, decoded and
resized as ``snowhub predict`` does (base64 strings in JSON ``data``, raw bytes as binary data). Outputs:
``logits`` (FP32 ``[B, classes]``), ``labels`` (BYTES ``[B, top]``, most likely first), ``probabilities``
(FP32 ``[B, top]``, softmax in 0..1); all three, as binary data, when the request names none (as the reference
client, tritonclient, asks), each as binary data when its ``binary_data`` parameter (or the request's
``binary_data_output``) says so.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass

import numpy as np
import torch
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from snowhub.serving.http._body import split_bytes
from snowhub.serving.http._served import ServedTask
from snowhub.serving.http._errors import ServeError
from snowhub.serving.http._inputs import check_count
from snowhub.serving.http._schemas import INPUTS, OUTPUTS, InferRequest
from snowhub.serving.http.config import ServeConfig

DEFAULT_TOP = 5


@dataclass
class Parsed:
    """A checked inference request: its id (None when it sent none), images and the outputs to return."""

    id: str | None
    tensor: torch.Tensor | None  # uint8 (B, 3, S, S) of an `images` input
    files: list[tuple[str, bytes]] | None  # (name, encoded bytes) of an `image_files` input
    outputs: list[tuple[str, int, bool]]  # (name, top, binary)


def _validated(header: dict) -> InferRequest:
    try:
        return InferRequest.model_validate(header)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise ServeError(400, f"malformed inference request: {where}: {first['msg']}") from None


def _uint8(shape: list[int], raw: memoryview, size: int, config: ServeConfig) -> torch.Tensor:
    if len(shape) != 4 or min(shape) < 0:
        raise ServeError(400, f"input 'images' must have shape [B, 3, {size}, {size}], got {shape}")
    check_count(shape[0], config)
    if shape[1:] != [3, size, size]:
        raise ServeError(400, f"this task takes images of shape [B, 3, {size}, {size}] (RGB, {size} px), got {shape}")
    if len(raw) != math.prod(shape):
        raise ServeError(400, f"shape {shape} needs {math.prod(shape)} values, the data holds {len(raw)}")
    return torch.from_numpy(np.frombuffer(raw, dtype=np.uint8).reshape(shape).copy())


def _files(shape: list[int], raw: memoryview, config: ServeConfig) -> list[tuple[str, bytes]]:
    elements = split_bytes(raw)
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or math.prod(shape) != len(elements):
        raise ServeError(400, f"input 'image_files' must have shape [B] or [B, 1] with B = {len(elements)} "
                              f"elements, got {shape}")
    check_count(len(elements), config)
    return [(f"image_files[{i}]", data) for i, data in enumerate(elements)]


def _outputs(request: InferRequest, classes: int) -> list[tuple[str, int, bool]]:
    params = request.parameters
    default_top = params.top if params and params.top is not None else DEFAULT_TOP
    if request.outputs is None:  # tritonclient names none and asks for binary data
        binary = params.binary_data_output if params and params.binary_data_output is not None else False
        return [(name, min(default_top, classes), binary) for name in OUTPUTS]
    every_binary = bool(params and params.binary_data_output)
    out = []
    for o in request.outputs:
        p = o.parameters
        top = p.top if p and p.top is not None else default_top
        out.append((o.name, min(top, classes), every_binary if p is None or p.binary_data is None else p.binary_data))
    return out


def parse(header: dict, data: memoryview, task: ServedTask, config: ServeConfig) -> Parsed:
    """Check a normalised request (:func:`snowhub.serving.http._body.normalise`) against `task`.

    Raises:
        ServeError: 400 for a field that does not fit (name, datatype, shape, sizes against the shape), 413 for
            more than ``--max-images`` images.
    """
    request = _validated(header)
    spec = request.inputs[0]
    if INPUTS[spec.name] != spec.datatype:
        other = next(n for n, d in INPUTS.items() if d == spec.datatype)
        raise ServeError(400, f"input {spec.name!r} is {INPUTS[spec.name]}; {spec.datatype} data goes in input "
                              f"{other!r} ({'encoded image files' if other == 'image_files' else 'RGB pixels'})")
    raw = data[:spec.parameters.binary_data_size]
    if spec.name == "images":
        tensor, files = _uint8(spec.shape, raw, task.image_size, config), None
    else:
        tensor, files = None, _files(spec.shape, raw, config)
    return Parsed(request.id, tensor, files, _outputs(request, len(task.classes)))


def _tensor_bytes(datatype: str, values: list) -> bytes:
    if datatype == "FP32":
        return np.asarray(values, dtype="<f4").tobytes()
    return b"".join(struct.pack("<I", len(b)) + b for b in (v.encode() for v in values))


def respond(task: ServedTask, parsed: Parsed, logits: torch.Tensor) -> Response:
    """The OIP v2 response: JSON, or (when an output is binary) a JSON header, its length in
    ``Inference-Header-Content-Length``, and the binary outputs after it in order."""
    probs = logits.softmax(dim=1)
    outputs, blobs = [], []
    for name, top, binary in parsed.outputs:
        if name == "logits":
            shape, datatype, values = list(logits.shape), "FP32", logits.flatten().tolist()
        else:
            top_values, indices = probs.topk(top, dim=1)
            shape = list(indices.shape)
            datatype, values = ("BYTES", [task.classes[i] for i in indices.flatten().tolist()]) if name == "labels" \
                else ("FP32", top_values.flatten().tolist())
        entry = {"name": name, "shape": shape, "datatype": datatype}
        if binary:
            blobs.append(_tensor_bytes(datatype, values))
            entry["parameters"] = {"binary_data_size": len(blobs[-1])}
        else:
            entry["data"] = values
        outputs.append(entry)
    body = {"model_name": task.name, "model_version": str(task.version), **({"id": parsed.id} if parsed.id is not None else {}),
            "outputs": outputs}
    if not blobs:
        return JSONResponse(body)
    header = json.dumps(body, separators=(",", ":")).encode()
    return Response(header + b"".join(blobs), media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(header))})
