"""Ollama's own response shapes, rebuilt from aicortex events and replies (sans-IO).

A reply that aicortex streamed from one or more servers (failover included) is handed
on in the shapes a client of Ollama expects: the streamed NDJSON chunks of
``POST /api/chat`` and ``POST /api/generate`` and their non-streamed bodies (Ollama's
``docs/api.md``, "Generate a chat completion" and "Generate a completion"; the field
names are those of ``api/types.go``: ``ChatResponse``, ``GenerateResponse``,
``Metrics``). The drop-in client :mod:`aicortex.ollama` wraps these dicts in the
official client's response types; a gateway writes them out as NDJSON lines.

Every function here is pure: no I/O, no clock except :func:`created_at` (which the
caller may replace with its own timestamp).
"""

from __future__ import annotations

import datetime
from typing import Any, Literal

from ._models import Reply, StreamEvent, Usage

Endpoint = Literal["chat", "generate"]

#: Ollama's ``Metrics`` fields (``api/types.go``), as :class:`~aicortex.Usage` names them.
_METRICS = (
    ("total_duration", "total_duration_ns"),
    ("load_duration", "load_duration_ns"),
    ("prompt_eval_count", "prompt_eval_count"),
    ("prompt_eval_duration", "prompt_eval_duration_ns"),
    ("eval_count", "eval_count"),
    ("eval_duration", "eval_duration_ns"),
)


def created_at(now: datetime.datetime | None = None) -> str:
    """An RFC 3339 UTC timestamp with nanosecond-style precision, as Ollama writes
    ``created_at`` (``"2026-11-22T06:00:00.123456Z"``)."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def tool_call_of(event: StreamEvent) -> dict[str, Any]:
    """The Ollama ``tool_calls`` entry of a ``tool_call`` event:
    ``{"id"?: str, "function": {"index"?: int, "name": str, "arguments": {...}}}``."""
    meta = event.meta or {}
    fn: dict[str, Any] = {}
    if meta.get("index") is not None:
        fn["index"] = meta["index"]
    fn["name"] = event.tool_name or ""
    fn["arguments"] = dict(event.tool_args or {})
    call: dict[str, Any] = {}
    if meta.get("id") is not None:
        call["id"] = meta["id"]
    call["function"] = fn
    return call


def event_chunk(event: StreamEvent, *, endpoint: Endpoint, model: str, stamp: str | None = None) -> dict[str, Any] | None:
    """The streamed ``done: false`` chunk that carries ``event``, or ``None`` for an
    event Ollama has no chunk for (``start``, ``meta``, ``error``, ``reset``, ``end``,
    ``tool_result``).

    - chat: ``{"model", "created_at", "message": {"role": "assistant", "content",
      "thinking"?, "tool_calls"?}, "done": false, "logprobs"?}``
    - generate: ``{"model", "created_at", "response", "thinking"?, "done": false,
      "logprobs"?}``
    """
    if event.type not in ("token", "thinking", "tool_call"):
        return None
    content = event.content if event.type == "token" else ""
    chunk: dict[str, Any] = {"model": model, "created_at": stamp or created_at()}
    if endpoint == "chat":
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if event.type == "thinking":
            message["thinking"] = event.content
        elif event.type == "tool_call":
            message["tool_calls"] = [tool_call_of(event)]
        chunk["message"] = message
    else:
        chunk["response"] = content
        if event.type == "thinking":
            chunk["thinking"] = event.content
    chunk["done"] = False
    if event.logprobs:
        chunk["logprobs"] = [dict(entry) for entry in event.logprobs]
    return chunk


def metrics(usage: Usage | None) -> dict[str, Any]:
    """Ollama's ``Metrics`` fields of a final chunk (durations in integer nanoseconds),
    the ones the server reported; ``{}`` for ``None``."""
    if usage is None:
        return {}
    out: dict[str, Any] = {}
    for wire, field in _METRICS:
        value = getattr(usage, field)
        if value is not None:
            out[wire] = value
    return out


def final_chunk(
    *,
    endpoint: Endpoint,
    model: str,
    usage: Usage | None,
    done_reason: str | None = None,
    context: "tuple[int, ...] | list[int] | None" = None,
    stamp: str | None = None,
) -> dict[str, Any]:
    """The closing ``done: true`` chunk of a stream: empty content, ``done_reason``
    (from ``usage`` when not given; ``"stop"`` when neither says), the metrics, and for
    generate the final ``context`` when there is one."""
    chunk: dict[str, Any] = {"model": model, "created_at": stamp or created_at()}
    if endpoint == "chat":
        chunk["message"] = {"role": "assistant", "content": ""}
    else:
        chunk["response"] = ""
    chunk["done"] = True
    chunk["done_reason"] = done_reason or (usage.done_reason if usage else None) or "stop"
    chunk.update(metrics(usage))
    if endpoint == "generate" and context:
        chunk["context"] = list(context)
    return chunk


def reply_body(reply: Reply, *, endpoint: Endpoint, model: str | None = None, stamp: str | None = None) -> dict[str, Any]:
    """The non-streamed response body of a whole reply (``"stream": false``): for chat
    ``message`` holds the whole assistant message (content, thinking?, tool_calls?);
    for generate ``response`` (and ``thinking``) the whole text; then ``done: true``,
    ``done_reason``, the metrics, ``context`` (generate) and ``logprobs`` when asked."""
    name = model or reply.model
    body = final_chunk(
        endpoint=endpoint, model=name, usage=reply.usage, context=reply.context, stamp=stamp,
    )
    if endpoint == "chat":
        body["message"] = dict(reply.message)
    else:
        body["response"] = reply.text
        thinking = reply.message.get("thinking")
        if thinking:
            body["thinking"] = thinking
    if reply.logprobs:
        body["logprobs"] = [dict(entry) for entry in reply.logprobs]
    return body

