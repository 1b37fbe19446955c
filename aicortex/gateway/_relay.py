"""What a gateway client sees of a fleet reply (sans-IO): events in, wire bytes out.

A :class:`Relay` turns the :class:`~aicortex.StreamEvent` s of one
:class:`~aicortex.AsyncStream` into the bytes of the client's response: Ollama's NDJSON
(``application/x-ndjson``, one JSON object and ``\\n`` per chunk, Ollama ``docs/api.md``)
or OpenAI's Server-Sent Events (``data: {...}\\n\\n``, ending with ``data: [DONE]``).

Failover is invisible where it is sound: a ``meta`` event ``{"failover": "continue"}``
(the next server continues the partial reply) writes nothing, and the continuation's
tokens follow the earlier ones. A ``reset`` (the engine restarts the reply from scratch
on the next server: a tool call was already sent, a structured ``format``, a partial reply
too short to continue) cannot be hidden once output reached the client, since sent text
cannot be taken back: the relay then writes Ollama's in-stream error line
``{"error": "..."}`` (``server/routes.go`` ``streamResponse``; OpenAI: an ``error`` event)
and :attr:`Relay.broken` tells the driver to stop. Before any output, a restart is
invisible as well.
"""

from __future__ import annotations

import datetime
import json
import time
from json.encoder import encode_basestring  # the C encoder of json.dumps(ensure_ascii=False)
from typing import Any, Literal, Sequence

from .._models import Attempt, StreamEvent, Usage
from .._shapes import Endpoint, event_chunk, final_chunk
from . import _openai

__all__ = ["Relay", "OUTPUT_EVENTS", "RESTART_ERROR", "encode"]

#: Event types that carry output a client sees.
OUTPUT_EVENTS = frozenset(("token", "thinking", "tool_call"))

#: The in-stream error text when a reply that already reached the client had to be
#: restarted on another server (it cannot be continued where it broke).
RESTART_ERROR = (
    "the server generating this reply failed and the reply cannot be continued on another "
    "server ({why}); the partial reply above is incomplete: send the request again"
)

Protocol = Literal["ollama", "openai"]


