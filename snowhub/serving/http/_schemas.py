"""Request and response bodies of every route: validation of OIP v2 requests, and the OpenAPI document.

The inference request is validated here after :func:`snowhub.serving.http._body.normalise` has moved the
tensor data out of it (so ``data`` is absent and ``parameters.binary_data_size`` set by then); the documented
schema is the same model, where a client sends either ``data`` or ``binary_data_size``.
"""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

INPUTS = {"images": "UINT8", "image_files": "BYTES"}  # one declared input per way of sending images
OUTPUTS = ("logits", "labels", "probabilities")
EXTENSIONS = ["binary_tensor_data"]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")  # OIP lets clients send parameters a server ignores


class TensorParameters(_Open):
    binary_data_size: Optional[StrictInt] = Field(None, ge=0, description="bytes of this input after the JSON "
                                                  "header (binary tensor data extension), instead of data")


class InferInput(BaseModel):
    """One input: ``images`` (``UINT8 [B, 3, S, S]``, RGB at the task's size S) or ``image_files`` (``BYTES
    [B]``: encoded image files, base64 strings in JSON ``data``, raw bytes as binary data)."""

    name: Literal["images", "image_files"]
    shape: list[StrictInt] = Field(min_length=1, max_length=4, examples=[[1, 3, 32, 32]])
    datatype: Literal["UINT8", "BYTES"]
    data: Optional[list[Union[StrictInt, StrictStr]]] = Field(
        None, description="row-major values, flat (nested lists in the shape's order are accepted too): UINT8 "
        "integers 0..255, or BYTES base64 strings; left out when parameters.binary_data_size gives the bytes")
    parameters: Optional[TensorParameters] = None


class OutputParameters(_Open):
    top: Optional[StrictInt] = Field(None, ge=1, description="labels/probabilities per image (default 5)")
    binary_data: Optional[StrictBool] = Field(None, description="return this output as binary data")


class RequestedOutput(BaseModel):
    """An output to return: ``logits`` (FP32 ``[B, classes]``), ``labels`` (BYTES ``[B, top]``) or
    ``probabilities`` (FP32 ``[B, top]``, softmax in 0..1)."""

    name: Literal["logits", "labels", "probabilities"]
    parameters: Optional[OutputParameters] = None


class RequestParameters(_Open):
    top: Optional[StrictInt] = Field(None, ge=1, description="default top of every output")
    binary_data_output: Optional[StrictBool] = Field(None, description="every output as binary data")


class InferRequest(BaseModel):
    """``POST /v2/models/{task}/infer``: exactly one input; no ``outputs`` = all three outputs."""

    id: Optional[StrictStr] = None
    inputs: list[InferInput] = Field(min_length=1, max_length=1)
    outputs: Optional[list[RequestedOutput]] = Field(None, max_length=3)
    parameters: Optional[RequestParameters] = None


class InferOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: Literal["FP32", "BYTES"]
    data: Optional[list[Union[float, str]]] = Field(None, description="absent when the output is binary data")
    parameters: Optional[dict] = Field(None, description="binary_data_size when the output is binary data")


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: Optional[str] = Field(None, description="the request's id, only when it sent one")
    outputs: list[InferOutput]


class Live(BaseModel):
    live: bool


class Ready(BaseModel):
    ready: bool
    tasks: list[str]
    unavailable: dict[str, str]
    error: Optional[str] = None


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ModelEntry(BaseModel):
    name: str
    version: str = Field(description="the version the bare name answers with now")
    versions: list[str] = Field(default_factory=list, description="every version served (not retired)")
    seq: int
    image_size: int
    classes: int
    ready: bool
    reason: Optional[str] = None


class ModelList(BaseModel):
    models: list[ModelEntry]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str] = Field(description="every version of the task served now (retired ones are not)")
    version: str = Field(description="the version this metadata describes (and the same route's infer runs)")
    aliases: dict[str, str] = Field(default_factory=dict, description="alias → version")
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    seq: int
    classes: list[str]
    image_size: int
    sha256: str
    metrics: dict


class ModelReady(BaseModel):
    name: str
    ready: bool
    error: Optional[str] = None


class Answer(BaseModel):
    label: str
    probability: float = Field(description="percent, 0..100")


class ImageAnswers(BaseModel):
    image: str
    tasks: dict[str, list[Answer]]


class Error(BaseModel):
    """Every refused request: a one-line reason."""

    error: str = Field(examples=["no task named 'cars' is served here; known tasks: imagenet, fashion"])


_WHY = {400: "malformed request or input", 404: "unknown task, version or route",
        413: "too large: body, image bytes or pixels, or too many images",
        503: "the task's files failed their check, the server is not ready, or its queue is full (Retry-After)"}


def errors(*statuses: int) -> dict:
    """The documented error responses of a route (each ``{"error": one line}``)."""
    return {s: {"model": Error, "description": _WHY[s]} for s in statuses}
