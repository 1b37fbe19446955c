"""Frozen value objects: events, servers, attempts, usage figures and replies.

Units are in the names: ``*_s`` seconds (float), ``*_ns`` nanoseconds (int, as Ollama
reports durations), timestamps are Unix seconds (float, ``time.time()``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Sequence

from ._exceptions import AICortexError

__all__ = [
    "StreamEvent", "EventType", "Usage", "Attempt", "Reply", "Server", "ModelEntry", "ModelList", "token_event",
    "FleetModel", "LoadedModel",
]

EventType = Literal["start", "token", "thinking", "tool_call", "tool_result", "error", "meta", "reset", "end"]


@dataclass(frozen=True)
class StreamEvent:
    """One timestamped event of a streamed reply.

    Fields:
        type: ``"start"`` (once, first), ``"token"`` (reply text), ``"thinking"``
            (``message.thinking`` text, not part of ``text()``), ``"tool_call"`` (one
            complete call from ``message.tool_calls``), ``"error"`` (an attempt failed;
            ``content`` is the reason, ``server`` the server), ``"meta"`` (failover
            notices, ``meta={"failover": "restart" | "continue", ...}``), ``"reset"``
            (the text so far is discarded: the reply restarts), ``"tool_result"`` (with
            ``run_tools=True``: one tool call that was run), ``"end"`` (once, last, only
            when a reply completed; a tool loop has one ``start`` and one ``end`` in all,
            and a ``"meta"`` event ``{"tool_round": n}`` where its round ``n`` starts).
        content: token or thinking text; the message for ``"error"``; ``""`` otherwise.
        index: 0-based token number across the reply for ``"token"`` (in a tool loop,
            across its round); ``None`` otherwise.
        tool_name, tool_args: for ``"tool_call"`` and ``"tool_result"``: function name and
            argument object.
        tool_result: for ``"tool_result"``: the value the function returned, or the
            error's text (``"error: ValueError: ..."``, ``"error: no tool named 'x'"``;
            then ``meta["error"]`` is ``True``); ``content`` is the text sent to the model.
        meta: extra data (``"meta"``, ``"start"``, ``"end"``, ``"error"``, ``"tool_call"``,
            ``"tool_result"``) or ``None``.
        timestamp: Unix seconds when aicortex produced the event.
        server: URL of the server the event came from; ``None`` for ``"start"``.
        attempt: 1-based number of the attempt the event belongs to (in a tool loop,
            within its round).
        logprobs: for ``"token"`` when ``logprobs=True`` was asked: Ollama's entries for the
            tokens of this chunk (``{"token", "logprob", "top_logprobs"?}``), else ``None``.
    """

    type: EventType
    content: str = ""
    index: int | None = None
    tool_name: str | None = None
    tool_args: Mapping[str, Any] | None = None
    tool_result: Any = None
    meta: Mapping[str, Any] | None = None
    timestamp: float = 0.0
    server: str | None = None
    attempt: int = 1
    logprobs: tuple[Mapping[str, Any], ...] | None = None

    def is_text(self) -> bool:
        """A piece of the reply's text (``type == "token"``)."""
        return self.type == "token"

    def is_thinking(self) -> bool:
        """A piece of the model's thinking (``type == "thinking"``)."""
        return self.type == "thinking"

    def is_tool_call(self) -> bool:
        """A complete tool call (``type == "tool_call"``)."""
        return self.type == "tool_call"


#: ``include=`` names: event types, and the phase names some streaming libraries use
#: ("generating", "thinking", "tool_calling") as aliases.
EVENT_ALIASES = {"generating": "token", "text": "token", "tool_calling": "tool_call"}


def event_filter(include: "str | Sequence[str] | None") -> frozenset[str] | None:
    """The set of event types ``include=`` keeps, or ``None`` for every event.

    Raises:
        ConfigError: an unknown name (naming the ones that exist).
    """
    from ._exceptions import ConfigError

    if include is None:
        return None
    names = [include] if isinstance(include, str) else list(include)
    known = set(EventType.__args__)  # type: ignore[attr-defined]
    out = set()
    for name in names:
        kind = EVENT_ALIASES.get(name, name)
        if kind not in known:
            raise ConfigError(
                f"include={name!r}: use event types ({', '.join(sorted(known))}) or {', '.join(sorted(EVENT_ALIASES))}"
            )
        out.add(kind)
    return frozenset(out)


_new = object.__new__


def token_event(content: str, index: int, timestamp: float, server: str | None, attempt: int) -> StreamEvent:
    """A ``"token"`` :class:`StreamEvent`, built without the frozen-dataclass ``__init__``.

    The hot path of every reply: the generated ``__init__`` of a frozen dataclass calls
    ``object.__setattr__`` once per field; here the six fields that differ from their
    defaults go straight into the instance ``__dict__`` (the other defaults are class
    attributes). The result is an ordinary, equal, frozen ``StreamEvent``.
    """
    ev = _new(StreamEvent)
    ev.__dict__.update(type="token", content=content, index=index, timestamp=timestamp, server=server, attempt=attempt)
    return ev


