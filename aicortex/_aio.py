"""HTTP for the async client through aiohttp. The only module that imports it.

Why aiohttp and not ``httpx.AsyncClient``: measured side by side in
``benchmarks/bench_async.py`` (1,000 concurrent streams over 4 loopback servers), httpx's
pure-Python HTTP/1.1 layer (httpcore + h11 + anyio) costs several times the CPU per
chunk of aiohttp's C parser, and the targets of a fleet gateway (chunks/s, event-loop
lag) are out of reach with it. Every aiohttp error is translated here into the
:mod:`aicortex` tree with ``raise ... from exc`` (design rule 4), as ``_transport`` does
for httpx.

Timeouts are exact: the wait for the head (the first-token limit, capped by the
deadline) and each read (the stall limit once output flows, capped by the deadline) run
under ``asyncio.timeout_at`` with the absolute limits the request flow computes, so a
server that drips blank lines or spaces cannot hold a read open past them.
"""

from __future__ import annotations

import asyncio
import sys
import weakref
import zlib
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Mapping, TypeVar

import aiohttp

from ._exceptions import (
    AICortexError,
    ConnectError,
    ConnectTimeout,
    FirstTokenTimeout,
    ProtocolError,
    ServerError,
)
from ._exceptions import TimeoutError as AICortexTimeout
from ._flow import TIMED_OUT
from ._protocol import MAX_LINE_BYTES, NDJSONDecoder, encode_body
from ._transport import DRAIN_BYTES, DRAIN_S, MAX_PROBE_BYTES, _MAX_ERROR_BODY, _check_open, client_headers, show_object, ssl_context, status_error

if TYPE_CHECKING:  # pragma: no cover
    from ._session import AttemptPlan

__all__ = ["AsyncTransport", "AsyncBody"]

T = TypeVar("T")


async def _within(aw: Awaitable[T], until: float | None) -> T:
    """Await ``aw`` by ``until`` (``loop.time()`` seconds); ``asyncio.TimeoutError`` after."""
    if until is None:
        return await aw
    if sys.version_info >= (3, 11):
        async with asyncio.timeout_at(until):
            return await aw
    return await asyncio.wait_for(aw, max(0.0, until - asyncio.get_running_loop().time()))  # pragma: no cover


