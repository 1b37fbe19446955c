"""Serving the gateway with uvicorn: a header timeout for its HTTP protocol, and a
background-thread server for tests, demos and benchmarks."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

__all__ = ["ServerThread", "http_protocol", "HEADERS_TIMEOUT_S"]

#: Seconds a connection may take to send a request's headers (from its opening, or from
#: the end of the previous response) before it is closed: a slow-loris client that
#: trickles header bytes would otherwise hold its connection for ever (uvicorn has no
#: such limit; its keep-alive timer is reset by every byte).
HEADERS_TIMEOUT_S = 10.0


def http_protocol(headers_timeout_s: float = HEADERS_TIMEOUT_S, kind: str = "auto") -> type:
    """uvicorn's HTTP protocol class (``kind``: ``"auto"`` picks httptools when installed,
    else h11, as uvicorn does; or ``"h11"`` / ``"httptools"``), with two changes for a
    streaming gateway; pass it as ``uvicorn.Config(http=...)``:

    - a connection whose request headers do not arrive within ``headers_timeout_s``
      seconds is closed (a slow-loris client);
    - every connection has ``TCP_NODELAY``. asyncio sets it only on sockets whose
      ``proto`` is ``IPPROTO_TCP``, and a listening socket made with
      ``socket.socket(AF_INET, SOCK_STREAM)`` (proto 0, as uvicorn's own ``--fd`` /
      ``sockets=`` paths and many process managers hand over) gives accepted sockets
      proto 0: Nagle's algorithm then holds every small chunk after the first until the
      client's delayed ACK, about 40 ms a chunk on Linux.

    It relies on what both of uvicorn's protocols have: ``cycle`` (the request being
    served, ``None`` before the first), ``loop``, ``transport``, ``data_received`` and
    ``on_response_complete``.
    """
    import importlib.util

    base: Any
    if kind == "httptools" or (kind == "auto" and importlib.util.find_spec("httptools") is not None):
        from uvicorn.protocols.http import httptools_impl

        base = httptools_impl.HttpToolsProtocol
    else:
        from uvicorn.protocols.http import h11_impl

        base = h11_impl.H11Protocol

    class HeadersTimeoutProtocol(base):  # type: ignore[misc]
        _headers_timer: Any = None

        def _waiting(self) -> bool:
            cycle = self.cycle
            return cycle is None or bool(cycle.response_complete)

        def _arm(self) -> None:
            self._disarm()
            self._headers_timer = self.loop.call_later(headers_timeout_s, self._expire)

        def _disarm(self) -> None:
            if self._headers_timer is not None:
                self._headers_timer.cancel()
                self._headers_timer = None

        def _expire(self) -> None:
            self._headers_timer = None
            if self._waiting() and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: Any) -> None:
            sock = transport.get_extra_info("socket")
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                except OSError:  # pragma: no cover - a socket that is already gone
                    pass
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._headers_timer is not None and not self._waiting():
                self._disarm()  # a request's headers are in: the app takes over

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self._waiting() and not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeadersTimeoutProtocol


class ServerThread:
    """An ASGI app served by uvicorn in a daemon thread on ``host`` (127.0.0.1) and a free
    port; a context manager. ``url`` is ``http://127.0.0.1:PORT``.

    Args:
        app: the ASGI application (e.g. :func:`aicortex.gateway.create_app`'s).
        host: address to bind; ``port``: 0 picks a free one.
        log_level: uvicorn's log level.
        headers_timeout_s: see :data:`HEADERS_TIMEOUT_S`.

    Raises (from :meth:`start`):
        RuntimeError: the server did not start within ``start_timeout_s`` seconds.
    """

    def __init__(
        self, app: Any, host: str = "127.0.0.1", port: int = 0, *, log_level: str = "warning", start_timeout_s: float = 10.0,
        headers_timeout_s: float = HEADERS_TIMEOUT_S,
    ) -> None:
        self.app, self.host, self.port = app, host, port
        self.headers_timeout_s = headers_timeout_s
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

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app, log_level=self.log_level, access_log=False, lifespan="on", timeout_graceful_shutdown=2,
            http=http_protocol(self.headers_timeout_s),
        )
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