@dataclass(frozen=True)
class Usage:
    """Server-reported figures from the final ``done: true`` chunk (Ollama /api/chat).

    Every field is ``None`` when the server left it out (Go ``omitempty`` drops zeros).
    Durations are integer nanoseconds, as Ollama reports them.
    """

    prompt_eval_count: int | None = None
    eval_count: int | None = None
    total_duration_ns: int | None = None
    load_duration_ns: int | None = None
    prompt_eval_duration_ns: int | None = None
    eval_duration_ns: int | None = None
    done_reason: str | None = None

    @property
    def tokens_per_second(self) -> float | None:
        """Server-reported generation speed: ``eval_count / eval_duration`` (tokens/s).

        ``None`` unless both are positive numbers giving a finite rate; never raises,
        whatever the fields hold.
        """
        count, duration_ns = self.eval_count, self.eval_duration_ns
        try:
            if count is None or duration_ns is None or not (count > 0 and duration_ns > 0):  # 0, NaN, negatives
                return None
            rate = float(count / (duration_ns / 1e9))
            return rate if math.isfinite(rate) else None
        except (TypeError, ValueError, ArithmeticError):  # a str; ints past float range
            return None


@dataclass(frozen=True)
class Attempt:
    """One server tried for one request.

    Fields:
        server: the server's URL.
        number: 1-based attempt number.
        error: the :class:`~aicortex.ServerError` (or other :class:`AICortexError`) that
            ended it, or ``None`` if it produced the reply.
        ttft_s: seconds from this attempt's request to its first content/thinking chunk,
            ``None`` if none arrived.
        tokens: content tokens this attempt delivered to the caller.
        tokens_per_second: client-measured tokens/s of this attempt (tokens after its
            first / seconds since), ``None`` with fewer than two tokens.
        started_at: Unix seconds when the attempt began.
        elapsed_s: seconds the attempt lasted.
        mode: ``"fresh"`` for the first attempt or one after a failure before any
            output, ``"restart"`` or ``"continue"`` after a mid-stream failure.
    """

    server: str
    number: int
    error: AICortexError | None = None
    ttft_s: float | None = None
    tokens: int = 0
    tokens_per_second: float | None = None
    started_at: float = 0.0
    elapsed_s: float = 0.0
    mode: str = "fresh"

    @property
    def ok(self) -> bool:
        """True when this attempt produced the reply."""
        return self.error is None


@dataclass(frozen=True)
class Reply:
    """A complete, non-streamed reply (``chat(..., stream=False)``).

    Fields:
        text: the reply's content (no thinking).
        message: the assistant message as Ollama shapes it:
            ``{"role": "assistant", "content": str, "thinking"?: str, "tool_calls"?: list}``.
        usage: server-reported figures of the final chunk, or ``None``.
        server: URL of the server that produced the reply.
        attempts: every attempt in order, the last one successful (with
            ``run_tools=True``, every round's, each round numbering its own from 1).
        ttft_s: seconds from the request to the first content/thinking chunk (with
            ``run_tools=True``, the first round's first output, a tool call included).
        tokens_per_second: client-measured tokens/s after the first token, or ``None``.
        model: the model name asked for.
        context: for :meth:`~aicortex.Client.generate` without ``raw``, Ollama's final
            ``context`` (token ids to pass back for a follow-up), else ``None``.
        logprobs: with ``logprobs=True``, every token's entry in reply order.
        output: with ``output_type=SomeModel``, the reply validated as that pydantic
            model, else ``None``.
        tool_results: with ``run_tools=True``, every tool call that was run, in order:
            ``{"name", "arguments", "id", "result"}``.

    ``str(reply)`` is ``reply.text``.
    """

    text: str
    message: Mapping[str, Any]
    usage: Usage | None
    server: str
    attempts: tuple[Attempt, ...]
    ttft_s: float | None
    tokens_per_second: float | None = None
    model: str = ""
    context: tuple[int, ...] | None = None
    logprobs: tuple[Mapping[str, Any], ...] = ()
    output: Any = None
    tool_results: tuple[Mapping[str, Any], ...] = ()

    @property
    def thinking(self) -> str:
        """The reply's thinking text (``message.thinking``), ``""`` if none."""
        return str(self.message.get("thinking", ""))

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        """Tool calls of the reply (``message.tool_calls``), ``[]`` if none."""
        return list(self.message.get("tool_calls", []))

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class ModelEntry:
    """A model one server lists (Ollama /api/tags), with its /api/ps state.

    ``size`` is in bytes; ``details`` is Ollama's details object (family,
    parameter_size, quantization_level...).
    """

    name: str
    digest: str = ""
    size: int = 0
    details: Mapping[str, Any] = field(default_factory=dict)
    modified_at: str = ""
    loaded: bool = False


