"""Scripts (how FakeOllama answers one generation request) and request records.

Both classes are frozen dataclasses.  A :class:`Script` is handed to
:meth:`FakeOllama.push <aicortex.testing.FakeOllama.push>` or set as
``FakeOllama.default_script``; a :class:`RequestRecord` is a snapshot of one
request the fake received, read from ``FakeOllama.requests``.

Example::

    from aicortex.testing import FakeOllama, Script

    with FakeOllama(models=["llama3.2"]) as fake:
        fake.push(Script(tokens=("Hi", " there"), drop_after=1))  # first chat dies
        fake.push(Script(status=503))                              # second: queue full
        # ... third and later requests use fake.default_script
"""

from __future__ import annotations

import http
from dataclasses import dataclass, field
from typing import Any, Mapping

__all__ = ["Script", "RequestRecord", "RUNNER_STOPPED_ERROR", "QUEUE_FULL_ERROR", "default_error"]

#: Exact text of the 500 Ollama sends when the model runner crashes (protocol doc §3.2).
RUNNER_STOPPED_ERROR = (
    "model runner has unexpectedly stopped, this may be due to resource limitations "
    "or an internal error, check ollama server logs for details"
)
#: Exact text of the 503 Ollama sends when its scheduler queue is full (two spaces after the period).
QUEUE_FULL_ERROR = "server busy, please try again.  maximum pending requests exceeded"

_DEFAULT_ERRORS = {
    400: "invalid request",
    429: "rate limit exceeded",
    500: RUNNER_STOPPED_ERROR,
    503: QUEUE_FULL_ERROR,
}


def default_error(status: int, model: str = "") -> str:
    """Return the error text Ollama uses for ``status`` (404 names ``model`` as sent)."""
    if status == 404:
        return f"model '{model}' not found"
    if status in _DEFAULT_ERRORS:
        return _DEFAULT_ERRORS[status]
    try:
        return http.HTTPStatus(status).phrase.lower()
    except ValueError:
        return f"status code {status}"


def _as_tuple(value: Any, name: str) -> tuple[Any, ...]:
    if isinstance(value, (str, dict)):
        return (value,)
    try:
        return tuple(value)
    except TypeError:
        raise TypeError(f"Script.{name} must be a sequence, not {type(value).__name__}") from None


