"""One request as the gateway answers it: HTTP error answers in both protocols, and
:class:`FleetReply`, the ASGI app that sends a generating request to the fleet and relays
the reply to the client (nothing before the first token, as Ollama; a client that goes
away cancels the upstream request at once).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Literal, MutableMapping

from .._exceptions import (
    AICortexError,
    AllServersFailed,
    BadRequest,
    ConfigError,
    DeadlineExceeded,
    HTTPStatusError,
    ModelNotFound,
    ServerModelNotFound,
)
from . import _openai
from ._limits import Busy
from ._relay import OUTPUT_EVENTS, Relay, encode

if TYPE_CHECKING:  # pragma: no cover
    from .._stream import AsyncStream
    from ._app import Gateway

__all__ = ["FleetReply", "Fail", "Raw", "fail_of", "fail_response", "json_response", "REQUEST_ID_HEADER", "JSON_TYPE"]

logger = logging.getLogger("aicortex.gateway")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ProtocolName = Literal["ollama", "openai"]

#: Response header naming the fleet request (also in the final chunk's ``aicortex`` object
#: and the access log).
REQUEST_ID_HEADER = "x-aicortex-request-id"
JSON_TYPE = "application/json; charset=utf-8"


class Fail(Exception):
    """An HTTP error answer: ``status`` and the message (shaped per protocol later)."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


def _error_bytes(protocol: ProtocolName, status: int, message: str, code: str | None = None) -> bytes:
    if protocol == "openai":
        return encode(_openai.error_object(message, status, code=code))
    return encode({"error": message})


async def _send_body(send: Send, status: int, body: bytes, content_type: str = JSON_TYPE, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({
        "type": "http.response.start", "status": status,
        "headers": [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode()), *(headers or [])],
    })
    await send({"type": "http.response.body", "body": body})


