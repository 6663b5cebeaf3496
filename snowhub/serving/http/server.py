"""`serve`: run the app with uvicorn until SIGTERM or Ctrl-C, finishing the requests in flight, exit 0."""

from __future__ import annotations

import errno
import socket
from contextlib import contextmanager
from pathlib import Path

import torch
import uvicorn

from snowhub.device import available_cpus
from snowhub.errors import ConfigError
from snowhub.serving.http.app import create_app
from snowhub.serving.http.config import ServeConfig


class _GracefulServer(uvicorn.Server):
    """uvicorn's server, except that a SIGTERM/SIGINT it shut down for gracefully is not raised again
    afterwards (uvicorn re-raises it, so the process would die of the signal instead of exiting 0)."""

    @contextmanager
    def capture_signals(self):
        with super().capture_signals():
            yield
            self._captured_signals.clear()


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and without
    # it every keep-alive response waited ~40 ms for the client's delayed ACK (Nagle's algorithm).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # inherited by accepted sockets on Linux
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        why = "the port is in use" if error.errno == errno.EADDRINUSE else (error.strerror or str(error))
        raise ConfigError(f"cannot listen on {host}:{port}: {why}; choose another --port or --host") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(root: Path | str | None, config: ServeConfig, host: str = "127.0.0.1", port: int = 8000,
          access_log: bool = True, log_level: str = "info", registry_url: str | None = None) -> None:
    """Serve the hub at `root` on `host`:`port` until SIGTERM or Ctrl-C (then exit normally).

    Raises:
        ConfigError: an option out of range, or the address cannot be listened on.
        HubNotFoundError, HubVersionError, TaskNotFoundError: see :func:`create_app`.
    """
    app = create_app(root, config, registry_url)
    sock = _listen(host, port)
    server = _GracefulServer(uvicorn.Config(app, log_level=log_level, access_log=access_log,
                                            timeout_graceful_shutdown=max(30, int(config.request_timeout_s))))
    try:
        # Only now that nothing can fail before serving: the thread count is the process's, and changing it
        # changes a CPU training's floating-point sums (a caller that only got an error keeps its own).
        if app.state.snowhub.device.type == "cpu":
            torch.set_num_threads(config.intra_op_threads(available_cpus()))
        server.run(sockets=[sock])
    finally:
        sock.close()
