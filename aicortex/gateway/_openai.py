"""OpenAI's shapes for the gateway's ``/v1`` routes (sans-IO, pure functions).

The request side turns a ``POST /v1/chat/completions`` body into an Ollama ``/api/chat``
body (what Ollama's own compatibility layer does, ``openai/openai.go`` in
``ollama/ollama``); the response side builds the ``chat.completion`` object, the
``chat.completion.chunk`` objects of a streamed reply (Server-Sent Events, ending with
``data: [DONE]``), the ``usage`` object, ``/v1/models`` and ``/v1/embeddings`` replies and
OpenAI's error shape ``{"error": {"message", "type", "param", "code"}}`` (OpenAI API
reference, "Chat", "Models", "Embeddings", "Errors").

Field mapping, OpenAI to Ollama: ``max_tokens`` / ``max_completion_tokens`` ->
``options.num_predict``; ``temperature``, ``top_p``, ``seed``, ``stop``,
``frequency_penalty``, ``presence_penalty`` -> ``options``; ``response_format``
``json_object`` -> ``format: "json"`` and ``json_schema`` -> ``format: <schema>``;
``reasoning_effort`` -> ``think``; ``tools`` pass as they are (same shape); message
``content`` parts of type ``text`` are joined and ``image_url`` data URLs become
``images``; assistant ``tool_calls`` get their JSON ``arguments`` parsed to objects.
Ollama's thinking goes out as ``delta.reasoning`` / ``message.reasoning``, as Ollama's
compatibility layer sends it.
"""

from __future__ import annotations

import base64
import json
import struct
import time
from typing import Any, Mapping, Sequence

from .._exceptions import ConfigError
from .._models import StreamEvent, Usage

__all__ = [
    "chat_request",
    "chat_completion",
    "chunk",
    "delta_of",
    "finish_chunk",
    "usage_chunk",
    "usage_of",
    "finish_reason",
    "error_object",
    "models_list",
    "model_object",
    "embeddings_request",
    "embeddings_reply",
    "completion_request",
    "completion_chunk",
    "completion",
    "ERROR_TYPES",
]

#: ``error.type`` by HTTP status (the values OpenAI's API uses).
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "invalid_request_error",
    404: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}

_OPTION_FIELDS = ("temperature", "top_p", "seed", "frequency_penalty", "presence_penalty")


