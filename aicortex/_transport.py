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

import heapq
import json
import socket
import ssl
import sys
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Iterator, Mapping

import httpx

from ._version import __version__
from ._exceptions import (
    AICortexError,
    BadRequest,
    ConfigError,
    ConnectError,
    ConnectTimeout,
    FirstTokenTimeout,
    HTTPStatusError,
    PoolTimeout,
    ProtocolError,
    ServerError,
    ServerModelNotFound,
    StallTimeout,
)
from ._exceptions import TimeoutError as AICortexTimeout
from ._flow import TIMED_OUT
from ._protocol import MAX_LINE_BYTES, NDJSONDecoder, encode_body, error_text

if TYPE_CHECKING:  # pragma: no cover
    from ._session import AttemptPlan

__all__ = ["Transport", "SyncBody", "client_headers", "ssl_context", "status_error", "USER_AGENT", "DRAIN_BYTES", "DRAIN_S", "MAX_PROBE_BYTES", "show_object"]

#: Longest probe reply read (/api/tags, /api/ps, /api/version, /api/show), in bytes.
MAX_PROBE_BYTES = 8 << 20
USER_AGENT = f"aicortex/{__version__} httpx/{httpx.__version__}"
_MAX_ERROR_BODY = 64 * 1024


def status_error(server: str, status: int, body: bytes, content_type: str, location: str | None = None) -> HTTPStatusError:
    """The error of an HTTP error reply (both transports): ``BadRequest`` (400),
    ``ServerModelNotFound`` (a JSON 404 "model not found"), else ``HTTPStatusError``; a
    3xx names its ``Location`` (redirects are not followed)."""
    text = error_text(body)
    msg = f"HTTP {status}: {text}"
    if 300 <= status < 400 and location:
        return HTTPStatusError(
            f"HTTP {status} redirect to {location[:200]} (not followed: register the server's real URL)",
            server=server,
            status_code=status,
            error=text,
        )
    if status == 400:
        return BadRequest(msg, server=server, status_code=status, error=text)
    if status == 404 and "json" in content_type and "not found" in text:
        return ServerModelNotFound(msg, server=server, status_code=status, error=text)
    return HTTPStatusError(msg, server=server, status_code=status, error=text)