@dataclass(frozen=True)
class Script:
    """How FakeOllama answers one ``POST /api/chat`` or ``POST /api/generate``
    (and, of its faults only, one ``/api/embed`` or ``/api/embeddings``; see
    :meth:`FakeOllama.push <aicortex.testing.FakeOllama.push>`).

    All delays are in seconds.  Count-based triggers (``error_after``,
    ``drop_after``, ``end_without_done_after``, ``malformed_after``,
    ``stall_after``) count the *content* tokens sent in this reply (thinking
    pieces do not count; after a prefill only the continuation counts).  A
    trigger of N fires once N content tokens have been sent; if the reply has
    fewer than N content tokens it fires after the last one (before the
    tool-call and ``done`` chunks), so a scripted fault always happens.  When
    several triggers fire at the same count the order is: stall (then carry
    on), error, drop, malformed, end without done.

    Streamed replies send nothing at all (no status line, no headers) before
    the first chunk, like Ollama during a model load (protocol §3.4).

    Attributes:
        tokens: content pieces, one ``done:false`` chunk each.
        thinking: thinking pieces, sent first (chunks with ``content:""``).
        tool_calls: tool calls, each ``{"name":..., "arguments":{...}}`` or
            Ollama's ``{"id":..., "function":{...}}`` shape; sent as one chunk
            after the content, with ``id`` ``"call_xxxxxxxx"`` and ``index``.
        tool_calls_on_done: put the tool calls on the ``done:true`` chunk
            instead (Ollama v0.30+ native path).  /api/generate always does.
        final_content: content carried by the ``done:true`` chunk.
        first_token_delay: seconds of silence before anything is sent (also
            before a scripted ``status`` reply).  Ends early if the client
            disconnects or the fake stops.
        token_delay: seconds between two chunks (also before a fault line).
        status: answer with this HTTP status and ``{"error": ...}`` instead of
            streaming (the v0.12.6+ behaviour for an error before the first byte).
        error: error text for ``status`` / ``error_after``; default: Ollama's
            text for the status (see :func:`default_error`), or the runner-crash
            text for ``error_after``.
        error_after: after N content tokens send ``{"error": ...}`` on the 200
            stream and end the body cleanly.  0 = the pre-0.12.6 style (HTTP 200
            with an error line before any token).  ``stream:false``: a 500 JSON error.
        drop_after: after N content tokens close the TCP connection without
            finishing the chunked body.  With N = 0 nothing at all is sent.
        reset: make the ``drop_after`` close an RST (SO_LINGER 0) instead of a FIN.
        end_without_done_after: after N content tokens end the body cleanly
            (terminal chunk) without a ``done:true`` line.  ``stream:false``:
            HTTP 200 with ``"done":false`` and the partial text.
        malformed_after: after N content tokens send a line that is not JSON,
            end the body and close the connection.
        stall_after: after N content tokens send nothing for ``stall`` seconds,
            then carry on.  Ends early when the client disconnects or the fake stops.
        stall: length of the stall, seconds.
        blackhole: read the request and never answer (until the client
            disconnects or the fake stops).
        done_reason: ``done_reason`` of the final chunk; ``""`` omits it.
        prompt_eval_count: reported ``prompt_eval_count``; None = an estimate
            from the request's text (about 4 characters per token).
        continue_prefill: when a chat request ends with an ``assistant``
            message whose content is a prefix of ``"".join(tokens)``, stream
            only the rest (splitting a token if the prefix ends inside it) and
            skip the thinking; if its content is empty but its ``thinking`` is a
            prefix of ``"".join(thinking)``, continue the thinking.  Likewise a
            ``raw: true`` /api/generate whose prompt ends with the start of the
            reply text gets only the rest (longest overlap; thinking skipped).
            No match: the tokens are sent as usual.

    Wire-level shapes of a streamed reply (``stream`` not false; a ``status``
    reply ignores them):

    Attributes:
        drip: before the first chunk, send a keep-alive blank line (``b"\\n"``)
            every ``drip`` seconds for ``drip_for`` seconds in all (the first at
            once, after ``first_token_delay``; the status line and headers go out
            with it), like a server that keeps a connection alive with whitespace.
            None = no drip.
        drip_for: total length of the drip, seconds.
        drip_bytes: drip single spaces (``b" "``) instead of blank lines: they
            become leading whitespace of the first NDJSON line.
        hold_after_done: after the ``done:true`` chunk keep the body open (no
            terminating chunk) for this many seconds, then end it normally.
        gzip: answer with ``Content-Encoding: gzip``; every chunk is compressed
            and flushed (``Z_SYNC_FLUSH``) on its own, so the reply still streams.
        http10: answer with ``HTTP/1.0``, no ``Transfer-Encoding``, and end the
            body by closing the connection.
        raw: send these bytes verbatim as the whole response body (after a
            normal 200 ``application/x-ndjson`` head; chunked unless ``http10``,
            compressed if ``gzip``) instead of the scripted chunks, then end the
            body; for fuzzing arbitrary byte streams.  None = the usual reply.
    """

    tokens: tuple[str, ...] = ("Hello", ",", " world", "!")
    thinking: tuple[str, ...] = ()
    tool_calls: tuple[Mapping[str, Any], ...] = ()
    tool_calls_on_done: bool = False
    final_content: str = ""
    first_token_delay: float = 0.0
    token_delay: float = 0.0
    status: int | None = None
    error: str | None = None
    error_after: int | None = None
    drop_after: int | None = None
    reset: bool = False
    end_without_done_after: int | None = None
    malformed_after: int | None = None
    stall_after: int | None = None
    stall: float = 3600.0
    blackhole: bool = False
    done_reason: str = "stop"
    prompt_eval_count: int | None = None
    continue_prefill: bool = True
    drip: float | None = None
    drip_for: float = 0.0
    drip_bytes: bool = False
    hold_after_done: float = 0.0
    gzip: bool = False
    http10: bool = False
    raw: bytes | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "tokens", _as_tuple(self.tokens, "tokens"))
        object.__setattr__(self, "thinking", _as_tuple(self.thinking, "thinking"))
        object.__setattr__(self, "tool_calls", _as_tuple(self.tool_calls, "tool_calls"))
        for name in ("first_token_delay", "token_delay", "stall", "drip_for", "hold_after_done"):
            if getattr(self, name) < 0:
                raise ValueError(f"Script.{name} must be >= 0 seconds")
        if self.drip is not None and not self.drip > 0:
            raise ValueError("Script.drip must be > 0 seconds (or None for no drip)")
        if self.raw is not None and not isinstance(self.raw, (bytes, bytearray)):
            raise TypeError(f"Script.raw must be bytes, not {type(self.raw).__name__}")
        for name in ("error_after", "drop_after", "end_without_done_after", "malformed_after", "stall_after"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"Script.{name} must be >= 0")

    @property
    def text(self) -> str:
        """The full scripted reply content: ``"".join(tokens) + final_content``."""
        return "".join(self.tokens) + self.final_content


@dataclass(frozen=True)
class RequestRecord:
    """A snapshot of one HTTP request received by FakeOllama.

    Attributes:
        method: HTTP method, e.g. ``"POST"``.
        path: request path without the query string, e.g. ``"/api/chat"``.
        body: the body parsed as JSON, or None (empty or not JSON).
        headers: request headers with lower-case names.
        received_at: ``time.time()`` when the request was fully read.
        status: HTTP status sent, or None if no status line was sent (yet).
        tokens_sent: content tokens sent in this reply (thinking excluded; for
            ``stream:false`` the tokens generated into the single reply).
        disconnected: the handler saw the client go away before the reply
            ended (a failed write, or EOF while waiting in a delay, stall or
            blackhole).
        completed: the reply was sent in full (including an error reply, an
            ``error_after`` line or an ``end_without_done_after`` body).
        query: the raw query string (without ``?``), or ``""``.
        raw_body: the request body bytes.
        script: the Script used to answer it (chat/generate only), or None.
    """

    method: str
    path: str
    body: Any
    headers: dict[str, str]
    received_at: float
    status: int | None = None
    tokens_sent: int = 0
    disconnected: bool = False
    completed: bool = False
    query: str = ""
    raw_body: bytes = field(default=b"", repr=False)
    script: Script | None = field(default=None, repr=False)

    @property
    def model(self) -> str | None:
        """The ``model`` field of a JSON object body, else None."""
        if isinstance(self.body, dict) and isinstance(self.body.get("model"), str):
            return str(self.body["model"])
        return None