class AsyncTransport:
    """Streams /api/chat and fetches bounded JSON probes over one ``aiohttp.ClientSession``.

    Args:
        headers: extra request headers for every server.
        verify: TLS verification: ``True`` (default), ``False``, or a CA bundle path.
        max_connections: connection-pool size (streams open at once, all servers).

    The session is created on first use, inside the running event loop.
    """

    def __init__(self, *, headers: Mapping[str, str] | None = None, verify: bool | str = True, max_connections: int = 100) -> None:
        self._ssl = ssl_context(verify)
        self._headers = client_headers(headers)
        self._limit = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._server_headers: dict[str, dict[str, str]] = {}
        self._closed = False
        self._bodies: "weakref.WeakSet[AsyncBody]" = weakref.WeakSet()  # responses in flight

    def set_server_headers(self, headers: Mapping[str, Mapping[str, str]]) -> None:
        """``{url: headers}`` sent to that server only, besides the client's own (merged
        into what was set before)."""
        self._server_headers.update({url: dict(h) for url, h in headers.items() if h})

    def _get_session(self) -> aiohttp.ClientSession:
        _check_open(self._closed)  # a closed client never opens a new pool (nothing would close it)
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._limit, limit_per_host=0, ssl=self._ssl)
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers=self._headers,
                auto_decompress=False,
                timeout=aiohttp.ClientTimeout(total=None),
            )
        return self._session

    def release(self) -> None:
        """Drop the connection pool at once, without awaiting: for a finalizer, when a
        client is let go unclosed (``await ollama.AsyncClient().chat(...)``, the official
        client's README habit). Its sockets are closed now and aiohttp logs no
        "Unclosed client session"; :meth:`aclose` is the way otherwise."""
        self._closed = True
        session, self._session = self._session, None
        if session is None or session.closed:
            return
        connector = session.connector
        session.detach()  # the session counts as closed; the pool is closed below
        if connector is not None:
            try:  # the synchronous part of connector.close(): every connection closed now
                connector._close(abort_ssl=True)
            except TypeError:  # aiohttp before abort_ssl
                connector._close()

    async def aclose(self) -> None:
        """Close the connection pool, and the responses in flight (their readers get a
        ``ConfigError``: a request cut by close is not the server's failure)."""
        self._closed = True
        for body in list(self._bodies):
            body.abort()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def open_chat(self, plan: "AttemptPlan") -> "AsyncBody":
        """POST ``plan.server``/api/chat and return its body once the head arrived.

        Raises the same :class:`~aicortex.ServerError`\\ s as the sync ``Transport.open_chat``.
        """
        server = plan.server
        first = plan.first_token_timeout_s
        loop = asyncio.get_running_loop()
        until = None if first is None else loop.time() + first
        headers = {"Accept": "application/x-ndjson", "Content-Type": "application/json", **(plan.headers or {})}
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=plan.connect_timeout_s)
        session = self._get_session()
        try:
            response = await _within(
                session.post(server + plan.path, data=encode_body(plan.body), headers=headers, timeout=timeout, allow_redirects=False),
                until,
            )
        except aiohttp.ServerTimeoutError as exc:  # also an asyncio.TimeoutError: test it first
            raise _translate(exc, server, plan.connect_timeout_s, "before a reply") from exc
        except asyncio.TimeoutError as exc:
            raise FirstTokenTimeout(
                f"no first token within the first-token timeout of {first:g} s", server=server, timeout_s=first
            ) from exc
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            _check_open(self._closed, exc)  # closed meanwhile: not the server's failure
            raise _translate(exc, server, plan.connect_timeout_s, "before a reply") from exc
        if response.status >= 300:
            try:
                raise await self._status_error(server, response)
            finally:
                response.close()
        body = AsyncBody(response, server, self)
        self._bodies.add(body)
        encoding = response.headers.get("Content-Encoding", "identity").lower()
        if encoding in ("gzip", "x-gzip", "deflate"):  # compressed although not asked for
            body._zlib = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib header, detected
        elif encoding not in ("", "identity"):
            response.close()
            raise ProtocolError(f"reply in an unsupported Content-Encoding {encoding!r}", server=server)
        return body

    async def _status_error(self, server: str, response: aiohttp.ClientResponse) -> ServerError:
        try:
            data = await _within(response.content.read(_MAX_ERROR_BODY), asyncio.get_running_loop().time() + 5.0)
        except (asyncio.TimeoutError, aiohttp.ClientError, OSError):
            data = b""
        h = response.headers
        return status_error(server, response.status, data, h.get("Content-Type", ""), h.get("Location"))

    async def request_json(
        self,
        server: str,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        connect_timeout_s: float | None,
        read_timeout_s: float | None,
        limit: int = MAX_PROBE_BYTES,
    ) -> bytes:
        """``method server+path`` with an optional JSON body: the reply's bytes, at most
        ``limit`` (longer is a ``ProtocolError``). Raises as the sync transport's."""
        headers = {"Accept": "application/json", **self._server_headers.get(server, {})}
        data = None
        if body is not None:
            data = encode_body(body)
            headers["Content-Type"] = "application/json"
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_s, sock_read=read_timeout_s)
        try:
            async with self._get_session().request(method, server + path, data=data, headers=headers, timeout=timeout, allow_redirects=False) as response:
                if response.status >= 300:
                    raise await self._status_error(server, response)
                pieces: list[bytes] = []
                size = 0
                while size <= limit:
                    piece = await response.content.readany()
                    if not piece:
                        break
                    pieces.append(piece)
                    size += len(piece)
                payload = b"".join(pieces)
        except AICortexError:
            raise
        except aiohttp.ServerTimeoutError as exc:
            raise _translate(exc, server, connect_timeout_s, f"on {method} {path}", read_timeout_s) from exc
        except asyncio.TimeoutError as exc:
            raise AICortexTimeout(f"read timeout on {method} {path}", server=server, timeout_s=read_timeout_s) from exc
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise _translate(exc, server, connect_timeout_s, f"on {method} {path}") from exc
        if len(payload) > limit:
            raise ProtocolError(f"{path} reply longer than {limit} bytes", server=server)
        return payload

    async def stream_lines(
        self,
        server: str,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        connect_timeout_s: float | None,
        read_timeout_s: float | None,
        max_line_bytes: int = MAX_LINE_BYTES,
    ) -> AsyncIterator[dict[str, Any]]:
        """As the sync ``Transport.stream_lines``: an async generator of the NDJSON reply's
        objects as they arrive; ``aclose()`` (or leaving ``async for`` early, then closing
        it) closes the connection. Raises as the sync version, while iterating."""
        headers = {"Accept": "application/x-ndjson", **self._server_headers.get(server, {})}
        data = None
        if body is not None:
            data = encode_body(body)
            headers["Content-Type"] = "application/json"
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_s, sock_read=read_timeout_s)
        where = f"on {method} {path}"
        decoder = NDJSONDecoder(max_line_bytes, server=server)
        try:
            async with self._get_session().request(method, server + path, data=data, headers=headers, timeout=timeout, allow_redirects=False) as response:
                if response.status >= 300:
                    raise await self._status_error(server, response)
                encoding = response.headers.get("Content-Encoding", "identity").lower()
                inflate: Any = None
                if encoding in ("gzip", "x-gzip", "deflate"):  # compressed although not asked for
                    inflate = zlib.decompressobj(zlib.MAX_WBITS | 32)
                elif encoding not in ("", "identity"):
                    raise ProtocolError(f"reply in an unsupported Content-Encoding {encoding!r}", server=server)
                while True:
                    piece = await response.content.readany()
                    if not piece:
                        break
                    if inflate is not None:
                        try:
                            piece = inflate.decompress(piece)
                        except zlib.error as exc:
                            raise ProtocolError(f"bad compressed reply: {exc}", server=server) from exc
                    for obj in decoder.feed(piece):
                        yield obj
                    if decoder.error is not None:
                        raise decoder.error
                if inflate is not None:
                    for obj in decoder.feed(inflate.flush()):
                        yield obj
                for obj in decoder.flush():
                    yield obj
        except AICortexError:
            raise
        except aiohttp.ServerTimeoutError as exc:
            raise _translate(exc, server, connect_timeout_s, where, read_timeout_s) from exc
        except asyncio.TimeoutError as exc:
            raise AICortexTimeout(f"read timeout {where}", server=server, timeout_s=read_timeout_s) from exc
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            _check_open(self._closed, exc)
            raise _translate(exc, server, connect_timeout_s, where) from exc

    async def show(self, server: str, model: str, *, timeout_s: float | None) -> dict[str, Any] | None:
        """POST ``server``/api/show for ``model``: the JSON object, or ``None`` (never raises)."""
        try:
            data = await self.request_json(server, "POST", "/api/show", {"model": model}, connect_timeout_s=timeout_s, read_timeout_s=timeout_s)
        except AICortexError:
            return None
        return show_object(data)


