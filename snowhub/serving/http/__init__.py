"""The HTTP server of a hub: Open Inference Protocol v2 routes over the resident Predictor (``snowhub serve``).

:func:`create_app` builds the FastAPI app of a hub (opened read-only); :func:`serve` runs it with uvicorn.
Needs the ``serve`` extra (fastapi, uvicorn, python-multipart, prometheus-client). See docs/serving.md.
"""

from snowhub.serving.http.app import create_app
from snowhub.serving.http.config import ServeConfig
from snowhub.serving.http.server import serve

__all__ = ["ServeConfig", "create_app", "serve"]
