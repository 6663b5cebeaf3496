"""The read-only web pages of ``snowhub serve``: the hub at ``/``, a task at ``/tasks/{task}``, "try it" at ``/try``.

Server-rendered HTML (Jinja2 templates shipped with the package, one stylesheet, charts as inline SVG); the
pages work without JavaScript, and ``ui/drop.js`` only adds dropping images on the "try it" page. "Try it"
answers through the very handler of ``POST /v1/predict`` (one source pass per image size for every task), and
a refused upload shows the one-line error that route answers, with its status.
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, select_autoescape

from snowhub._version import __version__
from snowhub.errors import TaskNotFoundError
from snowhub.serving.http._errors import ServeError, one_line
from snowhub.serving.http._routes_predict import predict
from snowhub.serving.http._state import ServerState, get_state
from snowhub.serving.http._ui_views import ProbeChecks, hub_view, task_view

router = APIRouter(include_in_schema=False)  # pages for people; the API at /docs is unchanged

_HERE = Path(__file__).resolve().parent
_STATIC = {"style.css": "text/css; charset=utf-8", "drop.js": "text/javascript; charset=utf-8"}
_TOP = 5  # answers per task on "try it", as /v1/predict's default


def _params(n: int | None) -> str:
    if n is None:
        return "—"
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} k" if n >= 1e3 else str(n)


def _environment() -> Environment:
    env = Environment(loader=FileSystemLoader(_HERE / "templates"), autoescape=select_autoescape(default=True),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["pct"] = lambda v, digits=2: "—" if v is None else f"{v:.{digits}f} %"
    env.filters["params"] = _params
    env.filters["num"] = lambda v, digits=1: "—" if v is None else f"{v:,.{digits}f}"
    env.filters["count"] = lambda v: "—" if v is None else f"{v:,}"
    env.globals["version"] = __version__
    return env


_templates = Jinja2Templates(env=_environment())
_probes_lock = threading.Lock()


def _probes(request: Request) -> ProbeChecks:
    """The app's probe checks (made on first use, one per app)."""
    with _probes_lock:
        if not hasattr(request.app.state, "snowhub_probes"):
            request.app.state.snowhub_probes = ProbeChecks()
        return request.app.state.snowhub_probes


def _page(request: Request, template: str, status: int = 200, **context) -> HTMLResponse:
    return _templates.TemplateResponse(request, template, context, status_code=status)


async def _api_error(request: Request, error: Exception) -> tuple[int, str]:
    """The status and one-line message the app's own error handlers answer for `error` (as the API would)."""
    for kind in type(error).__mro__:
        handler = request.app.exception_handlers.get(kind)
        if handler is not None:
            response = await handler(request, error)
            return response.status_code, json.loads(response.body)["error"]
    return 500, one_line(error)


@router.get("/", response_class=HTMLResponse)
async def hub_page(request: Request, sort: str = Query("seq"), order: str = Query("asc"),
                   state: ServerState = Depends(get_state)) -> HTMLResponse:
    """The hub: its source, the server's health and counters, and a sortable table of every task."""
    view = await asyncio.to_thread(hub_view, state, sort, order == "desc")
    return _page(request, "hub.html", **view)


@router.get("/tasks/{task}", response_class=HTMLResponse)
async def task_page(task: str, request: Request, state: ServerState = Depends(get_state)) -> HTMLResponse:
    """A task: its training curves, classes, hyper-parameters, channel pooling per tap, lineage, probe verdict."""
    try:
        view = await asyncio.to_thread(task_view, state, task, _probes(request))
    except TaskNotFoundError as error:
        return _page(request, "error.html", 404, title="no such task", error=one_line(error))
    return _page(request, "task.html", **view)


@router.post("/tasks/{task}/verify")
async def verify(task: str, request: Request, state: ServerState = Depends(get_state)) -> Response:
    """Run ``verify-forgetting``'s probe check of the whole hub now, keep it, and show `task`'s page again."""
    if state.catalog.known(task) is None:  # nothing to show afterwards: refuse before running the check
        return _page(request, "error.html", 404, title="no such task",
                     error=f"no task named {task!r} is served here; known tasks: {', '.join(state.catalog.names())}")
    await asyncio.to_thread(_probes(request).run, state)
    return RedirectResponse(f"{request.url_for('task_page', task=task).path}#probe", status_code=303)


@router.get("/try", response_class=HTMLResponse)
async def try_page(request: Request, state: ServerState = Depends(get_state)) -> HTMLResponse:
    """The upload form: one or more images, answered by every task."""
    names = await asyncio.to_thread(lambda: (state.catalog.refresh(at_most_every_s=state.config.poll_s),
                                             state.catalog.names())[1])
    return _page(request, "try.html", tasks=names, answers=None, error=None, max_images=state.config.max_images)


@router.post("/try", response_class=HTMLResponse)
async def try_answers(request: Request, state: ServerState = Depends(get_state)) -> HTMLResponse:
    """Every task's top-5 for each uploaded image, from ``POST /v1/predict``'s own handler; its error if refused."""
    context = {"tasks": state.catalog.names(), "max_images": state.config.max_images, "answers": None, "error": None}
    try:
        response = await predict(request, tasks=None, top=_TOP, state=state)
    except Exception as error:  # noqa: BLE001 - shown as the API's own one-line error, with its status
        status, message = await _api_error(request, error)
        return _page(request, "try.html", status, **context | {"error": message})
    unavailable = response.headers.get("Snowhub-Unavailable-Tasks")
    return _page(request, "try.html", **context | {"answers": json.loads(response.body), "top": _TOP,
                                                   "unavailable": unavailable.split(",") if unavailable else []})


@router.get("/ui/{name}")
async def static(name: str) -> Response:
    """The stylesheet and the drop script (nothing else is served from the package's files)."""
    if name not in _STATIC:
        raise ServeError(404, f"no file /ui/{name}; the pages are /, /tasks/TASK and /try")
    return FileResponse(_HERE / "static" / name, media_type=_STATIC[name], headers={"Cache-Control": "max-age=300"})