class Transport:
    """Streams /api/chat and fetches bounded JSON probes over one ``httpx.Client`` (sync).

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
        self._server_headers: dict[str, dict[str, str]] = {}
        self._client = client or httpx.Client(
            # identity: the body is read raw (iter_raw), so a compressed reply is never asked for
            headers=client_headers(headers),
            verify=ssl_context(verify),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=20),
            follow_redirects=False,
        )
        self._watchdog = _Watchdog()
        self._closed = False

    def close(self) -> None:
        """Close the connection pool (only when this transport built the client)."""
        self._closed = True
        self._watchdog.close()
        if self._owns:
            self._client.close()

    def open_chat(self, plan: "AttemptPlan") -> "SyncBody":
        """POST ``plan.server``/api/chat and return its body once the head arrived.

        The hard limit of the attempt (the first-token limit, capped by the deadline) is
        kept by a watchdog thread that shuts the socket down when it passes, so a server
        that drips blank lines, spaces or headers cannot hold a read open past it.

        Raises (all :class:`~aicortex.ServerError`, ``.server`` = the server):
            ConnectError: refused, reset, DNS failure, connection lost.
            ConnectTimeout, FirstTokenTimeout: the limit expired before the head.
            BadRequest (400), ServerModelNotFound (404 JSON), HTTPStatusError (others,
            3xx included: redirects are not followed; the error names the Location).
        """
        body = self.prepare_chat(plan)
        body.open()
        return body

    def prepare_chat(self, plan: "AttemptPlan") -> "SyncBody":
        """The body of ``plan``'s attempt, not sent yet: ``body.open()`` sends it (as
        :meth:`open_chat`), and ``body.fire()`` from another thread cuts it at any point
        (a hedged race's loser). Raises ``ConfigError`` when the client was closed."""
        _check_open(self._closed)
        return SyncBody(self, plan)

    def _status_error(self, server: str, response: httpx.Response, data: bytes) -> HTTPStatusError:
        h = response.headers
        return status_error(server, response.status_code, data, h.get("content-type", ""), h.get("location"))

    @staticmethod
    def _read_bounded(response: httpx.Response, server: str, limit: int = _MAX_ERROR_BODY) -> bytes:
        data = bytearray()
        try:
            for piece in response.iter_raw():
                data += piece
                if len(data) >= limit:
                    break
        except httpx.HTTPError as exc:
            raise _translate(exc, server, None, "while reading an error reply") from exc
        return bytes(data[:limit])

    def show(self, server: str, model: str, *, timeout_s: float | None) -> dict[str, Any] | None:
        """POST ``server``/api/show for ``model`` (Ollama ``docs/api.md``): the JSON object,
        or ``None`` on any failure (never raises)."""
        try:
            data = self.request_json(server, "POST", "/api/show", {"model": model}, connect_timeout_s=timeout_s, read_timeout_s=timeout_s)
        except AICortexError:
            return None
        return show_object(data)

    def request_json(
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
        """``method server+path`` with an optional JSON body; the reply's bytes, at most
        ``limit`` (a longer reply is a ``ProtocolError``: replies are bounded).

        Raises:
            ConnectError, ConnectTimeout, AICortexTimeout (read), HTTPStatusError, ProtocolError.
        """
        _check_open(self._closed)
        timeout = httpx.Timeout(connect=connect_timeout_s, read=read_timeout_s, write=connect_timeout_s, pool=connect_timeout_s)
        headers = {"Accept": "application/json", **self.headers_for(server)}
        content = encode_body(body) if body is not None else None
        if content is not None:
            headers["Content-Type"] = "application/json"
        try:
            request = self._client.build_request(method, server + path, content=content, timeout=timeout, headers=headers)
            response = self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise _translate(exc, server, connect_timeout_s, f"on {method} {path}", read_timeout_s) from exc
        try:
            if response.status_code >= 300:
                raise self._status_error(server, response, self._read_bounded(response, server))
            data = self._read_bounded(response, server, limit + 1)
            if len(data) > limit:
                raise ProtocolError(f"{path} reply longer than {limit} bytes", server=server)
            return data
        finally:
            response.close()

    def stream_lines(
        self,
        server: str,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        connect_timeout_s: float | None,
        read_timeout_s: float | None,
        max_line_bytes: int = MAX_LINE_BYTES,
    ) -> Iterator[dict[str, Any]]:
        """``method server+path`` with an optional JSON body, its NDJSON reply decoded
        line by line as it arrives (e.g. ``/api/pull`` progress). A generator: the request
        is sent at the first ``next()``, and closing the generator (or leaving a ``for``
        early) closes the connection. ``read_timeout_s`` bounds each silence between bytes.

        ``{"error": ...}`` lines are yielded like any other: the caller interprets them.

        Raises (while iterating):
            ConnectError, ConnectTimeout, AICortexTimeout (read), HTTPStatusError (an error
            status, its body bounded), ProtocolError (a line that is not a JSON object, or
            longer than ``max_line_bytes``, or a truncated last line).
        """
        _check_open(self._closed)
        timeout = httpx.Timeout(connect=connect_timeout_s, read=read_timeout_s, write=connect_timeout_s, pool=connect_timeout_s)
        headers = {"Accept": "application/x-ndjson", **self.headers_for(server)}
        content = encode_body(body) if body is not None else None
        if content is not None:
            headers["Content-Type"] = "application/json"
        where = f"on {method} {path}"
        try:
            request = self._client.build_request(method, server + path, content=content, timeout=timeout, headers=headers)
            response = self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            _check_open(self._closed, exc)
            raise _translate(exc, server, connect_timeout_s, where, read_timeout_s) from exc
        try:
            if response.status_code >= 300:
                raise self._status_error(server, response, self._read_bounded(response, server))
            encoded = response.headers.get("content-encoding", "identity").lower() not in ("", "identity")
            pieces = response.iter_bytes() if encoded else response.iter_raw()
            decoder = NDJSONDecoder(max_line_bytes, server=server)
            while True:
                try:
                    data = next(pieces)
                except StopIteration:
                    break
                except httpx.HTTPError as exc:
                    _check_open(self._closed, exc)
                    raise _translate(exc, server, connect_timeout_s, where, read_timeout_s) from exc
                yield from decoder.feed(data)
                if decoder.error is not None:
                    raise decoder.error
            yield from decoder.flush()
        finally:
            response.close()

    def get(self, server: str, path: str, *, connect_timeout_s: float | None, read_timeout_s: float | None) -> bytes:
        """GET ``server + path`` (e.g. ``/api/tags``): the body bytes, at most
        ``MAX_PROBE_BYTES``. Raises as :meth:`request_json`."""
        return self.request_json(server, "GET", path, connect_timeout_s=connect_timeout_s, read_timeout_s=read_timeout_s)

    def headers_for(self, server: str) -> Mapping[str, str]:
        """Extra headers for one server (none by default; see ``Client(headers=...)``)."""
        return self._server_headers.get(server, _NO_HEADERS)

    def set_server_headers(self, headers: Mapping[str, Mapping[str, str]]) -> None:
        """``{url: headers}`` sent to that server only, besides the client's own (merged
        into what was set before)."""
        self._server_headers.update({url: dict(h) for url, h in headers.items() if h})


_NO_HEADERS: Mapping[str, str] = {}


def client_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    """The headers of every request: ``User-Agent: aicortex/...`` and
    ``Accept-Encoding: identity`` (the body is read raw), then the caller's, which
    replace ours of the same name in any letter case (HTTP names are case-insensitive:
    ``{"user-agent": ...}`` must not add a second User-Agent)."""
    out = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    for name, value in (headers or {}).items():
        for same in [k for k in out if k.lower() == name.lower()]:
            del out[same]
        out[name] = value
    return out


def _check_open(closed: bool, cause: BaseException | None = None) -> None:
    """A closed client sends nothing, and a request it cut is not the server's failure:
    ``ConfigError``."""
    if closed:
        raise ConfigError("this client was closed (close() / aclose()); make a new client to send requests") from cause


def ssl_context(verify: bool | str) -> ssl.SSLContext | bool:
    """TLS settings for both transports: ``True`` (verify with the system's CAs),
    ``False`` (no verification), or the path of a CA bundle file.

    Raises:
        ConfigError: the CA bundle cannot be read.
    """
    if verify is True:
        return ssl.create_default_context()
    if verify is False:
        return False
    try:
        return ssl.create_default_context(cafile=verify)
    except (OSError, ssl.SSLError, ValueError, TypeError) as exc:
        raise ConfigError(f"verify={verify!r}: cannot load the CA bundle ({exc}); pass True, False or a readable CA file") from exc


class _Watchdog:
    """One daemon thread that shuts down the socket of a response whose hard limit
    (``time.monotonic`` seconds) passed. Entries hold bodies weakly; re-arming a body
    makes its older entry stale."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, "weakref.ref[SyncBody]"]] = []
        self._cv = threading.Condition()
        self._seq = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="aicortex-watchdog", daemon=True)
        self._thread.start()

    def arm(self, body: "SyncBody", until: float | None) -> None:
        with self._cv:
            self._seq += 1
            body._armed = self._seq
            body._armed_until = until
            if until is None:
                return
            heapq.heappush(self._heap, (until, self._seq, weakref.ref(body)))
            if self._heap[0][1] == self._seq:
                self._cv.notify()

    def disarm(self, body: "SyncBody") -> None:
        body._armed = 0

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._heap.clear()
            self._cv.notify()

    def _run(self) -> None:
        while True:
            with self._cv:
                while True:
                    if self._closed:
                        return
                    while self._heap:
                        _, seq, ref = self._heap[0]
                        body = ref()
                        if body is not None and body._armed == seq:
                            break
                        heapq.heappop(self._heap)
                    else:
                        self._cv.wait()
                        continue
                    delay = self._heap[0][0] - time.monotonic()
                    if delay <= 0:
                        heapq.heappop(self._heap)
                        break
                    self._cv.wait(delay)
            body.fire()
            del body


def _sending_stream() -> Any:
    """The network stream of the httpcore connection whose trace callback is running
    (``HTTP11Connection.handle_request`` holds it as ``_network_stream``), or ``None``."""
    frame: Any = sys._getframe(2)
    for _ in range(8):
        if frame is None:
            return None
        stream = getattr(frame.f_locals.get("self"), "_network_stream", None)
        if stream is not None:
            return stream
        frame = frame.f_back
    return None


class SyncBody:
    """The body of one streamed /api/chat attempt (sync), read by the driver's ``Read``."""

    __slots__ = ("_t", "plan", "_response", "_it", "_stream", "fired", "_armed", "_armed_until", "__weakref__")

    def __init__(self, transport: Transport, plan: "AttemptPlan") -> None:
        self._t = transport
        self.plan = plan
        self._response: httpx.Response | None = None
        self._it: Iterator[bytes] | None = None
        self._stream: Any = None
        self.fired = False
        self._armed = 0
        self._armed_until: float | None = None

    @property
    def server(self) -> str:
        """URL of the server this body comes from."""
        return self.plan.server

    def abort(self) -> None:
        """Close the connection at once."""
        self.close(False)

    def _trace(self, name: str, info: Mapping[str, Any]) -> None:
        if name in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            self._stream = info.get("return_value")
        elif name == "http11.send_request_headers.started" and self._stream is None:
            # A keep-alive connection from the pool: no connect to trace. Its stream is
            # the one of the HTTP/1.1 connection sending this request (the caller's frame),
            # so the watchdog can also cut the header phase of a reused connection.
            self._stream = _sending_stream()
        else:
            return
        if self.fired:  # cut before its socket was known (a race's loser): cut it now
            self.fire()

    def fire(self) -> None:
        """The hard limit passed: shut the socket down so the blocked read returns."""
        self.fired = True
        stream = self._stream
        if stream is None and self._response is not None:
            stream = self._response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def open(self) -> None:
        plan, t = self.plan, self._t
        server = plan.server
        first = plan.first_token_timeout_s
        timeout = httpx.Timeout(connect=plan.connect_timeout_s, read=first, write=plan.connect_timeout_s, pool=plan.connect_timeout_s)
        headers = {"Accept": "application/x-ndjson", "Content-Type": "application/json", **(plan.headers or {})}
        request = t._client.build_request(
            "POST", server + plan.path, content=encode_body(plan.body), timeout=timeout, headers=headers,
            extensions={"trace": self._trace},
        )
        t._watchdog.arm(self, None if first is None else time.monotonic() + first)
        try:
            response = t._client.send(request, stream=True)
        except httpx.ReadTimeout as exc:
            t._watchdog.disarm(self)
            raise FirstTokenTimeout(
                f"no first token within the first-token timeout of {first:g} s", server=server, timeout_s=first
            ) from exc
        except httpx.HTTPError as exc:
            t._watchdog.disarm(self)
            _check_open(t._closed, exc)  # closed by another thread meanwhile: not the server's failure
            if self.fired:
                raise FirstTokenTimeout(
                    f"no first token within the first-token timeout of {first:g} s", server=server, timeout_s=first
                ) from exc
            raise _translate(exc, server, plan.connect_timeout_s, "before a reply") from exc
        self._response = response
        if response.status_code >= 300:  # redirects are not followed: a wrong URL, said so
            try:
                raise t._status_error(server, response, t._read_bounded(response, server))
            finally:
                self.close(drain=False)
        # From here on the per-read timeout is the stall timeout (the watchdog keeps the
        # first-token limit and the deadline).
        timeouts = response.request.extensions.get("timeout")
        if isinstance(timeouts, dict):
            timeouts["read"] = plan.stall_timeout_s
        # Accept-Encoding: identity is sent; a server (or proxy) that compresses anyway is
        # decoded by httpx (gzip, deflate).
        encoded = response.headers.get("content-encoding", "identity").lower() not in ("", "identity")
        self._it = response.iter_bytes() if encoded else response.iter_raw()

    def read(self, until: float | None) -> Any:
        """The next bytes (``b""`` at the end), ``TIMED_OUT``, or the ``ServerError``."""
        if until != self._armed_until:
            self._t._watchdog.arm(self, until)
        try:
            return next(self._it)  # type: ignore[arg-type]
        except StopIteration:
            _check_open(self._t._closed)
            return TIMED_OUT if self.fired else b""
        except httpx.ReadTimeout:
            return TIMED_OUT
        except httpx.HTTPError as exc:
            _check_open(self._t._closed, exc)  # closed by another thread meanwhile: not the server's failure
            if self.fired:
                return TIMED_OUT
            return _translate(exc, self.plan.server, None, "mid-reply")

    def close(self, drain: bool) -> None:
        """Drain a finished reply (at most ``DRAIN_BYTES``, within ``DRAIN_S``) so the
        connection is reused, else close it; never raises."""
        t = self._t
        response = self._response
        if response is None:
            t._watchdog.disarm(self)
            return
        self._response = None
        try:
            if drain and self._it is not None and not self.fired:
                t._watchdog.arm(self, time.monotonic() + DRAIN_S)
                seen = 0
                for data in self._it:
                    seen += len(data)
                    if seen > DRAIN_BYTES:
                        break
        except httpx.HTTPError:
            pass  # the reply is complete; a broken tail only costs the connection
        finally:
            t._watchdog.disarm(self)
            try:
                response.close()
            except httpx.HTTPError:
                pass


#: After ``done``, read at most this much of what is left (normally only the chunked
#: terminator), for at most ``DRAIN_S`` seconds, so the connection goes back to the pool.
DRAIN_BYTES = 64 * 1024
DRAIN_S = 0.25


def show_object(data: bytes) -> dict[str, Any] | None:
    """An /api/show reply as a dict, or ``None`` if it is not a JSON object."""
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


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