class AsyncBody:
    """The body of one streamed /api/chat attempt (async), read by the driver's ``Read``."""

    __slots__ = ("_response", "_content", "server", "_zlib", "_error", "_t", "__weakref__")

    def __init__(self, response: aiohttp.ClientResponse, server: str, transport: AsyncTransport) -> None:
        self._t = transport
        self._response = response
        self._content = response.content
        self.server = server
        self._zlib: Any = None
        self._error: ServerError | None = None  # raised after the bytes that came before it

    async def read(self, until: float | None, stall_s: float | None) -> Any:
        """The next bytes (``b""`` at the end), ``TIMED_OUT``, or the ``ServerError``."""
        if self._zlib is not None:
            return await self._read_compressed(until, stall_s)
        if self._error is not None:
            return self._error
        content = self._content
        try:
            data = content.read_nowait()
            if data:
                return data
            if not content.at_eof():
                if stall_s is not None:
                    soon = asyncio.get_running_loop().time() + stall_s
                    until = soon if until is None or soon < until else until
                data = await _within(content.readany(), until)
        except asyncio.TimeoutError:
            return TIMED_OUT
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            _check_open(self._t._closed, exc)  # closed by the client meanwhile: not the server's failure
            error = _translate(exc, self.server, None, "mid-reply")
            rest = _salvage(content)
            if rest:  # the connection broke, but what arrived before is the server's reply
                self._error = error
                return rest
            return error
        if not data:
            _check_open(self._t._closed)
        return data

    async def _read_compressed(self, until: float | None, stall_s: float | None) -> Any:
        z = self._zlib
        self._zlib = None
        try:
            while True:
                data = await self.read(until, stall_s)
                if data.__class__ is not bytes:
                    return data
                if not data:
                    return z.flush()
                try:
                    out = z.decompress(data)
                except zlib.error as exc:
                    return ProtocolError(f"bad compressed reply: {exc}", server=self.server)
                if out:
                    return out
        finally:
            self._zlib = z

    async def close(self, drain: bool) -> None:
        """Drain a finished reply (bounded in bytes and time) so the connection is reused,
        else close the connection. Never raises (but lets a cancellation through)."""
        response = self._response
        if drain:
            try:
                seen = 0
                until = asyncio.get_running_loop().time() + DRAIN_S
                while seen <= DRAIN_BYTES:
                    data = await _within(self._content.readany(), until)
                    if not data:
                        response.release()
                        return
                    seen += len(data)
            except (asyncio.TimeoutError, aiohttp.ClientError, OSError, ValueError):
                pass
        response.close()

    def abort(self) -> None:
        """Close the connection at once (from a ``finally`` or the garbage collector)."""
        self._response.close()