class Raw:
    """A finished response as an ASGI app (JSON by default)."""

    def __init__(self, status: int, body: bytes, content_type: str = JSON_TYPE, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        self.status, self.body, self.content_type, self.headers = status, body, content_type, headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = b"" if scope.get("method") == "HEAD" else self.body
        await send({
            "type": "http.response.start", "status": self.status,
            "headers": [
                (b"content-type", self.content_type.encode()), (b"content-length", str(len(self.body)).encode()),
                *(self.headers or []),
            ],
        })
        await send({"type": "http.response.body", "body": body})


def json_response(obj: Any, status: int = 200, headers: list[tuple[bytes, bytes]] | None = None) -> Raw:
    return Raw(status, encode(obj), headers=headers)


def fail_response(protocol: ProtocolName, fail: Fail) -> Raw:
    headers = [(b"www-authenticate", b"Bearer")] if fail.status == 401 else None
    return Raw(fail.status, _error_bytes(protocol, fail.status, fail.message, fail.code), headers=headers)


def _attempt_kinds(exc: AllServersFailed | DeadlineExceeded) -> str:
    kinds = [type(a.error).__name__ for a in exc.attempts if a.error is not None]
    return ", ".join(kinds) or "none"


def fail_of(exc: AICortexError, *, model: str, embed: bool = False) -> Fail:
    """The HTTP answer for an error raised before any output reached the client.

    Ollama's texts (``docs/api.md``, ``server/routes.go``): an unknown model is 404
    ``model 'x' not found`` (``model "x" not found, try pulling it first`` on the embed
    routes); a 400 from a server is passed on; when every server failed, a 429 or 503
    that all of them gave is passed on, else 502 (a gateway's upstream failure); a
    deadline is 504. The fleet's server URLs are not shown to the client."""
    not_found = f'model "{model}" not found, try pulling it first' if embed else f"model '{model}' not found"
    if isinstance(exc, ConfigError):
        return Fail(400, str(exc))
    if isinstance(exc, (ModelNotFound, ServerModelNotFound)):
        return Fail(404, not_found, "model_not_found")
    if isinstance(exc, BadRequest):
        return Fail(400, exc.error or str(exc))
    if isinstance(exc, AllServersFailed):
        errors = [a.error for a in exc.attempts if a.error is not None]
        if errors and all(isinstance(e, ServerModelNotFound) for e in errors):
            return Fail(404, not_found, "model_not_found")
        statuses = {e.status_code for e in errors if isinstance(e, HTTPStatusError)}
        if errors and len(statuses) == 1 and statuses <= {429, 503} and all(isinstance(e, HTTPStatusError) for e in errors):
            last = errors[-1]
            assert isinstance(last, HTTPStatusError)
            return Fail(last.status_code, last.error or str(last))
        if not exc.attempts:  # every server was down at the last refresh
            return Fail(502, f"no server of the fleet is up to serve model '{model}'")
        return Fail(502, f"every server of the fleet failed this request ({len(exc.attempts)} attempts: {_attempt_kinds(exc)})")
    if isinstance(exc, DeadlineExceeded):
        return Fail(504, f"the request's deadline of {exc.deadline_s:g} s ran out ({_attempt_kinds(exc)})")
    if isinstance(exc, HTTPStatusError):
        return Fail(exc.status_code, exc.error or str(exc))
    return Fail(500, f"{type(exc).__name__}: the fleet could not answer this request")


def _midstream_error(exc: AICortexError) -> str:
    return f"the reply broke and no server could continue it ({type(exc).__name__}); the partial reply above is incomplete"


async def _disconnected(receive: Receive) -> None:
    """Return when the client has gone away (``http.disconnect``)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class FleetReply:
    """One generating request, sent to the fleet and relayed to the client (an ASGI app).

    It holds a :class:`~aicortex.gateway._limits.Limiter` slot for its whole life, and a
    client that goes away cancels it at once: the upstream connection is closed (the
    server stops generating) whether the reply was queued, waiting for its first token or
    streaming.
    """

    def __init__(
        self, gw: "Gateway", *, protocol: ProtocolName, endpoint: Literal["chat", "generate"], body: dict[str, Any],
        model: str, stream: bool, client_key: str, request_id: str, include_usage: bool = False,
    ) -> None:
        self.gw, self.protocol, self.endpoint, self.body = gw, protocol, endpoint, body
        self.model, self.stream, self.client_key, self.request_id = model, stream, client_key, request_id
        self.include_usage = include_usage
        self.created = int(time.time())
        #: The whole answer was sent (what is left is draining the upstream body).
        self.responded = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        info = scope.setdefault("aicortex", {})
        work = asyncio.ensure_future(self._run(send, info))
        watch = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
            if self.responded and not work.done():
                await asyncio.wait({work})  # answered; only the upstream drain is left
        finally:
            if not work.done():
                info["disconnected"] = True
                work.cancel()
            watch.cancel()
            results = await asyncio.gather(work, watch, return_exceptions=True)
        error = results[0]
        if isinstance(error, BaseException) and not isinstance(error, asyncio.CancelledError):
            raise error

    def _headers(self) -> list[tuple[bytes, bytes]]:
        return [(REQUEST_ID_HEADER.encode(), self.request_id.encode())]

    async def _fail(self, send: Send, fail: Fail) -> None:
        await _send_body(send, fail.status, _error_bytes(self.protocol, fail.status, fail.message, fail.code), headers=self._headers())

    async def _run(self, send: Send, info: dict[str, Any]) -> None:
        info["request_id"] = self.request_id
        try:
            async with self.gw.limiter.slot(self.client_key):
                await self._serve(send, info)
        except Busy as exc:
            await self._fail(send, Fail(503, str(exc)))

    async def _open(self) -> "AsyncStream":
        gw = self.gw
        await gw.ensure_fresh()
        try:
            return await gw.client._forward(self.endpoint, self.body, stream=True)  # type: ignore[return-value]
        except ModelNotFound:
            if not await gw.refresh_if_older(5.0):  # a model pulled since the last refresh?
                raise
            return await gw.client._forward(self.endpoint, self.body, stream=True)  # type: ignore[return-value]

    async def _serve(self, send: Send, info: dict[str, Any]) -> None:
        try:
            stream = await self._open()
        except AICortexError as exc:
            await self._fail(send, fail_of(exc, model=self.model))
            return
        relay = Relay(
            self.protocol, endpoint=self.endpoint, model=self.model, request_id=self.request_id, created=self.created,
            include_usage=self.include_usage, structured=self.body.get("format") not in (None, ""),
            templated=self.endpoint == "generate" and not self.body.get("raw"),
        )
        try:
            first: list[Any] = []
            try:
                async for ev in stream:  # nothing is sent before the first output (as Ollama)
                    first.append(ev)
                    if ev.type in OUTPUT_EVENTS or ev.type == "end":
                        break
            except AICortexError as exc:
                await self._fail(send, fail_of(exc, model=self.model))
                self._account(stream, relay, info)
                return
            if not self.stream:
                await self._whole(send, stream, relay)
            else:
                await self._relay(send, stream, relay, first)
            self._account(stream, relay, info)
        finally:
            await stream.aclose()

    async def _whole(self, send: Send, stream: "AsyncStream", relay: Relay) -> None:
        """A non-streamed answer: the whole reply in one JSON body."""
        try:
            reply = await stream.reply()
        except AICortexError as exc:
            await self._fail(send, fail_of(exc, model=self.model))
            return
        extra = {"aicortex": relay.trailer(reply.server, reply.attempts)}
        if self.protocol == "openai" and self.endpoint == "generate":
            body = _openai.completion(self.request_id, self.model, self.created, reply.text, reply.usage, extra)
        elif self.protocol == "openai":
            body = _openai.chat_completion(self.request_id, self.model, self.created, reply.message, reply.usage, extra)
        else:
            from .._shapes import reply_body

            body = reply_body(reply, endpoint=self.endpoint, model=self.model)
            body.update(extra)
        await _send_body(send, 200, encode(body), headers=self._headers())

    async def _relay(self, send: Send, stream: "AsyncStream", relay: Relay, first: list[Any]) -> None:
        """A streamed answer: NDJSON or SSE, one write per event."""
        await send({
            "type": "http.response.start", "status": 200,
            "headers": [(b"content-type", relay.content_type.encode()), *self._headers()],
        })
        out = b"".join(self._bytes(relay, stream, ev) for ev in first)
        if out:
            await send({"type": "http.response.body", "body": out, "more_body": True})
        if relay.broken is None and not (first and first[-1].type == "end"):
            try:
                async for ev in stream:
                    data = self._bytes(relay, stream, ev)
                    if data:
                        await send({"type": "http.response.body", "body": data, "more_body": True})
                    if relay.broken is not None or ev.type == "end":
                        break
            except AICortexError as exc:
                data = relay.error(_midstream_error(exc))
                await send({"type": "http.response.body", "body": data, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        self.responded = True
        if stream.complete and relay.broken is None:
            # The flow drains the finished upstream body after ``end`` so that its
            # connection goes back to the pool (closing it would cost a new TCP
            # connection per request); the client already has its whole answer.
            try:
                async for _ in stream:
                    pass
            except AICortexError:  # pragma: no cover - the reply was complete
                pass

    def _bytes(self, relay: Relay, stream: "AsyncStream", ev: Any) -> bytes:
        if ev.type == "end":
            return relay.finish(
                usage=stream.usage, server=stream.server, attempts=stream.attempts,
                context=stream._session.context, tool_calls=bool(stream.tool_calls),
            )
        return relay.event(ev)

    def _account(self, stream: "AsyncStream", relay: Relay, info: dict[str, Any]) -> None:
        """Metrics and the access log's fields for this reply (never raises)."""
        m = self.gw.metrics
        try:
            attempts = stream.attempts
            for a in attempts[1:]:
                m.failover("retry" if a.mode == "fresh" else a.mode)
            if relay.broken is not None:
                m.failover("broken")
            if stream.complete:
                m.reply(stream.server, self.model, stream.ttft_s, stream.tokens_per_second)
            info.update(
                server=stream.server or (attempts[-1].server if attempts else None), attempts=len(attempts),
                ttft_s=stream.ttft_s, broken=relay.broken is not None,
            )
        except Exception:  # pragma: no cover - bookkeeping never hurts a reply
            logger.debug("accounting failed", exc_info=True)


