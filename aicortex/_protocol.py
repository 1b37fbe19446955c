"""Sans-IO Ollama protocol: request bodies, the NDJSON decoder, chunk parsing.

Nothing here does I/O; every function takes and returns plain values, so it is tested
without sockets and shared by the sync and async drivers. Protocol facts cite
``ollama-protocol.md`` sections (Ollama ``api/types.go``, ``server/routes.go``).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from ._exceptions import ConfigError, ProtocolError
from ._models import LoadedModel, ModelEntry, Usage

__all__ = [
    "MAX_LINE_BYTES",
    "MAX_WHOLE_REPLY_BYTES",
    "MAX_DEPTH",
    "NDJSONDecoder",
    "Chunk",
    "parse_chunk",
    "build_messages",
    "build_chat_body",
    "continuation_messages",
    "error_text",
    "model_key",
    "parse_tags",
    "parse_ps",
    "parse_ps_entries",
    "parse_rfc3339",
    "parse_version",
    "encode_body",
    "parse_generate_chunk",
    "build_generate_body",
]

#: Longest NDJSON line accepted, in bytes (1 MiB). A token chunk is ~150 bytes; a final
#: chunk with big tool calls a few KiB. Longer lines are a protocol error, not memory use.
MAX_LINE_BYTES = 1 << 20

#: Longest reply accepted to a ``"stream": false`` request (a caller-built body, as the
#: drop-in :mod:`aicortex.ollama` sends for one host), in bytes (64 MiB): that reply is
#: one line holding the whole text, generate's ``context`` and any ``logprobs`` (about
#: 400 bytes a token with ``top_logprobs=5``), so a long answer passes 1 MiB. Also the
#: longest line of an /api/generate stream, whose final chunk carries the ``context``
#: (about 8 bytes a token: a 200k-token context is 1.6 MB).
MAX_WHOLE_REPLY_BYTES = 64 << 20

#: Deepest nesting of arrays/objects decoded (Ollama's chunks nest about 5 deep). Deeper
#: is a protocol error found before ``json.loads`` recurses: at the interpreter's
#: recursion limit it raises RecursionError, and anything that runs meanwhile (a GC
#: finalizer, a logging hook) fails too.
MAX_DEPTH = 256
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def _too_deep(data: bytes | bytearray) -> bool:
    """Whether JSON text nests arrays/objects deeper than :data:`MAX_DEPTH` (strings skipped).

    Linear time; a line with few brackets costs two ``count`` calls.
    """
    if len(data) <= MAX_DEPTH or data.count(b"[") + data.count(b"{") <= MAX_DEPTH:
        return False
    depth = 0
    for b in _STRING.sub(b"", data).translate(None, _NOT_BRACKETS):
        if b == 91 or b == 123:  # [ {
            depth += 1
            if depth > MAX_DEPTH:
                return True
        else:
            depth -= 1
    return False


class NDJSONDecoder:
    """Incremental NDJSON decoder: ``feed(bytes) -> list[dict]``, then ``flush()``.

    Safe at any byte boundary (a line, or a UTF-8 character, may be split across
    feeds), skips blank lines (``\\n`` or ``\\r\\n``), and caps the line length
    (``max_line_bytes``, the running length of an unfinished line included). Time is
    linear in the bytes fed, whatever the size of the pieces.

    A bad line (not JSON, nested too deeply, not an object, over the cap) makes the
    decoder *failed*, for good:

    - the objects of the good lines before it in the same ``feed()`` are never lost:
      if there are any, ``feed()`` returns them and does not raise; the error is kept
      in :attr:`error` (and :attr:`failed` is true);
    - ``feed()`` raises the ``ProtocolError`` itself only when it has no object to
      return;
    - once failed, every later ``feed()`` or ``flush()`` raises that same error.

    So a caller handles the returned objects, then checks :attr:`failed` (rather than
    waiting for the next read to raise)::

        objs = decoder.feed(data)      # may raise ProtocolError (nothing decoded)
        handle(objs)                   # the good lines, in order
        if decoder.failed:
            fail_attempt(decoder.error)

    Raises (both from ``feed`` and ``flush``):
        ProtocolError: as above; a line that is not a JSON object, is nested too
            deeply for the JSON parser, or is longer than ``max_line_bytes``.
    """

    __slots__ = ("_buf", "_max", "_server", "_error")

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES, server: str | None = None) -> None:
        self._buf = bytearray()  # the unfinished last line; grows in place (amortised linear)
        self._max = max_line_bytes
        self._server = server
        self._error: ProtocolError | None = None

    @property
    def failed(self) -> bool:
        """True once a bad line was met; every later ``feed()``/``flush()`` raises :attr:`error`."""
        return self._error is not None

    @property
    def error(self) -> ProtocolError | None:
        """The ``ProtocolError`` of the bad line, or ``None`` while the decoder is healthy."""
        return self._error

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Add bytes; return the complete JSON objects they finish, in order.

        Raises:
            ProtocolError: a bad line with no good line before it in this call, or the
                decoder had already failed (see the class docstring).
        """
        if self._error is not None:
            raise self._error
        buf = self._buf
        if b"\n" not in data:
            if data:
                buf += data
                if len(buf) > self._max:
                    return self._fail(self._too_long(len(buf)), [])
            return []
        if buf:
            buf += data
            lines = bytes(buf).split(b"\n")
            buf.clear()
        else:  # the hot path: whole lines, nothing pending
            lines = data.split(b"\n")
        tail = lines.pop()
        out: list[dict[str, Any]] = []
        limit, loads = self._max, json.loads
        for line in lines:
            n = len(line)
            if n > limit:
                return self._fail(self._too_long(n), out)
            if n > MAX_DEPTH and _too_deep(line):  # a short line cannot be too deep
                return self._fail(self._nested(line), out)
            try:
                obj = loads(line.decode())  # str is cheaper for json than bytes (no encoding sniffing)
            except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, deep nesting
                if not line.strip():
                    continue  # a blank line (keep-alive whitespace)
                return self._fail(self._malformed(line, exc, False), out)
            if type(obj) is not dict:
                return self._fail(self._not_object(line), out)
            out.append(obj)
        if tail:
            if len(tail) > limit:
                return self._fail(self._too_long(len(tail)), out)
            buf += tail
        return out

    def flush(self) -> list[dict[str, Any]]:
        """End of input: decode a final unterminated line, if any.

        Raises:
            ProtocolError: the tail is not a complete JSON object (a truncated line),
                or the decoder had already failed.
        """
        if self._error is not None:
            raise self._error
        tail = bytes(self._buf)
        self._buf.clear()
        if not tail.strip():
            return []
        if _too_deep(tail):
            return self._fail(self._nested(tail), [])
        try:
            obj = json.loads(tail.decode())
        except (ValueError, RecursionError) as exc:
            return self._fail(self._malformed(tail, exc, True), [])
        if type(obj) is not dict:
            return self._fail(self._not_object(tail), [])
        return [obj]

    def _fail(self, error: ProtocolError, out: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Become failed with ``error``; return ``out`` if it holds objects, else raise."""
        self._error = error
        self._buf = bytearray()
        if out:
            return out
        raise error

    def _malformed(self, line: bytes | bytearray, exc: BaseException, truncated: bool) -> ProtocolError:
        what = "truncated NDJSON line at end of stream" if truncated else "malformed NDJSON line"
        if isinstance(exc, RecursionError):  # only with a recursion limit near MAX_DEPTH
            what = "NDJSON line nested too deeply to decode"
        error = ProtocolError(f"{what}: {_preview(line)}", server=self._server)
        error.__cause__ = exc
        return error

    def _nested(self, line: bytes | bytearray) -> ProtocolError:
        return ProtocolError(
            f"NDJSON line nested too deeply (over {MAX_DEPTH} levels): {_preview(line)}", server=self._server
        )

    def _not_object(self, line: bytes | bytearray) -> ProtocolError:
        return ProtocolError(f"NDJSON line is not a JSON object: {_preview(line)}", server=self._server)

    def _too_long(self, size: int) -> ProtocolError:
        return ProtocolError(
            f"NDJSON line longer than {self._max} bytes ({size}+ bytes)", server=self._server
        )


def _preview(data: bytes | bytearray, limit: int = 80) -> str:
    text = bytes(data[:limit]).decode("utf-8", "replace")
    return repr(text) + ("..." if len(data) > limit else "")


@dataclass(frozen=True)
class Chunk:
    """One /api/chat or /api/generate stream chunk, reduced to what a client acts on.

    ``error`` is set (and everything else empty) for an ``{"error": ...}`` line; it is
    checked first, as the real server may add ``done``/``done_reason`` beside it.
    ``usage`` is set only on the ``done: true`` chunk; ``context`` only on the final
    chunk of a non-raw /api/generate (Ollama's token ids of the exchange).
    """

    content: str = ""
    thinking: str = ""
    tool_calls: tuple[Mapping[str, Any], ...] = ()
    done: bool = False
    error: str | None = None
    usage: Usage | None = None
    context: tuple[int, ...] | None = None
    logprobs: tuple[Mapping[str, Any], ...] | None = None


_USAGE_FIELDS = (
    ("prompt_eval_count", "prompt_eval_count"),
    ("eval_count", "eval_count"),
    ("total_duration", "total_duration_ns"),
    ("load_duration", "load_duration_ns"),
    ("prompt_eval_duration", "prompt_eval_duration_ns"),
    ("eval_duration", "eval_duration_ns"),
)


_INT64_MAX = (1 << 63) - 1


def _count(value: Any) -> int | None:
    """A server-reported count or duration as an ``int``, or ``None``.

    Only a finite, non-negative number within int64 (Go's type for these fields) is
    kept; NaN, infinities (``1e999``), huge or negative numbers, bools, strings and
    other types become ``None``. Never raises.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return int(value) if 0 <= value <= _INT64_MAX else None
    if isinstance(value, float):  # NaN fails both comparisons; 2.0**63 is past int64
        return int(value) if 0.0 <= value < 9.223372036854775807e18 else None
    return None


def _json_preview(obj: Any, limit: int = 80) -> str:
    """A short JSON rendering of a decoded value for an error message; never raises."""
    try:
        text = json.dumps(obj)
    except (ValueError, TypeError, RecursionError):  # nesting the encoder cannot follow
        return f"<{type(obj).__name__}>"
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


def _error_value(err: Any, limit: int = 500) -> str:
    """The text of an in-stream ``error`` value that is not a string (≤ ``limit`` chars)."""
    try:
        text = json.dumps(err, ensure_ascii=False)
    except (ValueError, TypeError, RecursionError):
        return f"<{type(err).__name__}>"
    return text[:limit]


def _valid_tool_calls(calls: Any) -> bool:
    """Ollama tool calls: a list of ``{"function": {"name": str, "arguments"?: object}}``."""
    if not isinstance(calls, (list, tuple)):
        return False
    for call in calls:
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            return False
        if not isinstance(fn.get("arguments", {}), (dict, type(None))):
            return False
    return True


def parse_chunk(obj: Mapping[str, Any], server: str | None = None) -> Chunk:
    """Interpret one decoded /api/chat line (ollama-protocol §1.1, §2.2, §3.3).

    Usage figures of the ``done: true`` chunk that are not finite non-negative numbers
    within int64 (NaN, ``1e999``, ``10**400``, negatives, bools, strings) become ``None``.

    Raises:
        ProtocolError: the line has none of ``error``, ``message`` or ``done``, or a
            field of the wrong type: ``message`` not an object, ``done`` not a bool,
            ``content``/``thinking`` not strings, ``tool_calls`` not a list of
            ``{"function": {"name": str, "arguments": object}}``.
    """
    err = obj.get("error")
    if err is not None:
        return Chunk(error=err if isinstance(err, str) else _error_value(err))
    message = obj.get("message")
    done = obj.get("done")
    if message is None and done is None:
        raise ProtocolError(f"chat chunk without message or done: {_json_preview(obj)}", server=server)
    if message is None:
        message = {}
    if not isinstance(message, dict) or not isinstance(done, (bool, type(None))):
        raise ProtocolError(f"chat chunk with a malformed message/done: {_json_preview(obj)}", server=server)
    content = message.get("content") or ""
    thinking = message.get("thinking") or ""
    calls = message.get("tool_calls") or ()
    if not isinstance(content, str) or not isinstance(thinking, str) or not _valid_tool_calls(calls):
        raise ProtocolError(f"chat chunk with malformed message fields: {_json_preview(obj)}", server=server)
    usage = _usage(obj) if done else None
    logprobs = _logprobs(obj) if "logprobs" in obj else None
    return Chunk(content=content, thinking=thinking, tool_calls=tuple(calls), done=bool(done), usage=usage, logprobs=logprobs)


def _token_logprob(entry: object) -> bool:
    """``{"token": str, "logprob": number, ...}`` (Ollama ``api/types.go`` TokenLogprob:
    both always sent)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("token"), str):
        return False
    logprob = entry.get("logprob")
    return isinstance(logprob, (int, float)) and not isinstance(logprob, bool)


def _logprobs(obj: Mapping[str, Any]) -> tuple[Mapping[str, Any], ...] | None:
    """The chunk's ``logprobs`` (Ollama: a list of ``{"token", "logprob", "bytes"?,
    "top_logprobs"?}``, one per token of the chunk), only the well-formed entries: a
    token string, a number, and ``top_logprobs`` absent or a list of such entries."""
    value = obj.get("logprobs")
    if not isinstance(value, list):
        return None
    return tuple(
        e for e in value
        if _token_logprob(e) and (e.get("top_logprobs") is None or (
            isinstance(e["top_logprobs"], list) and all(_token_logprob(t) for t in e["top_logprobs"])))
    ) or None


def _usage(obj: Mapping[str, Any]) -> Usage:
    values: dict[str, Any] = {name: _count(obj.get(wire)) for wire, name in _USAGE_FIELDS}
    reason = obj.get("done_reason")
    values["done_reason"] = reason if isinstance(reason, str) and reason else None
    return Usage(**values)


def parse_generate_chunk(obj: Mapping[str, Any], server: str | None = None) -> Chunk:
    """Interpret one decoded /api/generate line (Ollama ``docs/api.md``, "Generate a
    completion"): ``response`` text, ``thinking``, ``done``; the final chunk's usage
    figures and ``context`` (a list of ints, kept only when it is one).

    Raises:
        ProtocolError: none of ``error``, ``response`` or ``done``, or a field of the
            wrong type.
    """
    err = obj.get("error")
    if err is not None:
        return Chunk(error=err if isinstance(err, str) else _error_value(err))
    done = obj.get("done")
    content = obj.get("response")
    if content is None and done is None:
        raise ProtocolError(f"generate chunk without response or done: {_json_preview(obj)}", server=server)
    thinking = obj.get("thinking") or ""
    if not isinstance(content or "", str) or not isinstance(thinking, str) or not isinstance(done, (bool, type(None))):
        raise ProtocolError(f"generate chunk with malformed fields: {_json_preview(obj)}", server=server)
    logprobs = _logprobs(obj) if "logprobs" in obj else None
    if not done:
        return Chunk(content=content or "", thinking=thinking, logprobs=logprobs)
    ctx = obj.get("context")
    context = None
    if isinstance(ctx, list) and len(ctx) <= 1 << 20 and all(type(t) is int for t in ctx):
        context = tuple(ctx)
    return Chunk(content=content or "", thinking=thinking, done=True, usage=_usage(obj), context=context, logprobs=logprobs)


def build_generate_body(
    model: str,
    prompt: str,
    *,
    suffix: str | None = None,
    system: str | None = None,
    template: str | None = None,
    context: Sequence[int] | None = None,
    raw: bool | None = None,
    images: Sequence[str] | None = None,
    format: str | Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
    think: bool | str | None = None,
    keep_alive: str | float | None = None,
    logprobs: bool | None = None,
    top_logprobs: int | None = None,
    truncate: bool | None = None,
    shift: bool | None = None,
) -> dict[str, Any]:
    """The JSON body of a streamed POST /api/generate (Ollama ``docs/api.md``).
    ``None`` fields are left out; ``images`` are base64 strings already.

    Raises:
        ConfigError: ``raw`` together with ``template``, ``system`` or ``context``
            (Ollama answers 400 "raw mode does not support template, system, or context").
    """
    if raw and (template or system or context):
        raise ConfigError("raw=True cannot be combined with template, system or context (Ollama refuses it): drop them or raw")
    body: dict[str, Any] = {"model": model, "prompt": prompt, "stream": True}
    for key, value in (
        ("suffix", suffix), ("system", system), ("template", template), ("raw", raw), ("keep_alive", keep_alive),
        ("think", think), ("logprobs", logprobs), ("top_logprobs", top_logprobs), ("truncate", truncate), ("shift", shift),
    ):
        if value is not None:
            body[key] = value
    if context:
        body["context"] = list(context)
    if images:
        body["images"] = list(images)
    if format is not None and format != "":
        body["format"] = format
    if options:
        body["options"] = dict(options)
    return body


def build_messages(prompt: str | Sequence[Mapping[str, Any]], system: str | None = None) -> list[dict[str, Any]]:
    """Turn ``chat()``'s prompt into Ollama messages.

    ``prompt`` is a ``str`` (one user message) or a list of message dicts with at least
    ``role`` and ``content`` (Ollama ``api.Message``). ``system`` becomes a leading system
    message unless the list already starts with one.

    Raises:
        ConfigError: an empty prompt, or a message without a valid role.
    """
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ConfigError("empty prompt: pass the text to send, e.g. chat('Why is the sky blue?', model=...)")
        messages: list[dict[str, Any]] = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, (list, tuple)):
        if not prompt:
            raise ConfigError("empty message list: pass at least one {'role': 'user', 'content': ...} message")
        messages = []
        for i, m in enumerate(prompt):
            if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
                raise ConfigError(f"message {i} must be a dict with 'role' and 'content', got {m!r}")
            role = m["role"].lower()
            if role not in ("system", "user", "assistant", "tool"):
                raise ConfigError(f"message {i} has role {m['role']!r}; use system, user, assistant or tool")
            messages.append({**m, "role": role})
    else:
        raise ConfigError(f"prompt must be a str or a list of message dicts, got {type(prompt).__name__}")
    if system is not None and not (messages and messages[0]["role"] == "system"):
        messages.insert(0, {"role": "system", "content": system})
    return messages


def build_chat_body(
    model: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    options: Mapping[str, Any] | None = None,
    format: str | Mapping[str, Any] | None = None,
    think: bool | str | None = None,
    keep_alive: str | float | None = None,
    tools: Sequence[Mapping[str, Any]] | None = None,
    logprobs: bool | None = None,
    top_logprobs: int | None = None,
    truncate: bool | None = None,
    shift: bool | None = None,
) -> dict[str, Any]:
    """The JSON body of a streamed POST /api/chat (ollama-protocol §1.1; ``logprobs``,
    ``top_logprobs``, ``truncate``, ``shift`` as Ollama's ``docs/api.md``). ``None``
    fields are left out."""
    body: dict[str, Any] = {"model": model, "messages": list(messages), "stream": True}
    for key, value in (("logprobs", logprobs), ("top_logprobs", top_logprobs), ("truncate", truncate), ("shift", shift)):
        if value is not None:
            body[key] = value
    if tools:
        body["tools"] = list(tools)
    if format is not None and format != "":
        body["format"] = format
    if options:
        body["options"] = dict(options)
    if keep_alive is not None:
        body["keep_alive"] = keep_alive
    if think is not None:
        body["think"] = think
    return body


_DUMPS_OPTIONS: dict[str, Any] = {"separators": (",", ":"), "allow_nan": False}


def _json_default(value: Any) -> Any:
    """``json.dumps`` hook: a Mapping that is not a dict is encoded as one."""
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def encode_body(body: Mapping[str, Any]) -> bytes:
    """A request body as compact UTF-8 JSON bytes (``{"model":...,"messages":[...]}``).

    Strings go out as UTF-8; a string with a lone surrogate (e.g. ``"\\ud800"`` from a
    server's token, sent back as prefill) makes the whole body ASCII with ``\\u``
    escapes instead, which is still valid JSON (Go decodes the escape to U+FFFD).
    Mappings that are not dicts are encoded as objects.

    Raises:
        ConfigError: a value JSON cannot carry: a non-serializable object (a set, a
            custom class), NaN or an infinite float, a circular reference, a key that
            is not a str/int/float/bool/None, or nesting too deep to encode. The
            message names the field (e.g. ``options.x``) and what to pass instead.
    """
    try:
        text = json.dumps(body, ensure_ascii=False, default=_json_default, **_DUMPS_OPTIONS)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ConfigError(_unencodable(body, exc)) from exc
    try:
        return text.encode()
    except UnicodeEncodeError:  # a lone surrogate: escape every non-ASCII character
        return json.dumps(body, ensure_ascii=True, default=_json_default, **_DUMPS_OPTIONS).encode()


def _unencodable(body: Any, exc: BaseException) -> str:
    """Why ``body`` cannot be JSON: the first bad field's path and what to pass instead."""
    hint = "pass str, int, float (finite), bool, None, list or dict values"
    deep = f"is nested too deeply to encode as JSON, or refers back to itself; {hint}"
    stack: list[tuple[str, Any, int]] = [("", body, 0)]
    budget = 100_000  # values looked at; the walk runs only after json.dumps failed
    while stack and budget > 0:
        budget -= 1
        path, value, depth = stack.pop()
        where = path or "request body"
        if isinstance(value, float):
            if not math.isfinite(value):
                return f"request field {where} is {value!r}: JSON has no NaN or infinity; pass a finite number"
            continue
        if value is None or isinstance(value, (str, int)):
            continue
        if isinstance(value, (list, tuple, Mapping)):
            if depth > 200:
                return f"request field {where} {deep}"
            if isinstance(value, Mapping):
                items = []
                for key, item in value.items():
                    if key is not None and not isinstance(key, (str, int, float)):
                        return f"request field {where} has a {type(key).__name__} key {key!r}; use str keys"
                    items.append((f"{path}.{key}" if path else str(key), item, depth + 1))
            else:
                items = [(f"{where}[{i}]", item, depth + 1) for i, item in enumerate(value)]
            stack.extend(reversed(items))
            continue
        extra = " (pass a list instead of a set)" if isinstance(value, (set, frozenset)) else ""
        return f"request field {where} is of type {type(value).__name__}, which JSON cannot carry{extra}; {hint}"
    if isinstance(exc, RecursionError) or "ircular" in str(exc):
        return f"request body {deep}"
    return f"request body cannot be encoded as JSON ({exc}); {hint}"


def continuation_messages(
    messages: Sequence[Mapping[str, Any]], partial_text: str, partial_thinking: str = ""
) -> list[dict[str, Any]]:
    """Messages that ask a server to continue a partial reply (prefill, ollama-protocol §4.1).

    The partial reply goes in a trailing ``assistant`` message; if the conversation
    already ends with one (the caller's own prefill), the partial text is appended to it.
    The server then streams only what it adds.
    """
    out = [dict(m) for m in messages]
    if out and out[-1].get("role") == "assistant":
        last = out[-1]
        last["content"] = (last.get("content") or "") + partial_text
        if partial_thinking:
            last["thinking"] = (last.get("thinking") or "") + partial_thinking
    else:
        msg: dict[str, Any] = {"role": "assistant", "content": partial_text}
        if partial_thinking:
            msg["thinking"] = partial_thinking
        out.append(msg)
    return out


def error_text(body: bytes) -> str:
    """The message of an Ollama error body ``{"error": "..."}``, else the body as text (≤ 500 chars).

    Never raises, whatever the bytes (not JSON, invalid UTF-8, nested too deeply).
    """
    try:
        obj = None if _too_deep(body) else json.loads(body)
        if isinstance(obj, dict) and isinstance(obj.get("error"), str):
            return str(obj["error"])
    except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, deep nesting
        pass
    text = body.decode("utf-8", "replace").strip()
    return text[:500] if text else "(empty body)"


def model_key(name: str) -> str:
    """Name used to match models: ``"llama3.2"`` and ``"llama3.2:latest"`` are the same model."""
    name = name.strip()
    return name[: -len(":latest")] if name.endswith(":latest") else name


def _json_object(data: bytes | Mapping[str, Any], what: str, server: str | None) -> Mapping[str, Any]:
    if isinstance(data, Mapping):
        return data
    if _too_deep(data):
        raise ProtocolError(f"{what} reply is nested too deeply: {_preview(data)}", server=server)
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, deep nesting
        raise ProtocolError(f"{what} reply is not JSON: {_preview(data)}", server=server) from exc
    if not isinstance(obj, dict):
        raise ProtocolError(f"{what} reply is not a JSON object: {_preview(data)}", server=server)
    return obj


def _model_list(obj: Mapping[str, Any], what: str, server: str | None) -> list[Mapping[str, Any]]:
    models = obj.get("models")
    if models is None:
        models = []
    if not isinstance(models, list) or not all(isinstance(m, dict) for m in models):
        raise ProtocolError(f"{what} reply has no valid 'models' list", server=server)
    return [m for m in models if isinstance(m.get("name") or m.get("model"), str)]


def _string(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _details(value: Any) -> dict[str, Any]:
    """Ollama's ``details`` object, keeping only flat fields (str, bool, finite number, null,
    list of str): what Ollama sends, and bounded so the registry can always store it."""
    if not isinstance(value, dict):
        return {}
    out: dict[str, Any] = {}
    for key, v in value.items():
        if isinstance(v, float) and not math.isfinite(v):
            continue
        if isinstance(v, (str, bool, int, float, type(None))) or (
            isinstance(v, list) and all(isinstance(x, str) for x in v)
        ):
            out[key] = v
    return out


def parse_tags(data: bytes | Mapping[str, Any], server: str | None = None) -> list[ModelEntry]:
    """Models from a GET /api/tags reply (ollama-protocol §1.3).

    A ``size`` that is not a finite non-negative number within int64 becomes 0; a
    ``digest``/``modified_at`` that is not a string ``""``; ``details`` keeps its flat
    fields only (str, bool, finite number, null, list of str).

    Raises:
        ProtocolError: the body is not a JSON object with a ``models`` list.
    """
    obj = _json_object(data, "/api/tags", server)
    out = []
    for m in _model_list(obj, "/api/tags", server):
        out.append(
            ModelEntry(
                name=m.get("name") or m["model"],
                digest=_string(m.get("digest")),
                size=_count(m.get("size")) or 0,
                details=_details(m.get("details")),
                modified_at=_string(m.get("modified_at")),
            )
        )
    return out


def parse_ps(data: bytes | Mapping[str, Any], server: str | None = None) -> list[str]:
    """Names of the loaded (warm) models from a GET /api/ps reply (ollama-protocol §1.4).

    Raises:
        ProtocolError: the body is not a JSON object with a ``models`` list.
    """
    obj = _json_object(data, "/api/ps", server)
    return [m.get("name") or m["model"] for m in _model_list(obj, "/api/ps", server)]


def parse_ps_entries(data: bytes | Mapping[str, Any], server: str) -> list[LoadedModel]:
    """The loaded models of a GET /api/ps reply (ollama-protocol §1.4), field by field.

    Defensive: ``size``, ``size_vram`` and ``context_length`` that are not finite
    non-negative numbers within int64 become ``None``; an ``expires_at`` that is not an
    RFC 3339 time (or is Go's zero time, "never") becomes ``None``; a ``digest`` that is
    not a string ``""``. Entries without a string ``name``/``model`` are left out.
    :func:`parse_ps` (names only) is unchanged.

    Raises:
        ProtocolError: the body is not a JSON object with a ``models`` list.
    """
    obj = _json_object(data, "/api/ps", server)
    out = []
    for m in _model_list(obj, "/api/ps", server):
        name = m.get("name")
        out.append(
            LoadedModel(
                server=server,
                name=name if isinstance(name, str) else m["model"],
                size=_count(m.get("size")),
                size_vram=_count(m.get("size_vram")),
                expires_at=parse_rfc3339(m.get("expires_at")),
                context_length=_count(m.get("context_length")),
                digest=_string(m.get("digest")),
            )
        )
    return out


_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)


def parse_rfc3339(value: Any) -> float | None:
    """Unix seconds of an RFC 3339 time as Go writes it (``2024-06-04T14:38:31.83753-07:00``,
    ``...Z``, up to nanoseconds), or ``None``: not a string, not such a time, out of
    range, or Go's zero time ``0001-01-01T00:00:00Z``. Never raises."""
    import datetime as dt

    if not isinstance(value, str) or len(value) > 64:
        return None
    m = _RFC3339.fullmatch(value.strip())
    if m is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    frac = m.group(7) or ""
    try:
        if m.group(8):
            tz = dt.timezone.utc
        else:
            offset = dt.timedelta(hours=int(m.group(10)), minutes=int(m.group(11)))
            tz = dt.timezone(-offset if m.group(9) == "-" else offset)
        if (year, month, day, hour, minute, second) == (1, 1, 1, 0, 0, 0) and not frac.strip("0"):
            return None  # Go's zero time.Time: no expiry
        when = dt.datetime(year, month, day, hour, minute, min(second, 59), tzinfo=tz)  # 60: a leap second
        return when.timestamp() + (int(frac) / 10 ** len(frac) if frac else 0.0)
    except (ValueError, OverflowError):
        return None


def parse_version(data: bytes | Mapping[str, Any], server: str | None = None) -> str:
    """The version string of a GET /api/version reply, e.g. ``"0.12.6"`` (ollama-protocol §1.5).

    Raises:
        ProtocolError: not a JSON object with a string ``version``.
    """
    obj = _json_object(data, "/api/version", server)
    version = obj.get("version")
    if not isinstance(version, str):
        raise ProtocolError("/api/version reply has no 'version' string", server=server)
    return version


def iter_tool_calls(calls: Iterable[Mapping[str, Any]]) -> Iterable[tuple[str | None, Mapping[str, Any]]]:
    """``(name, arguments)`` of each Ollama tool call (``{"function": {"name", "arguments"}}``)."""
    for call in calls:
        fn = call.get("function") if isinstance(call, Mapping) else None
        if isinstance(fn, Mapping):
            args = fn.get("arguments")
            yield fn.get("name"), args if isinstance(args, Mapping) else {}

