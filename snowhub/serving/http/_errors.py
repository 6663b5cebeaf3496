"""Every failure leaves the server as ``{"error": "<one line>"}`` with a 4xx/5xx status, never a traceback."""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from snowhub.errors import (ConfigError, DataError, HubLockedError, ImageBudgetError, IntegrityError, InvalidNameError,
                            SnowhubError, TaskNotFoundError)

log = logging.getLogger("snowhub.serve")


class ServeError(Exception):
    """A request the server refuses: an HTTP `status` and a one-line `message` for the client."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def status_of(error: SnowhubError) -> int:
    """The HTTP status of a library error: unknown (or retired) task 404, bad input 400 (a malformed task
    reference included; 413 over a pixel budget), damaged or busy hub 503."""
    if isinstance(error, TaskNotFoundError):
        return 404
    if isinstance(error, ImageBudgetError):
        return 413
    if isinstance(error, (DataError, ConfigError, InvalidNameError)):
        return 400
    if isinstance(error, (IntegrityError, HubLockedError)):
        return 503
    return 500


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """``{"error": one line}`` with `status` (and `headers`, e.g. ``Allow`` or ``Retry-After``)."""
    return JSONResponse({"error": one_line(message)}, status_code=status, headers=headers)


def _validation_message(error: RequestValidationError) -> str:
    parts = []
    for e in error.errors()[:3]:
        where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "request"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    return "malformed request: " + "; ".join(parts)


def _allowed(request: Request) -> str:
    """Every method some route of `request`'s path answers, as an ``Allow`` header lists them."""
    def leaves(routes):  # included routers (FastAPI keeps them whole) down to their routes
        for route in routes:
            inner = getattr(route, "original_router", None)
            yield from leaves(inner.routes) if inner is not None else (route,)

    methods: set[str] = set()
    for route in leaves(request.app.router.routes):
        if getattr(route, "methods", None) and route.matches(dict(request.scope))[0] != Match.NONE:
            methods |= set(route.methods)
    return ", ".join(sorted(methods))


def install(app: FastAPI) -> None:
    """Register the JSON error handlers on `app`."""

    @app.exception_handler(ServeError)
    async def _serve_error(_: Request, exc: ServeError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.headers)

    @app.exception_handler(SnowhubError)
    async def _snowhub_error(_: Request, exc: SnowhubError) -> JSONResponse:
        return error_response(status_of(exc), str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = one_line(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no route {request.method} {request.url.path}; the routes are listed at /docs"
        elif exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}; see /docs"
        if detail.lower().startswith("too many files"):  # the multipart parser's --max-images limit
            limit = re.search(r"(\d+)", detail)
            return error_response(413, f"too many images in one request, the limit is "
                                       f"{limit.group(1) if limit else 'lower'} (--max-images); split the request")
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:  # GET and HEAD of one path are two routes: Allow names every route's methods
            headers = {"Allow": _allowed(request)}
        return error_response(exc.status_code, detail, headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error answering %s %s", request.method, request.url.path)
        return error_response(500, f"internal error ({type(exc).__name__}: {one_line(exc)[:200]}); "
                                   "see the server's log")
