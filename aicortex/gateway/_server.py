"""Running the gateway in a background thread (uvicorn), for tests, demos and benchmarks."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

__all__ = ["ServerThread"]


class ServerThread:
    """An ASGI app served by uvicorn in a daemon thread on ``host`` (127.0.0.1) and a free
    port; a context manager. ``url`` is ``http://127.0.0.1:PORT``.

    Args:
        app: the ASGI application (e.g. :func:`aicortex.gateway.create_app`'s).
        host: address to bind; ``port``: 0 picks a free one.
        log_level: uvicorn's log level.

    Raises (from :meth:`start`):
        RuntimeError: the server did not start within ``start_timeout_s`` seconds.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, *, log_level: str = "warning", start_timeout_s: float = 10.0) -> None:
        self.app, self.host, self.port = app, host, port
        self.log_level = log_level
        self.start_timeout_s = start_timeout_s
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://HOST:PORT``."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> "ServerThread":
        """Bind, start serving and wait until uvicorn is ready (lifespan startup done)."""
        import uvicorn

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level=self.log_level, access_log=False, lifespan="on", timeout_graceful_shutdown=2)
        self._server = server = uvicorn.Server(config)
        self._thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"gateway-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self.start_timeout_s
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the gateway did not start on {self.url}")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        """Ask uvicorn to exit and wait for the thread (at most a few seconds)."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        self._server = self._thread = None

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