def encode(obj: Any) -> bytes:
    """Compact JSON, UTF-8 (non-ASCII characters as they are)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


_stamp_cache: list[Any] = [-1, ""]


def stamp() -> str:
    """Ollama's ``created_at`` for now (RFC 3339, UTC, microseconds), formatted at most once
    per millisecond (formatting costs more than the rest of a chunk)."""
    now = time.time()
    ms = int(now * 1000)
    if ms != _stamp_cache[0]:
        _stamp_cache[0] = ms
        _stamp_cache[1] = datetime.datetime.fromtimestamp(now, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return str(_stamp_cache[1])


class Relay:
    """One reply's events -> the client's bytes (see the module docstring).

    Args:
        protocol: ``"ollama"`` (NDJSON) or ``"openai"`` (SSE).
        endpoint: ``"chat"`` or ``"generate"`` (OpenAI: chat completion chunks, or the
            ``text_completion`` objects of ``/v1/completions``).
        model: the model name as the client sent it (echoed, as Ollama does).
        request_id: the fleet request's id (OpenAI ``id``; ``aicortex.request_id``).
        created: Unix seconds (OpenAI ``created``).
        include_usage: OpenAI ``stream_options.include_usage``: a usage chunk at the end.
        structured: the request has a ``format`` (structured output is restarted, never
            continued); ``templated``: a templated ``/api/generate`` prompt (likewise).
            Both only word the error of a restart that cannot be hidden.

    Attributes:
        sent: output (a token, thinking or a tool call) was written for the client.
        broken: why the reply ended with an in-stream error, or ``None``.
        failovers: the failover kinds seen in the stream (``"continue"`` / ``"restart"``).
    """

    def __init__(
        self, protocol: Protocol, *, endpoint: Endpoint = "chat", model: str, request_id: str,
        created: int = 0, include_usage: bool = False, structured: bool = False, templated: bool = False,
    ) -> None:
        self.protocol = protocol
        self.endpoint = endpoint
        self.model = model
        self.request_id = request_id
        self.created = created
        self.include_usage = include_usage
        self.sent = False
        self.broken: str | None = None
        self.failovers: list[str] = []
        self._tools = 0
        self.structured = structured
        self.templated = templated
        # The fast path of the common chunk (a token without logprobs): its JSON is the
        # same as event_chunk's / _openai.chunk's, written from pre-encoded pieces.
        name = encode_basestring(model)
        if protocol == "openai" and endpoint == "generate":  # /v1/completions
            self._head = (
                f'data: {{"id":{encode_basestring(request_id)},"object":"text_completion","created":{int(created)},'
                f'"model":{name},"system_fingerprint":"fp_aicortex","choices":[{{"text":'
            ).encode()
            self._tail = b',"index":0,"finish_reason":null}]}\n\n'
        elif protocol == "openai":
            self._head = (
                f'data: {{"id":{encode_basestring(request_id)},"object":"chat.completion.chunk","created":{int(created)},'
                f'"model":{name},"system_fingerprint":"fp_aicortex","choices":[{{"index":0,"delta":{{"content":'
            ).encode()
            self._tail = b'},"finish_reason":null}]}\n\n'
        elif endpoint == "chat":
            self._head = f'{{"model":{name},"created_at":"'.encode()
            self._mid = b'","message":{"role":"assistant","content":'
            self._tail = b'},"done":false}\n'
        else:
            self._head = f'{{"model":{name},"created_at":"'.encode()
            self._mid = b'","response":'
            self._tail = b',"done":false}\n'

    # -- framing ---------------------------------------------------------------------------
    def _frame(self, obj: Any) -> bytes:
        if self.protocol == "openai":
            return b"data: " + encode(obj) + b"\n\n"
        return encode(obj) + b"\n"

    @property
    def content_type(self) -> str:
        """``application/x-ndjson`` (Ollama) or ``text/event-stream; charset=utf-8`` (OpenAI)."""
        return "text/event-stream; charset=utf-8" if self.protocol == "openai" else "application/x-ndjson"

    # -- events ----------------------------------------------------------------------------
    def event(self, ev: StreamEvent) -> bytes:
        """The bytes to write for ``ev`` (``b""`` for none). After a ``reset`` that cannot
        be hidden it returns the error line and sets :attr:`broken`."""
        kind = ev.type
        if kind == "token" and self.sent and not ev.logprobs and self.broken is None:
            text = encode_basestring(ev.content).encode()
            if self.protocol == "openai":
                return self._head + text + self._tail
            return self._head + stamp().encode() + self._mid + text + self._tail
        if kind in OUTPUT_EVENTS:
            if self.broken is not None:
                return b""
            if kind == "tool_call":
                self._tools += 1
            if self.protocol == "openai" and self.endpoint == "generate":
                if kind != "token":  # a text completion has no place for thinking
                    return b""
                self.sent = True
                return self._frame(_openai.completion_chunk(self.request_id, self.model, self.created, ev.content))
            if self.protocol == "openai":
                delta = _openai.delta_of(ev, first=not self.sent, tool_index=self._tools - 1)
                self.sent = True
                return self._frame(_openai.chunk(self.request_id, self.model, self.created, delta or {}))
            chunk = event_chunk(ev, endpoint=self.endpoint, model=self.model, stamp=stamp())
            self.sent = True
            return self._frame(chunk) if chunk is not None else b""
        if kind == "meta" and ev.meta:
            mode = ev.meta.get("failover")
            if mode in ("continue", "restart"):
                self.failovers.append(str(mode))
            return b""
        if kind == "reset" and self.sent and self.broken is None:
            return self.error(RESTART_ERROR.format(why=self._restart_why()))
        return b""

    def _restart_why(self) -> str:
        if self._tools:
            return "a tool call was already sent"
        if self.structured:
            return "structured output (format) is never continued"
        if self.templated:
            return "a templated /api/generate prompt cannot be continued; send raw prompts for that"
        return "the partial reply was too short to continue"

    def error(self, message: str) -> bytes:
        """The in-stream error for a reply that cannot complete (sets :attr:`broken`):
        Ollama ``{"error": message}\\n``; OpenAI an ``error`` event then ``[DONE]``."""
        self.broken = message
        if self.protocol == "openai":
            return self._frame(_openai.error_object(message, 500)) + b"data: [DONE]\n\n"
        return self._frame({"error": message})

    def finish(
        self, *, usage: Usage | None, server: str | None, attempts: "Sequence[Attempt]",
        context: "tuple[int, ...] | None" = None, tool_calls: bool = False,
    ) -> bytes:
        """The closing bytes of a completed reply: Ollama's ``done: true`` chunk with the
        metrics (and ``context`` for generate); OpenAI's ``finish_reason`` chunk, the usage
        chunk when asked, and ``[DONE]``. Both carry an extra ``aicortex`` object
        (``request_id``, ``server``, ``attempts``, ``failovers``) that clients ignore."""
        extra = {"aicortex": self.trailer(server, attempts)}
        if self.protocol == "openai":
            reason = _openai.finish_reason(usage.done_reason if usage else None, tool_calls or self._tools > 0)
            if self.endpoint == "generate":
                last = _openai.completion_chunk(self.request_id, self.model, self.created, "", reason)
                last.update(extra)
                out = self._frame(last)
            else:
                out = self._frame(_openai.finish_chunk(self.request_id, self.model, self.created, reason, extra))
            if self.include_usage:
                out += self._frame(_openai.usage_chunk(self.request_id, self.model, self.created, usage))
            return out + b"data: [DONE]\n\n"
        final = final_chunk(endpoint=self.endpoint, model=self.model, usage=usage, context=context, stamp=stamp())
        final.update(extra)
        return self._frame(final)

    def trailer(self, server: str | None, attempts: "Sequence[Attempt]") -> dict[str, Any]:
        """The extra ``aicortex`` object of a final chunk or body: ``request_id``, the
        ``server`` that finished the reply, how many ``attempts`` it took, and the kind
        of each ``failovers`` step (``retry`` before the first token, ``continue``,
        ``restart``)."""
        kinds = ["retry" if a.mode == "fresh" else a.mode for a in attempts[1:]]
        return {"request_id": self.request_id, "server": server, "attempts": len(attempts), "failovers": kinds}