def error_object(message: str, status: int, *, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error body: ``{"error": {"message", "type", "param", "code"}}``; ``type``
    is ``invalid_request_error`` for a 4xx, ``rate_limit_error`` for 429 and
    ``server_error`` otherwise (OpenAI API reference, "Error codes")."""
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "server_error"), "param": param, "code": code}}


def _text_and_images(content: Any, where: str) -> tuple[str, list[str]]:
    """An OpenAI message ``content`` (a str, ``None``, or a list of parts) as Ollama's
    ``content`` text and base64 ``images``."""
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise ConfigError(f"{where}.content must be a string or a list of content parts")
    texts: list[str] = []
    images: list[str] = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            ref = part.get("image_url")
            url = ref.get("url") if isinstance(ref, Mapping) else ref
            if not isinstance(url, str) or not url.startswith("data:") or ";base64," not in url:
                raise ConfigError(
                    f"{where}.content[{i}]: only base64 data URLs are supported for images "
                    "(data:image/png;base64,...); the gateway fetches no remote URL"
                )
            images.append(url.split(";base64,", 1)[1])
        else:
            raise ConfigError(f"{where}.content[{i}]: unsupported content part type {kind!r} (use 'text' or 'image_url')")
    return "".join(texts), images


def _ollama_tool_calls(calls: Any, where: str) -> list[dict[str, Any]]:
    out = []
    if not isinstance(calls, list):
        raise ConfigError(f"{where}.tool_calls must be a list")
    for i, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
            raise ConfigError(f"{where}.tool_calls[{i}] needs a function with a name")
        args: Any = fn.get("arguments") or {}
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except ValueError as exc:
                raise ConfigError(f"{where}.tool_calls[{i}].function.arguments is not JSON: {exc}") from None
        entry: dict[str, Any] = {"function": {"index": i, "name": fn["name"], "arguments": args}}
        if isinstance(call.get("id"), str):
            entry["id"] = call["id"]
        out.append(entry)
    return out


def _messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise ConfigError("messages must be a non-empty list of message objects")
    names: dict[str, str] = {}  # tool_call_id -> function name, for the tool messages
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
            raise ConfigError(f"{where} must be an object with a role")
        role = m["role"]
        if role == "developer":
            role = "system"
        text, images = _text_and_images(m.get("content"), where)
        msg: dict[str, Any] = {"role": role, "content": text}
        if images:
            msg["images"] = images
        if role == "assistant":
            reasoning = m.get("reasoning") or m.get("reasoning_content")
            if isinstance(reasoning, str) and reasoning:
                msg["thinking"] = reasoning
            if m.get("tool_calls"):
                msg["tool_calls"] = _ollama_tool_calls(m["tool_calls"], where)
                for call in msg["tool_calls"]:
                    if "id" in call:
                        names[call["id"]] = call["function"]["name"]
        if role == "tool":
            call_id = m.get("tool_call_id")
            if isinstance(call_id, str):
                msg["tool_call_id"] = call_id
                if call_id in names:
                    msg["tool_name"] = names[call_id]
            if isinstance(m.get("name"), str):
                msg["tool_name"] = m["name"]
        out.append(msg)
    return out


def _sampling(body: Mapping[str, Any]) -> dict[str, Any]:
    """Ollama ``options`` from OpenAI's sampling fields."""
    options: dict[str, Any] = {}
    for name in _OPTION_FIELDS:
        if body.get(name) is not None:
            options[name] = body[name]
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is not None:
        options["num_predict"] = limit
    stop = body.get("stop")
    if stop is not None:
        options["stop"] = [stop] if isinstance(stop, str) else list(stop)
    return options


def _stream_flags(body: Mapping[str, Any]) -> tuple[bool, bool]:
    stream = bool(body.get("stream"))
    stream_options = body.get("stream_options") or {}
    return stream, bool(stream and isinstance(stream_options, Mapping) and stream_options.get("include_usage"))


def completion_request(body: Mapping[str, Any]) -> tuple[dict[str, Any], bool, bool]:
    """An Ollama ``/api/generate`` body for an OpenAI ``/v1/completions`` body (``prompt``,
    ``suffix``, the sampling fields), and ``(body, stream, include_usage)``; the Ollama
    body always says ``"stream": true``.

    Raises:
        ConfigError: no model; ``prompt`` not a string (or a list of one string); ``n``
            other than 1; ``echo`` or ``best_of`` other than 1 (not supported).
    """
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ConfigError("you must provide a model parameter")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise ConfigError("prompt must be a string (one prompt per request; token arrays are not supported)")
    if body.get("n") not in (None, 1) or body.get("best_of") not in (None, 1):
        raise ConfigError("n and best_of must be 1: the gateway returns one choice")
    if body.get("echo"):
        raise ConfigError("echo is not supported")
    out: dict[str, Any] = {"model": model, "prompt": prompt, "stream": True}
    if isinstance(body.get("suffix"), str) and body["suffix"]:
        out["suffix"] = body["suffix"]
    options = _sampling(body)
    if options:
        out["options"] = options
    stream, include_usage = _stream_flags(body)
    return out, stream, include_usage


def completion_chunk(request_id: str, model: str, created: int, text: str, finish: str | None = None) -> dict[str, Any]:
    """One streamed ``text_completion`` object with a single choice."""
    return {
        "id": request_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": "fp_aicortex",
        "choices": [{"text": text, "index": 0, "finish_reason": finish}],
    }


def completion(
    request_id: str, model: str, created: int, text: str, usage: Usage | None, extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The non-streamed ``text_completion`` object of a whole reply."""
    out = completion_chunk(request_id, model, created, text, finish_reason(usage.done_reason if usage else None, False))
    out["usage"] = usage_of(usage)
    out.update(extra or {})
    return out


def chat_request(body: Mapping[str, Any]) -> tuple[dict[str, Any], bool, bool]:
    """An Ollama ``/api/chat`` body for an OpenAI ``/v1/chat/completions`` body, and
    ``(body, stream, include_usage)``. The Ollama body always says ``"stream": true``
    (the gateway streams from the fleet either way).

    Raises:
        ConfigError: no model, no messages, ``n`` other than 1, a content part or an
            image that is not supported, a malformed tool call.
    """
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ConfigError("you must provide a model parameter")
    n = body.get("n")
    if n not in (None, 1):
        raise ConfigError("n must be 1: the gateway returns one choice")
    options = _sampling(body)
    out: dict[str, Any] = {"model": model, "messages": _messages(body.get("messages")), "stream": True}
    if options:
        out["options"] = options
    fmt = body.get("response_format")
    if isinstance(fmt, Mapping):
        if fmt.get("type") == "json_object":
            out["format"] = "json"
        elif fmt.get("type") == "json_schema":
            schema = (fmt.get("json_schema") or {}).get("schema")
            if not isinstance(schema, Mapping):
                raise ConfigError("response_format.json_schema.schema must be a JSON schema object")
            out["format"] = dict(schema)
    if body.get("tools"):
        out["tools"] = list(body["tools"])
    effort = body.get("reasoning_effort") or (body.get("reasoning") or {}).get("effort")
    if effort in ("low", "medium", "high"):
        out["think"] = effort
    elif effort == "none":
        out["think"] = False
    stream, include_usage = _stream_flags(body)
    return out, stream, include_usage


def finish_reason(done_reason: str | None, tool_calls: bool) -> str:
    """OpenAI's ``finish_reason`` for Ollama's ``done_reason``: ``tool_calls`` when the
    reply called a tool, ``length`` for ``length``, else ``stop``."""
    if tool_calls:
        return "tool_calls"
    return "length" if done_reason == "length" else "stop"


def usage_of(usage: Usage | None) -> dict[str, int]:
    """OpenAI's ``usage`` from Ollama's counts: ``prompt_tokens`` (``prompt_eval_count``),
    ``completion_tokens`` (``eval_count``), ``total_tokens``."""
    prompt = (usage.prompt_eval_count if usage else None) or 0
    completion = (usage.eval_count if usage else None) or 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _openai_call(call: Mapping[str, Any], index: int) -> dict[str, Any]:
    fn = call.get("function") or {}
    return {
        "index": fn.get("index", index) if isinstance(fn.get("index"), int) else index,
        "id": call.get("id") or f"call_{index}",
        "type": "function",
        "function": {"name": fn.get("name", ""), "arguments": json.dumps(fn.get("arguments") or {})},
    }


def delta_of(event: StreamEvent, *, first: bool, tool_index: int) -> dict[str, Any] | None:
    """The ``delta`` of the chunk that carries ``event`` (token -> ``content``, thinking ->
    ``reasoning``, tool_call -> ``tool_calls``), with ``role`` on the first; ``None``
    for an event without output."""
    delta: dict[str, Any] = {"role": "assistant"} if first else {}
    if event.type == "token":
        delta["content"] = event.content
    elif event.type == "thinking":
        delta["reasoning"] = event.content
    elif event.type == "tool_call":
        from .._shapes import tool_call_of

        delta["tool_calls"] = [_openai_call(tool_call_of(event), tool_index)]
    else:
        return None
    return delta


def chunk(request_id: str, model: str, created: int, delta: Mapping[str, Any], finish: str | None = None) -> dict[str, Any]:
    """One ``chat.completion.chunk`` with a single choice."""
    return {
        "id": request_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": "fp_aicortex",
        "choices": [{"index": 0, "delta": dict(delta), "finish_reason": finish}],
    }


def finish_chunk(request_id: str, model: str, created: int, reason: str, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The closing chunk: an empty ``delta`` and the ``finish_reason`` (plus ``extra``
    fields a client ignores, e.g. the serving server)."""
    out = chunk(request_id, model, created, {}, reason)
    out.update(extra or {})
    return out


def usage_chunk(request_id: str, model: str, created: int, usage: Usage | None) -> dict[str, Any]:
    """The chunk sent after the last one when ``stream_options.include_usage`` is set:
    ``choices: []`` and the ``usage`` object."""
    out = chunk(request_id, model, created, {})
    out["choices"] = []
    out["usage"] = usage_of(usage)
    return out


def chat_completion(
    request_id: str, model: str, created: int, message: Mapping[str, Any], usage: Usage | None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The non-streamed ``chat.completion`` object of a whole reply (``message`` in
    Ollama's shape: content, thinking?, tool_calls?)."""
    calls = list(message.get("tool_calls") or ())
    out_msg: dict[str, Any] = {"role": "assistant", "content": message.get("content", "")}
    if message.get("thinking"):
        out_msg["reasoning"] = message["thinking"]
    if calls:
        out_msg["tool_calls"] = [_openai_call(c, i) for i, c in enumerate(calls)]
    out = {
        "id": request_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": "fp_aicortex",
        "choices": [{
            "index": 0, "message": out_msg,
            "finish_reason": finish_reason(usage.done_reason if usage else None, bool(calls)),
        }],
        "usage": usage_of(usage),
    }
    out.update(extra or {})
    return out


def model_object(name: str, modified_at: str = "", owner: str | None = None) -> dict[str, Any]:
    """One ``/v1/models`` entry: ``{"id", "object": "model", "created", "owned_by"}``
    (``created`` in Unix seconds from Ollama's ``modified_at``; ``owned_by`` the
    namespace, ``library`` when the name has none, as Ollama's compatibility layer does)."""
    created = _unix(modified_at)
    if owner is None:
        owner = name.split("/", 1)[0] if "/" in name else "library"
    return {"id": name, "object": "model", "created": created, "owned_by": owner}


def _unix(stamp: str) -> int:
    import datetime

    if not stamp:
        return int(time.time())
    text = stamp.replace("Z", "+00:00")
    # Go writes up to 9 fractional digits; Python reads 6
    if "." in text:
        head, rest = text.split(".", 1)
        digits = "".join(ch for ch in rest if ch.isdigit())
        text = head + "." + digits[:6] + rest[len(digits):]
    try:
        return int(datetime.datetime.fromisoformat(text).timestamp())
    except ValueError:
        return int(time.time())


def models_list(entries: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """``GET /v1/models``: ``{"object": "list", "data": [model objects]}`` for
    ``(name, modified_at)`` pairs."""
    return {"object": "list", "data": [model_object(name, stamp) for name, stamp in entries]}


def embeddings_request(body: Mapping[str, Any]) -> tuple[str, list[str], int | None, str]:
    """``(model, inputs, dimensions, encoding_format)`` of a ``/v1/embeddings`` body.

    Raises:
        ConfigError: no model; ``input`` not a string or a non-empty list of strings
            (token arrays are not supported); an ``encoding_format`` other than
            ``float`` or ``base64``.
    """
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ConfigError("you must provide a model parameter")
    raw = body.get("input")
    inputs = [raw] if isinstance(raw, str) else raw
    if not isinstance(inputs, list) or not inputs or not all(isinstance(t, str) for t in inputs):
        raise ConfigError("input must be a string or a non-empty array of strings (token arrays are not supported)")
    dims = body.get("dimensions")
    if dims is not None and (isinstance(dims, bool) or not isinstance(dims, int) or dims < 1):
        raise ConfigError("dimensions must be a positive integer")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise ConfigError("encoding_format must be 'float' or 'base64'")
    return model, inputs, dims, encoding


def embeddings_reply(model: str, vectors: Sequence[Sequence[float]], encoding: str, prompt_tokens: int = 0) -> dict[str, Any]:
    """``/v1/embeddings`` reply: one ``{"object": "embedding", "embedding", "index"}``
    per input; ``base64`` packs each vector as little-endian float32, as OpenAI does."""
    data = []
    for i, vec in enumerate(vectors):
        value: Any = list(vec)
        if encoding == "base64":
            value = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode("ascii")
        data.append({"object": "embedding", "embedding": value, "index": i})
    return {
        "object": "list", "data": data, "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