def _salvage(content: aiohttp.StreamReader) -> bytes:
    """Bytes that arrived before the connection broke. aiohttp's readers raise the
    connection error first and would drop them (a lost token), so they are taken from the
    reader's buffer directly."""
    try:
        if getattr(content, "_buffer", None):
            return bytes(content._read_nowait(-1))
    except Exception:  # pragma: no cover - another aiohttp layout: nothing to save
        pass
    return b""


def _translate(exc: BaseException, server: str, connect_s: float | None, where: str, read_s: float | None = None) -> ServerError:
    """Map an aiohttp error to the aicortex tree (the one translation boundary)."""
    if type(exc).__name__ == "SocketTimeoutError":  # aiohttp's sock_read limit
        return AICortexTimeout(f"read timeout {where} ({read_s:g} s)" if read_s else f"read timeout {where}", server=server, timeout_s=read_s)
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return ConnectTimeout(
            f"connect timeout: no connection within {connect_s:g} s" if connect_s else f"connect timeout: {exc}",
            server=server,
            timeout_s=connect_s,
        )
    if isinstance(exc, aiohttp.ClientConnectorError):
        reason = str(exc.os_error) if exc.os_error else str(exc)
        if isinstance(exc.os_error, ConnectionRefusedError) or "refused" in reason.lower():
            reason = "connection refused"
        return ConnectError(f"cannot connect: {reason}", server=server)
    if isinstance(exc, (aiohttp.ClientResponseError,)) and not isinstance(exc, aiohttp.ClientConnectionError):
        return ProtocolError(f"bad HTTP reply {where}: {exc.message}", server=server)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return ConnectError(f"connection lost {where}: {exc}", server=server)
    if isinstance(exc, (aiohttp.ClientConnectionError, OSError)):
        return ConnectError(f"connection lost {where}: {exc or type(exc).__name__}", server=server)
    if isinstance(exc, ValueError):
        return ProtocolError(f"bad HTTP reply {where}: {exc}", server=server)
    return ConnectError(f"HTTP failure {where}: {type(exc).__name__}: {exc}", server=server)
