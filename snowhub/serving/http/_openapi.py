"""The OpenAPI document at ``/openapi.json``: FastAPI's, made to say what the server really does.

* No ``422`` responses: a request that fails FastAPI's validation gets 400 (``_errors.install``), and every
  route lists exactly the statuses it sends (``_schemas.errors``).
* Every ``$ref`` resolves: the inference request and response bodies (read and written by hand, so FastAPI
  does not see them) go into ``components/schemas`` with their nested models.
* 503 responses that come from a full queue say so with their ``Retry-After`` header.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from snowhub.serving.http._routes_infer import MODELS

_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait when the queue is full", "schema": {"type": "string"}}}


def document(app: FastAPI) -> dict:
    """The app's OpenAPI document (built once, then cached on the app)."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    for model in MODELS:
        body = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(body.pop("$defs", {}))
        components[model.__name__] = body
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            operation["responses"].pop("422", None)
            not_ready = operation["responses"].get("503")
            if not_ready is not None and method == "post":
                not_ready["headers"] = _RETRY_AFTER
    app.openapi_schema = schema
    return schema
