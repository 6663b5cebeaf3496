"""``POST /v1/predict``: image files in (multipart), exactly ``snowhub predict --json``'s answer out."""

from __future__ import annotations

import asyncio
from typing import Optional

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile

from snowhub.serving.http._errors import ServeError
from snowhub.serving.http._inputs import check_count
from snowhub.serving.http._schemas import ImageAnswers, errors
from snowhub.serving.http._state import ServerState, get_state
from snowhub.serving.predictor import ImagePrediction

router = APIRouter(tags=["predict"])


def _names(tasks: Optional[list[str]]) -> list[str] | None:
    names = [n.strip() for value in tasks or [] for n in value.split(",") if n.strip()]
    return names or None


async def _uploads(request: Request, state: ServerState) -> list[tuple[str, bytes]]:
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise ServeError(400, "send the images as multipart/form-data file fields, e.g. "
                              "curl -F file=@cat.jpg http://HOST:PORT/v1/predict")
    form = await request.form(max_files=state.config.max_images, max_fields=state.config.max_images + 16)
    try:
        files = [(k, v) for k, v in form.multi_items() if isinstance(v, UploadFile)]
        check_count(len(files), state.config)
        uploads = []
        for i, (field, upload) in enumerate(files):
            name = upload.filename or f"{field}[{i}]"
            if upload.size is not None and upload.size > state.config.max_image_bytes:
                raise ServeError(413, f"image {name} is {upload.size} bytes, over the limit of "
                                      f"{state.config.max_image_bytes} bytes (--max-image-bytes)")
            uploads.append((name, await upload.read()))
        return uploads
    finally:
        await form.close()


@router.post("/v1/predict", response_model=list[ImageAnswers], responses=errors(400, 404, 413, 503),
             openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                 "type": "object", "required": ["file"], "properties": {"file": {
                     "type": "array", "items": {"type": "string", "format": "binary"}, "minItems": 1,
                     "description": "one or more image files (any field name is accepted; at most --max-images)"}}}}}}})
async def predict(request: Request,
                  tasks: Optional[list[str]] = Query(None, description="Tasks to answer, comma-separated or "
                                                     "repeated: names (the version alias production points to, "
                                                     "else the latest), name@2 or name@alias (imagenet = the "
                                                     "source's head); none = every task."),
                  top: int = Query(5, ge=1, description="Labels per task."),
                  state: ServerState = Depends(get_state)) -> JSONResponse:
    """Top-`top` labels of every requested task for each uploaded image: the JSON of ``snowhub predict --json``.

    With no ``tasks``, every task served now answers, each as its bare name resolves now (retired versions
    never answer); tasks whose files failed their check are left out and named in the
    ``Snowhub-Unavailable-Tasks`` header. Answers are keyed by the reference as asked.
    """
    async with state.admitted():  # 503 + Retry-After when the queue is full
        served, unavailable = await asyncio.to_thread(state.catalog.resolve, _names(tasks))
        if not served:
            raise ServeError(503 if unavailable else 404, "no task to answer: " + (
                "; ".join(unavailable.values()) if unavailable else "add one with `snowhub add-task NAME --data DIR`"))
        uploads = await _uploads(request, state)
        logits = await state.logits_of_files(uploads, [task for _, task in served])
    results = [ImagePrediction(name) for name, _ in uploads]
    for asked, task in served:
        probs = logits[task.key].softmax(dim=1)
        values, indices = probs.topk(min(top, probs.shape[1]), dim=1)
        for row, (v, i) in enumerate(zip(values.tolist(), indices.tolist())):
            results[row].tasks[asked] = [(task.classes[c], 100.0 * p) for c, p in zip(i, v)]
    headers = {"Snowhub-Unavailable-Tasks": ",".join(unavailable)} if unavailable else None
    return JSONResponse([r.to_dict() for r in results], headers=headers)
