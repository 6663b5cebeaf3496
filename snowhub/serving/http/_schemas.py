"""Request and response bodies of the Open Inference Protocol v2 routes (documented at ``/docs``)."""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, Field


class InferInput(BaseModel):
    """One input tensor: ``UINT8`` images ``[B, 3, S, S]`` (row-major ``data``) or ``BYTES`` encoded image
    files ``[B]`` (``data``: base64 strings)."""

    name: str = Field(examples=["images"])
    shape: list[int] = Field(examples=[[1, 3, 32, 32]])
    datatype: str = Field(examples=["UINT8"])
    data: list[Any]
    parameters: Optional[dict[str, Any]] = None


class RequestedOutput(BaseModel):
    """An output to return: ``logits`` (FP32 ``[B, classes]``), ``labels`` (BYTES ``[B, top]``) or
    ``probabilities`` (FP32 ``[B, top]``, softmax in 0..1); ``parameters.top`` sets top (default 5)."""

    name: str = Field(examples=["labels"])
    parameters: Optional[dict[str, Any]] = None


class InferRequest(BaseModel):
    """``POST /v2/models/{task}/infer``: exactly one input; no ``outputs`` = all three outputs."""

    id: Optional[str] = None
    inputs: list[InferInput]
    outputs: Optional[list[RequestedOutput]] = None
    parameters: Optional[dict[str, Any]] = None


class InferOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: Optional[str] = None
    outputs: list[InferOutput]


class Error(BaseModel):
    """Every refused request: a one-line reason."""

    error: str = Field(examples=["no task named 'cars' is served here; known tasks: imagenet, fashion"])


ERRORS = {status: {"model": Error, "description": text} for status, text in (
    (400, "malformed request or input"), (404, "unknown task"), (413, "too large, or too many images"),
    (503, "the task's files failed their check, or the server is not ready"))}
