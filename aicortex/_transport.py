"""HTTP through httpx: timeouts and error translation. The only module that imports httpx.

Every httpx error is translated here into the :mod:`aicortex` tree with
``raise ... from exc``, carrying the server's URL (design rule 4).

Timeouts of one streamed attempt (see :class:`~aicortex.Timeouts`):

* connect: ``httpx.Timeout.connect`` (and ``write``/``pool``).
* first token: the read timeout until the response headers arrive. Ollama sends its
  status line and headers together with the first chunk (ollama-protocol §3.4), so that
  wait *is* the wait for the first token.
* stall: the read timeout for the body, switched in after the headers.

Behind a proxy that sends headers before the first token, the wait after the headers is
bounded by the stall timeout; a server that sends chunks but no content past the
first-token limit is caught by the session instead.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Mapping

import httpx

from ._version import __version__
from ._exceptions import (
    BadRequest,
    ConnectError,
    ConnectTimeout,
    FirstTokenTimeout,
    HTTPStatusError,
    PoolTimeout,
    ServerError,
    ServerModelNotFound,
    StallTimeout,
)
from ._exceptions import TimeoutError as AICortexTimeout
from ._protocol import error_text

__all__ = ["Transport", "USER_AGENT"]

USER_AGENT = f"aicortex/{__version__} httpx/{httpx.__version__}"
_MAX_ERROR_BODY = 64 * 1024


def _status_error(server: str, status: int, body: bytes, content_type: str) -> HTTPStatusError:
    text = error_text(body)
    msg = f"HTTP {status}: {text}"
    if status == 400:
        return BadRequest(msg, server=server, status_code=status, error=text)
    if status == 404 and "json" in content_type and "not found" in text:
        return ServerModelNotFound(msg, server=server, status_code=status, error=text)
    return HTTPStatusError(msg, server=server, status_code=status, error=text)


class Transport:
    """Streams /api/chat and fetches JSON probes over one ``httpx.Client``.

    Args:
        headers: extra request headers (e.g. ``Authorization``), sent to every server.
        verify: TLS verification (default on), as ``httpx.Client(verify=...)``.
        client: an ``httpx.Client`` to use instead of building one (not closed by us).
        max_connections: connection-pool size.
    """

    def __init__(
        self,
        *,
        headers: Mapping[str, str] | None = None,
        verify: bool | str = True,
        client: httpx.Client | None = None,
        max_connections: int = 100,
    ) -> None:
        self._owns = client is None
        self._client = client or httpx.Client(
            headers={"User-Agent": USER_AGENT, **(headers or {})},
            verify=verify,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=20),
            follow_redirects=False,
        )

    def close(self) -> None:
        """Close the connection pool (only when this transport built the client)."""
        if self._owns:
            self._client.close()

    @contextlib.contextmanager
    def stream_chat(
        self,
        server: str,
        body: Mapping[str, Any],
        *,
        connect_timeout_s: float | None,
        first_token_timeout_s: float | None,
        stall_timeout_s: float | None,
    ) -> Iterator[Iterator[bytes]]:
        """POST ``server``/api/chat and yield an iterator of raw body bytes.

        Leaving the ``with`` block closes the response (and its connection, if unread).

        Raises (all :class:`~aicortex.ServerError`, ``.server`` = ``server``):
            ConnectError: refused, reset, DNS failure, connection lost mid-reply.
            ConnectTimeout, FirstTokenTimeout, StallTimeout: the limit expired.
            BadRequest (400), ServerModelNotFound (404 JSON), HTTPStatusError (others).
        """
        timeout = httpx.Timeout(
            connect=connect_timeout_s,
            read=first_token_timeout_s,
            write=connect_timeout_s,
            pool=connect_timeout_s,
        )
        request = self._client.build_request(
            "POST",
            server + "/api/chat",
            json=body,
            timeout=timeout,
            headers={"Accept": "application/x-ndjson"},
        )
        try:
            response = self._client.send(request, stream=True)
        except httpx.ReadTimeout as exc:
            raise FirstTokenTimeout(
                f"no first token within the first-token timeout of {first_token_timeout_s:g} s",
                server=server,
                timeout_s=first_token_timeout_s,
            ) from exc
        except httpx.HTTPError as exc:
            raise _translate(exc, server, connect_timeout_s, "before a reply") from exc
        try:
            if response.status_code >= 300:  # redirects are not followed: a wrong URL, said so
                body_bytes = self._read_bounded(response, server)
                raise _status_error(
                    server, response.status_code, body_bytes, response.headers.get("content-type", "")
                )
            # From here on the read timeout is the stall timeout (see the module docstring).
            timeouts = response.request.extensions.get("timeout")
            if isinstance(timeouts, dict):
                timeouts["read"] = stall_timeout_s
            yield self._iter_body(response, server, stall_timeout_s)
        finally:
            response.close()

    @staticmethod
    def _iter_body(response: httpx.Response, server: str, stall_s: float | None) -> Iterator[bytes]:
        try:
            yield from response.iter_raw()
        except httpx.ReadTimeout as exc:
            raise StallTimeout(
                f"stalled: no bytes for the stall timeout of {stall_s:g} s", server=server, timeout_s=stall_s
            ) from exc
        except httpx.HTTPError as exc:
            raise _translate(exc, server, None, "mid-reply") from exc

    @staticmethod
    def _read_bounded(response: httpx.Response, server: str) -> bytes:
        data = b""
        try:
            for piece in response.iter_raw():
                data += piece
                if len(data) >= _MAX_ERROR_BODY:
                    break
        except httpx.HTTPError as exc:
            raise _translate(exc, server, None, "while reading an error reply") from exc
        return data[:_MAX_ERROR_BODY]

    def get(self, server: str, path: str, *, connect_timeout_s: float | None, read_timeout_s: float | None) -> bytes:
        """GET ``server + path`` (e.g. ``/api/tags``) and return the body bytes.

        Raises:
            ConnectError, ConnectTimeout, AICortexTimeout (read), HTTPStatusError.
        """
        timeout = httpx.Timeout(connect=connect_timeout_s, read=read_timeout_s, write=connect_timeout_s, pool=connect_timeout_s)
        try:
            response = self._client.get(server + path, timeout=timeout, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise _translate(exc, server, connect_timeout_s, f"on GET {path}", read_timeout_s) from exc
        if response.status_code >= 300:
            raise _status_error(server, response.status_code, response.content, response.headers.get("content-type", ""))
        return response.content


def _translate(
    exc: httpx.HTTPError, server: str, connect_s: float | None, where: str, read_s: float | None = None
) -> ServerError:
    """Map an httpx error to the aicortex tree (the one translation boundary)."""
    if isinstance(exc, httpx.PoolTimeout):
        return PoolTimeout(
            f"no free connection in this client's pool within {connect_s:g} s (raise max_connections)"
            if connect_s
            else f"connection pool timeout: {exc}",
            server=server,
            timeout_s=connect_s,
        )
    if isinstance(exc, httpx.WriteTimeout):
        return AICortexTimeout(f"write timeout {where}", server=server, timeout_s=connect_s)
    if isinstance(exc, httpx.ConnectTimeout):
        return ConnectTimeout(
            f"connect timeout: no connection within {connect_s:g} s" if connect_s else f"connect timeout: {exc}",
            server=server,
            timeout_s=connect_s,
        )
    if isinstance(exc, httpx.ReadTimeout):
        return AICortexTimeout(f"read timeout {where} ({read_s:g} s)" if read_s else f"read timeout {where}", server=server, timeout_s=read_s)
    if isinstance(exc, httpx.ConnectError):
        reason = str(exc) or type(exc).__name__
        if "refused" in reason.lower():
            reason = "connection refused"
        return ConnectError(f"cannot connect: {reason}", server=server)
    if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError, httpx.CloseError)):
        return ConnectError(f"connection lost {where}: {exc or type(exc).__name__}", server=server)
    if isinstance(exc, httpx.TimeoutException):
        return AICortexTimeout(f"timeout {where}: {exc}", server=server)
    return ConnectError(f"HTTP failure {where}: {type(exc).__name__}: {exc}", server=server)
