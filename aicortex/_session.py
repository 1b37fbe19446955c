"""The failover engine for one chat request, sans-IO.

:class:`ChatSession` is a state machine: the driver (``_stream.Stream`` today, an async
stream later) asks it for the next attempt, opens the HTTP stream the plan describes,
feeds it the bytes, reports transport errors, and yields the events it returns. All
decisions (failover table, continuation, token numbering, TTFT, tokens/s) live here, so
the sync and async drivers are a few lines each (design rule 2).

Driver loop::

    yield from session.start()
    while True:
        plan, events = session.next_attempt(); yield from events
        if plan is None: raise session.fatal
        try:
            for data in transport.stream(plan):
                yield from session.receive(data)
                if session.attempt_done: break
            else:
                yield from session.receive_eof()
        except ServerError as exc:
            session.transport_failed(exc)
        yield from session.end_attempt()
        if session.fatal: raise session.fatal
        if session.complete: return
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from ._exceptions import (
    AICortexError,
    AllServersFailed,
    DeadlineExceeded,
    FirstTokenTimeout,
    IncompleteStream,
    OllamaError,
    ServerError,
    error_reason,
)
from ._failover import Decision, MidstreamPolicy, decide
from ._models import Attempt, Server, StreamEvent, Usage, token_event
from ._protocol import NDJSONDecoder, build_chat_body, continuation_messages, iter_tool_calls, parse_chunk

__all__ = ["Candidate", "AttemptPlan", "ChatSession", "MIN_CONTINUE_CHARS"]

#: A partial reply shorter than this (characters) is restarted, not continued: too short
#: to tell a continuation from a server that ignored the prefill and started over.
MIN_CONTINUE_CHARS = 8


@dataclass(frozen=True)
class Candidate:
    """A server to try, in order.

    Fields:
        server: the server.
        warm: the model is loaded there (Ollama /api/ps).
        state: its breaker: ``"closed"``, ``"half_open"`` (this would be its one trial,
            which must be claimed through ``admit``), ``"open"`` (in cooldown, skipped)
            or ``"forced"`` (in cooldown, but tried because every candidate is).
    """

    server: Server
    warm: bool = False
    state: str = "closed"


@dataclass(frozen=True)
class AttemptPlan:
    """Everything the transport needs for one attempt.

    Fields:
        server: URL to POST /api/chat to.
        number: 1-based attempt number.
        body: the JSON body (with the partial reply as prefill when ``mode == "continue"``).
        mode: ``"fresh"``, ``"restart"`` or ``"continue"``.
        connect_timeout_s, first_token_timeout_s, stall_timeout_s: limits in seconds
            (``None`` = none), already capped by what is left of the deadline.
        warm: the model was listed by the server's /api/ps.
    """

    server: str
    number: int
    body: Mapping[str, Any]
    mode: str
    connect_timeout_s: float | None
    first_token_timeout_s: float | None
    stall_timeout_s: float | None
    warm: bool


def _min(*values: float | None) -> float | None:
    present = [v for v in values if v is not None]
    return min(present) if present else None


class ChatSession:
    """Sans-IO failover engine for one /api/chat request across candidate servers.

    Args:
        model: model name sent to every server.
        messages: the conversation (Ollama messages).
        candidates: servers in the order to try them.
        timeouts: a :class:`~aicortex.Timeouts`.
        policy: what to do after a failure once output was emitted.
        request: extra body fields: options, format, think, keep_alive, tools.
        skipped: servers left out because their breaker is open (named in errors).
        admit: called before a ``"half_open"`` candidate is tried; ``False`` skips it
            (another request or process holds its one trial).
        clock: monotonic seconds (``time.perf_counter``); ``wall``: Unix seconds.

    After the run: ``text``, ``thinking``, ``tool_calls``, ``usage``, ``server``,
    ``attempts``, ``ttft_s``, ``tokens_per_second``, ``complete``, ``fatal``.
    """

    def __init__(
        self,
        *,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        candidates: Sequence[Candidate],
        timeouts: Any,
        policy: MidstreamPolicy = "continue",
        request: Mapping[str, Any] | None = None,
        admit: Callable[[Candidate], bool] | None = None,
        skipped: Sequence[Candidate] = (),
        clock: Callable[[], float] = time.perf_counter,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.model = model
        self.messages = [dict(m) for m in messages]
        self.candidates = list(candidates)
        self.timeouts = timeouts
        self.policy = policy
        self.request = dict(request or {})
        self._admit = admit
        self.skipped = list(skipped)
        self._clock = clock
        self._wall = wall
        # Output of the reply as the caller sees it.
        self._parts: list[str] = []  # content pieces of the current reply
        self._thinking: list[str] = []
        self._tool_calls: list[Mapping[str, Any]] = []
        self._index = 0  # next token index
        self._emitted = False  # anything (token/thinking/tool call) reached the caller
        self._tok_count = 0  # tokens of the reply, and when the first and last arrived
        self._tok_first = 0.0
        self._tok_last = 0.0
        self._now_wall = 0.0  # Unix time of the bytes being handled (one reading per read)
        # Request-wide state.
        self._started: float | None = None
        self._first_output: float | None = None
        self._next_candidate = 0
        self._attempts: list[Attempt] = []
        self._resume = "fresh"
        self._continue_ok = format_allows_continue(self.request.get("format"))
        self.fatal: AICortexError | None = None
        self.complete = False
        self.usage: Usage | None = None
        self.server: str | None = None
        self.last_decision: Decision | None = None
        # Current attempt.
        self._plan: AttemptPlan | None = None
        self._decoder: NDJSONDecoder | None = None
        self._attempt_started = 0.0
        self._attempt_wall = 0.0
        self._attempt_first: float | None = None
        self._attempt_tokens = 0
        self._attempt_tok_first = 0.0
        self._attempt_tok_last = 0.0
        self._attempt_error: AICortexError | None = None
        self._done = False
        # Continuation de-duplication: a server that ignores the prefill and starts the
        # reply over would repeat the prefix; hold back what matches it.
        self._prefix = ""
        self._held: list[str] = []

    # -- results ---------------------------------------------------------------------------
    @property
    def text(self) -> str:
        """The reply's content so far (the final attempt's, or partial + continuation)."""
        return "".join(self._parts)

    @property
    def thinking(self) -> str:
        """The reply's thinking text so far."""
        return "".join(self._thinking)

    @property
    def tool_calls(self) -> list[Mapping[str, Any]]:
        """Tool calls received so far (Ollama's shape)."""
        return list(self._tool_calls)

    @property
    def attempts(self) -> tuple[Attempt, ...]:
        """Finished attempts, in order."""
        return tuple(self._attempts)

    @property
    def attempt_error(self) -> AICortexError | None:
        """What ended the current attempt, ``None`` while it runs or when it succeeded."""
        return self._attempt_error

    @property
    def attempt_done(self) -> bool:
        """The current attempt has ended (``done: true`` seen, or it failed)."""
        return self._done or self._attempt_error is not None

    @property
    def ttft_s(self) -> float | None:
        """Seconds from ``start()`` to the first token or thinking chunk (includes failovers)."""
        if self._first_output is None or self._started is None:
            return None
        return self._first_output - self._started

    @property
    def tokens_per_second(self) -> float | None:
        """Client-measured tokens/s of the reply: tokens after the first / seconds since it."""
        return _rate(self._tok_count, self._tok_first, self._tok_last)

    def message(self) -> dict[str, Any]:
        """The assistant message as Ollama shapes it (content, thinking?, tool_calls?)."""
        msg: dict[str, Any] = {"role": "assistant", "content": self.text}
        if self._thinking:
            msg["thinking"] = self.thinking
        if self._tool_calls:
            msg["tool_calls"] = self.tool_calls
        return msg

    # -- driver API ---------------------------------------------------------------------------
    def _event(self, type_: str, content: str = "", **kw: Any) -> StreamEvent:
        plan = self._plan
        kw.setdefault("server", plan.server if plan else None)
        kw.setdefault("attempt", plan.number if plan else 1)
        return StreamEvent(type_, content, timestamp=self._wall(), **kw)  # type: ignore[arg-type]

    def start(self) -> list[StreamEvent]:
        """Begin the request: the ``"start"`` event."""
        self._started = self._clock()
        return [
            self._event(
                "start",
                server=None,
                attempt=1,
                meta={"model": self.model, "candidates": [c.server.url for c in self.candidates]},
            )
        ]

    def _remaining(self) -> float | None:
        deadline = self.timeouts.deadline
        if deadline is None or self._started is None:
            return None
        return deadline - (self._clock() - self._started)

    def next_attempt(self) -> tuple[AttemptPlan | None, list[StreamEvent]]:
        """The next attempt's plan and the events announcing it.

        Returns ``(None, [])`` and sets :attr:`fatal` (``AllServersFailed`` or
        ``DeadlineExceeded``) when no attempt is left.
        """
        remaining = self._remaining()
        if remaining is not None and remaining <= 0:
            self.fatal = self._deadline_error()
            return None, []
        while True:
            if self._next_candidate >= len(self.candidates):
                self.fatal = self._all_failed()
                return None, []
            cand = self.candidates[self._next_candidate]
            self._next_candidate += 1
            if cand.state != "half_open" or self._admit is None or self._admit(cand):
                break
            self.skipped.append(cand)  # another request holds its half-open trial
        previous = self._plan
        mode = self._resume
        messages = self.messages
        if mode == "continue":
            messages = continuation_messages(self.messages, self.text)
        body = build_chat_body(self.model, messages, **self.request)
        t = self.timeouts
        first = t.first_token if cand.warm else t.first_token_cold
        plan = AttemptPlan(
            server=cand.server.url,
            number=len(self._attempts) + 1,
            body=body,
            mode=mode,
            connect_timeout_s=_min(t.connect, remaining),
            first_token_timeout_s=_min(first, remaining),
            stall_timeout_s=_min(t.stall, remaining),
            warm=cand.warm,
        )
        self._plan = plan
        self._decoder = NDJSONDecoder(server=plan.server)
        self._attempt_started = self._clock()
        self._attempt_wall = self._wall()
        self._attempt_first = None
        self._attempt_tokens = 0
        self._attempt_tok_first = self._attempt_tok_last = 0.0
        self._attempt_error = None
        self._done = False
        self._held = []
        events: list[StreamEvent] = []
        if mode in ("restart", "continue"):
            meta = {
                "failover": mode,
                "from": previous.server if previous else None,
                "to": plan.server,
                "kept_chars": len(self.text) if mode == "continue" else 0,
                "kept_tokens": self._index if mode == "continue" else 0,
            }
            events.append(self._event("meta", meta=meta))
            if mode == "restart":
                events.append(self._event("reset", meta={"discarded_chars": len(self.text)}))
                self._parts.clear()
                self._thinking.clear()
                self._tool_calls.clear()
                self._index = 0
                self._tok_count = 0
                self._emitted = False
            self._prefix = self.text if mode == "continue" else ""
        return plan, events

    def receive(self, data: bytes) -> list[StreamEvent]:
        """Feed response bytes of the current attempt; return the events they complete.

        Never raises a :class:`ServerError`: a failure (error line, malformed line, first
        token too late) ends the attempt and is reported by :meth:`end_attempt`.
        """
        if self.attempt_done:
            return []
        assert self._decoder is not None
        try:
            chunks = self._decoder.feed(data)
        except ServerError as exc:
            self._attempt_error = exc
            return []
        events = self._handle(chunks)
        remaining = self._remaining()
        if remaining is not None and remaining <= 0 and not self.attempt_done:
            server = self._plan.server if self._plan else ""
            self._attempt_error = DeadlineExceeded(
                f"deadline of {self.timeouts.deadline:g} s exceeded while {server} was still sending the reply",
                deadline_s=self.timeouts.deadline,
            )
        return events

    def receive_eof(self) -> list[StreamEvent]:
        """The body ended. Without a ``done: true`` chunk that is an ``IncompleteStream``."""
        if self.attempt_done:
            return []
        assert self._decoder is not None
        try:
            events = self._handle(self._decoder.flush())
        except ServerError as exc:
            self._attempt_error = exc
            return []
        if not self.attempt_done:
            self._attempt_error = IncompleteStream(
                "stream ended without a done:true chunk", server=self._plan.server if self._plan else None
            )
        return events

    def transport_failed(self, error: ServerError) -> None:
        """The transport raised while opening or reading the current attempt."""
        if not self._done and self._attempt_error is None:
            self._attempt_error = error

    def _handle(self, chunks: list[dict[str, Any]]) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        plan = self._plan
        assert plan is not None
        now = self._clock()
        self._now_wall = self._wall()
        for obj in chunks:
            # Fast path: a plain content chunk {"message": {"role", "content"}, "done": false}.
            msg = obj.get("message")
            if (
                obj.get("done") is False
                and type(msg) is dict
                and len(msg) == 2
                and "role" in msg
                and not self._prefix
                and "error" not in obj
            ):
                content = msg["content"] if "content" in msg else None
                if type(content) is str:
                    if content:
                        if self._attempt_first is None:
                            self._first_output_at(now)
                        self._emit_token(content, now, events)
                        continue
            try:
                chunk = parse_chunk(obj, server=plan.server)
            except ServerError as exc:
                self._attempt_error = exc
                return events
            if chunk.error is not None:
                self._attempt_error = OllamaError(f"server error: {chunk.error}", server=plan.server, error=chunk.error)
                return events
            if chunk.thinking or chunk.content or chunk.tool_calls:
                if self._attempt_first is None:
                    self._first_output_at(now)
            elif self._attempt_first is None and not chunk.done:
                limit = plan.first_token_timeout_s
                if limit is not None and now - self._attempt_started > limit:
                    self._attempt_error = FirstTokenTimeout(
                        f"no first token within the first-token timeout of {limit:g} s",
                        server=plan.server,
                        timeout_s=limit,
                    )
                    return events
            if chunk.thinking and plan.mode == "continue":
                pass  # after a content prefill Ollama starts in content state: a restart's thinking, a repeat
            elif chunk.thinking:
                self._emitted = True
                self._thinking.append(chunk.thinking)
                events.append(self._event("thinking", chunk.thinking))
            if chunk.content:
                self._emit_content(chunk.content, now, events)
            for name, args in iter_tool_calls(chunk.tool_calls):
                self._drop_held_repeat()
                self._emitted = True
                self._continue_ok = False
                events.append(self._event("tool_call", tool_name=name, tool_args=args))
            self._tool_calls.extend(chunk.tool_calls)
            if chunk.done:
                self._drop_held_repeat()
                self._done = True
                self.usage = chunk.usage
                return events
        return events

    def _first_output_at(self, now: float) -> None:
        """The current attempt's first output (token, thinking or tool call) arrived."""
        self._attempt_first = now
        if self._first_output is None:  # the request's TTFT counts from its very first
            self._first_output = now

    def _emit_content(self, content: str, now: float, events: list[StreamEvent]) -> None:
        if not self._prefix:
            self._emit_token(content, now, events)
            return
        # Continuation: a server that ignored the prefill starts the reply over and would
        # repeat the kept text. Hold output back while it spells the kept text from its start.
        self._held.append(content)
        held = "".join(self._held)
        if self._prefix.startswith(held):
            return
        prefix, pieces = self._prefix, self._held
        self._prefix, self._held = "", []
        if held.startswith(prefix):  # it started over: drop the repeat, keep what is new
            if len(held) > len(prefix):
                self._emit_token(held[len(prefix) :], now, events)
            return
        for piece in pieces:  # a real continuation: release the pieces as they came
            self._emit_token(piece, now, events)

    def _drop_held_repeat(self) -> None:
        """The attempt ended (done or a tool call) while its output still spelled the kept
        text: the server started over and repeated it. Nothing of it is new."""
        self._held = []
        self._prefix = ""

    def _emit_token(self, text: str, now: float, events: list[StreamEvent]) -> None:
        self._emitted = True
        self._parts.append(text)
        if not self._tok_count:
            self._tok_first = now
        self._tok_count += 1
        self._tok_last = now
        if not self._attempt_tokens:
            self._attempt_tok_first = now
        self._attempt_tokens += 1
        self._attempt_tok_last = now
        plan = self._plan
        events.append(token_event(text, self._index, self._now_wall, plan.server if plan else None, plan.number if plan else 1))
        self._index += 1

    def end_attempt(self) -> list[StreamEvent]:
        """Close the current attempt: record it and return its closing events.

        Success gives the ``"end"`` event and sets :attr:`complete`. Failure gives an
        ``"error"`` event and, per the failover table, either prepares the next attempt
        or sets :attr:`fatal` (the error itself for ``raise``).
        """
        plan = self._plan
        assert plan is not None
        now = self._clock()
        error = self._attempt_error
        if error is None and not self._done:
            error = IncompleteStream("stream ended without a done:true chunk", server=plan.server)
        remaining = self._remaining()
        if error is not None and remaining is not None and remaining <= 0 and isinstance(error, ServerError):
            # The per-attempt limit was the deadline's remainder: say which limit it was.
            error = DeadlineExceeded(
                f"deadline of {self.timeouts.deadline:g} s exceeded while waiting on {plan.server}: {error}",
                deadline_s=self.timeouts.deadline,
            )
        attempt = Attempt(
            server=plan.server,
            number=plan.number,
            error=error,
            ttft_s=None if self._attempt_first is None else self._attempt_first - self._attempt_started,
            tokens=self._attempt_tokens,
            tokens_per_second=_rate(self._attempt_tokens, self._attempt_tok_first, self._attempt_tok_last),
            started_at=self._attempt_wall,
            elapsed_s=now - self._attempt_started,
            mode=plan.mode,
        )
        self._attempts.append(attempt)
        if error is None:
            self.complete = True
            self.server = plan.server
            meta = {
                "done_reason": self.usage.done_reason if self.usage else None,
                "ttft_s": self.ttft_s,
                "tokens_per_second": self.tokens_per_second,
                "attempts": len(self._attempts),
            }
            return [self._event("end", meta=meta)]
        kind_meta = {"kind": getattr(error, "kind", "deadline"), "mode": plan.mode}
        events = [self._event("error", error_reason(error), meta=kind_meta)]
        if isinstance(error, DeadlineExceeded):
            self.fatal = self._deadline_error(error)
            return events
        can_continue = self._continue_ok and len(self.text) >= MIN_CONTINUE_CHARS and not self._tool_calls
        decision = decide(
            error,
            emitted=self._emitted,
            policy=self.policy,
            can_continue=can_continue,
            was_continuation=plan.mode == "continue",
        )
        self.last_decision = decision
        if decision.action == "raise":
            self.fatal = error
            return events
        if decision.kind == "bad_request":
            self._continue_ok = False
        self._resume = decision.resume
        return events

    def _all_failed(self) -> AllServersFailed:
        reasons = "; ".join(f"{a.server}: {error_reason(a.error)}" for a in self._attempts) or "no candidate servers"
        if self.skipped:
            reasons += "; skipped (circuit breaker open, in cooldown): " + ", ".join(c.server.url for c in self.skipped)
        return AllServersFailed(
            f"all {len(self._attempts)} servers failed for model {self.model!r}: {reasons}",
            model=self.model,
            attempts=self._attempts,
        )

    def _deadline_error(self, cause: DeadlineExceeded | None = None) -> DeadlineExceeded:
        deadline = self.timeouts.deadline
        msg = str(cause) if cause else f"deadline of {deadline:g} s exceeded after {len(self._attempts)} attempts"
        return DeadlineExceeded(msg, deadline_s=deadline, attempts=self._attempts)


def _rate(tokens: int, first: float, last: float) -> float | None:
    """Tokens/s after the first token: ``(tokens - 1) / (last - first)`` (seconds)."""
    if tokens < 2 or last <= first:
        return None
    return (tokens - 1) / (last - first)


def format_allows_continue(fmt: Any) -> bool:
    """Structured output (``format=``) is never continued: a prefix may not re-parse."""
    return fmt is None or fmt == ""