@dataclass(frozen=True)
class Server:
    """One registered Ollama server (a row of the registry's ``servers`` table).

    Fields:
        url: normalised base URL, e.g. ``"http://gpu1:11434"``.
        name: a short name, unique (defaults to ``host:port``).
        priority: higher is tried first among servers with equal health.
        enabled: disabled servers are kept but never used.
        status: ``"up"``, ``"down"`` or ``"unknown"`` (never probed) after the last refresh.
        version: Ollama version from /api/version, or ``None``.
        last_seen_at: Unix seconds of the last successful probe, or ``None``.
        last_error: the last probe or request error text, or ``None``.
        probe_latency_s: seconds the last /api/version probe took, or ``None``.
        models: model names this server listed at the last refresh (/api/tags).
        loaded: model names loaded at the last refresh (/api/ps).
        added_at: Unix seconds when it was registered.
        headers_env: extra request headers for this server, by reference:
            ``{header name: environment variable name}``, e.g.
            ``{"Authorization": "GPU1_TOKEN"}``. Only the names are stored; the values
            are read when a request is sent (:func:`aicortex._config.resolve_headers`).
            Not part of the hash.
    """

    url: str
    name: str
    priority: int = 0
    enabled: bool = True
    status: str = "unknown"
    version: str | None = None
    last_seen_at: float | None = None
    last_error: str | None = None
    probe_latency_s: float | None = None
    models: tuple[str, ...] = ()
    loaded: tuple[str, ...] = ()
    added_at: float = 0.0
    headers_env: Mapping[str, str] = field(default_factory=dict, hash=False)


class ModelList(list[str]):
    """Model names as the servers list them (``"llama3.2:latest"``, ``"qwen3:8b"``), with
    ``in`` following Ollama's name rule: a name without a tag means ``:latest``.

    ``"llama3.2" in models`` is true when a server lists ``"llama3.2:latest"``, and
    ``"llama3.2:latest" in models`` when one lists ``"llama3.2"``. Everything else
    (order, indexing, equality with a plain list, JSON) is a ``list[str]``'s.
    """

    __slots__ = ()

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return super().__contains__(name)
        from ._protocol import model_key  # _protocol imports this module

        key = model_key(name)
        return any(model_key(listed) == key for listed in self)


@dataclass(frozen=True)
class FleetModel:
    """One model across the fleet, from the registry (what the last refresh found).

    Names that differ only by ``:latest`` (``"llama3.2"``, ``"llama3.2:latest"``) are one
    model.

    Fields:
        name: the name as the first server (in priority order) lists it.
        servers: URLs of the enabled servers that list it, highest priority first.
        size: size in bytes as listed (the largest, if servers differ); 0 if unknown.
        digests: the distinct digests the servers list, in server order (more than one
            means the servers hold different builds under one name).
        details: Ollama's ``details`` object (family, parameter_size,
            quantization_level...) of the first server that lists it.
        loaded_on: URLs of the servers where it was loaded (``/api/ps``) at the last
            refresh; :meth:`~aicortex.Client.ps` asks the servers live.
    """

    name: str
    servers: tuple[str, ...] = ()
    size: int = 0
    digests: tuple[str, ...] = ()
    details: Mapping[str, Any] = field(default_factory=dict, hash=False)
    loaded_on: tuple[str, ...] = ()

    @property
    def digest(self) -> str | None:
        """The digest when every server lists the same one, else ``None``."""
        return self.digests[0] if len(self.digests) == 1 else None

    @property
    def loaded(self) -> bool:
        """Loaded on at least one server (at the last refresh)."""
        return bool(self.loaded_on)


@dataclass(frozen=True)
class LoadedModel:
    """A model loaded on one server, from a live ``GET /api/ps`` (ollama-protocol §1.4).

    Every figure the server sent in a shape that makes no sense (a string, a negative or
    non-finite number, a bad date) is ``None``.

    Fields:
        server: URL of the server.
        name: the model name as the server lists it (``"llama3.2:latest"``).
        size: bytes the loaded model takes (RAM and VRAM together).
        size_vram: bytes of it in GPU memory (``size_vram == size``: fully on the GPU).
        expires_at: Unix seconds when the server unloads it (``keep_alive``).
        context_length: the context window it was loaded with, in tokens.
        digest: the model's digest, ``""`` if not sent.
    """

    server: str
    name: str
    size: int | None = None
    size_vram: int | None = None
    expires_at: float | None = None
    context_length: int | None = None
    digest: str = ""
