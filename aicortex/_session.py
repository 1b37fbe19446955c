"""The failover engine for one chat request, sans-IO: the state of one request.

:class:`ChatSession` holds everything one request decides: the candidates, the failover
table, continuation, token numbering, TTFT, tokens/s. It does no I/O and calls no storage.
The request flow (``_flow.chat_flow``), one generator, steps it and yields the effects
(open, read, close, admit, record) that the sync and async drivers perform.

Times: limits are measured on ``time.monotonic`` (the clock asyncio's loop uses), so a
driver can turn an absolute limit into a socket timeout or ``asyncio.timeout_at``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Sequence

from ._exceptions import (
    AICortexError,
    AllServersFailed,
    DeadlineExceeded,
    FirstTokenTimeout,
    IncompleteStream,
    StallTimeout,
    OllamaError,
    ServerError,
    error_reason,
)
from ._failover import Decision, MidstreamPolicy, decide
from ._health import Outcome
from ._hedge import HedgePolicy, hedge_meta
from ._models import Attempt, Server, StreamEvent, Usage, token_event
from ._protocol import (
    MAX_LINE_BYTES,
    MAX_WHOLE_REPLY_BYTES,
    NDJSONDecoder,
    build_chat_body,
    build_generate_body,
    continuation_messages,
    iter_tool_calls,
    model_key,
    parse_chunk,
    parse_generate_chunk,
)

__all__ = ["Candidate", "AttemptPlan", "ChatSession", "MIN_CONTINUE_CHARS", "CONSUMER_BOUND_SHARE"]

#: A partial reply shorter than this (characters) is restarted, not continued: too short
#: to tell a continuation from a server that ignored the prefill and started over.
MIN_CONTINUE_CHARS = 8
#: When the consumer held the stream for more than this share of an attempt, the
#: client-measured tokens/s is the consumer's pace, not the server's: it is not fed to
#: routing's EWMA, and the reply reports the server-reported figure instead.
CONSUMER_BOUND_SHARE = 0.25


@dataclass(frozen=True)
class Candidate:
    """A server to try, in order.

    Fields:
        server: the server.
        warm: the model is loaded there (Ollama /api/ps).
        state: its breaker: ``"closed"``, ``"half_open"`` (this would be its one trial,
            which the flow claims with an ``Admit`` effect), ``"open"`` (in cooldown, skipped)
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
        trial: this attempt holds the server's half-open trial.
        headers: extra HTTP headers for this server (``Server.headers_env``, resolved).
        path: ``"/api/chat"`` or ``"/api/generate"``.
        hedge: the second copy of a hedged request (see :mod:`aicortex._hedge`).
    """

    server: str
    number: int
    body: Mapping[str, Any]
    mode: str
    connect_timeout_s: float | None
    first_token_timeout_s: float | None
    stall_timeout_s: float | None
    warm: bool
    trial: bool = False
    headers: Mapping[str, str] | None = None
    path: str = "/api/chat"
    hedge: bool = False


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
        body: a whole request body to send as it is (a gateway's or the drop-in
            client's); a continuation replaces only its ``messages`` (chat) or
            ``prompt`` (generate). ``messages``, ``prompt`` and ``request["format"]`` /
            ``["raw"]`` must still describe it.
        skipped: servers left out because their breaker is open (named in errors).
        headers: ``{url: extra headers}`` for servers that need their own (resolved
            ``Server.headers_env``).
        clock: monotonic seconds (``time.monotonic``); ``wall``: Unix seconds.
        hedge: a :class:`~aicortex.HedgePolicy` to hedge the first attempt with (see
            :mod:`aicortex._hedge`), or ``None``.

    After the run: ``text``, ``thinking``, ``tool_calls``, ``usage``, ``server``,
    ``attempts``, ``ttft_s``, ``tokens_per_second``, ``complete``, ``fatal``,
    ``closed_early`` (the caller stopped before the end).
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
        skipped: Sequence[Candidate] = (),
        headers: Mapping[str, Mapping[str, str]] | None = None,
        endpoint: str = "chat",
        prompt: str = "",
        body: Mapping[str, Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        hedge: "HedgePolicy | None" = None,
    ) -> None:
        self.model = model
        #: The hedging policy of this request (``None``: no hedged requests); never with
        #: ``policy="raise"``.
        self.hedge = hedge if policy != "raise" else None
        self._parked: dict[int, dict[str, Any]] = {}  # racing attempts that are not current
        self._hedged = False  # a hedge was sent (one per request at most)
        #: The caller's own request body, sent as it is (only ``messages`` / ``prompt``
        #: change, for a continuation); ``None``: the body is built from ``request``.
        self.body = None if body is None else dict(body)
        self.messages = [dict(m) for m in messages]
        #: ``"chat"`` (/api/chat, ``messages``) or ``"generate"`` (/api/generate, ``prompt``).
        self.endpoint = endpoint
        self.prompt = prompt
        self.context: tuple[int, ...] | None = None  # /api/generate's final context
        #: A pydantic model class the complete reply is validated as (``output_type=``).
        self.output_type: Any = None
        self.candidates = list(candidates)
        self.timeouts = timeouts
        self.policy = policy
        self.request = dict(request or {})
        self.skipped = list(skipped)
        self._headers = headers or {}
        self._clock = clock
        self._wall = wall
        # Output of the reply as the caller sees it.
        self._parts: list[str] = []  # content pieces of the current reply
        self._thinking: list[str] = []
        self._tool_calls: list[Mapping[str, Any]] = []
        self._logprobs: list[Mapping[str, Any]] = []  # with logprobs=True: every token's entry
        self._index = 0  # next token index
        self._emitted = False  # anything (token/thinking/tool call) reached the caller
        self._tok_count = 0  # tokens of the reply, and when the first and last arrived
        self._tok_first = 0.0
        self._tok_last = 0.0
        self._now_wall = 0.0  # Unix time of the bytes being handled (one reading per read)
        # Request-wide state.
        #: Unix seconds when the request began (``start``), ``None`` before.
        self.started_at: float | None = None
        #: Its telemetry was recorded (``aicortex.telemetry``), once.
        self.recorded = False
        self._started: float | None = None
        self._sent: float | None = None
        self._first_output: float | None = None
        self._next_candidate = 0
        self._attempts: list[Attempt] = []
        self._resume = "fresh"
        self._continue_ok = format_allows_continue(self.request.get("format"))
        if endpoint == "generate" and not self.request.get("raw"):
            # Only a raw prompt can be continued exactly (prompt + partial text, no
            # template in between: ollama-protocol §4.2); a templated one restarts.
            self._continue_ok = False
        self._parse = parse_generate_chunk if endpoint == "generate" else parse_chunk
        self.fatal: AICortexError | None = None
        self.complete = False
        self.usage: Usage | None = None
        self.server: str | None = None
        self.last_decision: Decision | None = None
        self.closed_early = False
        #: Seconds the consumer held the stream (between handing out events and asking
        #: for more), added up by the driver; ``_consumer_mark`` is its value when the
        #: current attempt began.
        self.consumer_s = 0.0
        self._consumer_mark = 0.0
        self.outcome: Outcome | None = None  # what the last finished attempt means for health
        self._model_key = model_key(model)
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
        self._until: float | None = None  # the current attempt's hard limit (first token, deadline)
        # Continuation de-duplication: a server known to ignore the prefill and start the
        # reply over repeats the prefix; hold back what matches it (only there).
        self._prefix = ""
        self._held: list[str] = []
        self._prefill_known: bool | None = None
        self._kept = ""  # the kept text of a continuation until its first content arrives
        #: What this request learned about the current server's prefill handling
        #: (``True``: it continued), for the flow to remember; ``None``: nothing.
        self.learned_prefill: bool | None = None
        self._trial_held_elsewhere: list[Candidate] = []
        self._cand: Candidate | None = None  # the current attempt's candidate
        self._admitted: Candidate | None = None  # its trial claimed, its attempt not planned yet
        self._retry: Candidate | None = None
        self._deadline_until: float | None = None

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
    def has_output(self) -> bool:
        """The current attempt produced its first output (token, thinking or tool call)."""
        return self._attempt_first is not None

    @property
    def attempt_done(self) -> bool:
        """The current attempt has ended (``done: true`` seen, or it failed)."""
        return self._done or self._attempt_error is not None

    @property
    def ttft_s(self) -> float | None:
        """Seconds from sending the request (the first attempt) to the first token or
        thinking chunk, failovers included; the consumer's work on ``start`` is not counted."""
        if self._first_output is None or self._sent is None:
            return None
        return self._first_output - self._sent

    @property
    def consumer_bound(self) -> bool:
        """The consumer, not the server, set the pace: it held the stream for more than
        ``CONSUMER_BOUND_SHARE`` of the time since the request was sent."""
        if self._sent is None:
            return False
        elapsed = (self._tok_last or self._clock()) - self._sent
        return elapsed > 0 and self.consumer_s > CONSUMER_BOUND_SHARE * elapsed

    @property
    def tokens_per_second(self) -> float | None:
        """Tokens/s of the reply: client-measured (tokens after the first / seconds since
        it); when the consumer was slower than the server (:attr:`consumer_bound`), the
        server-reported ``eval_count / eval_duration`` instead, if the server gave it."""
        client = _rate(self._tok_count, self._tok_first, self._tok_last)
        if self.consumer_bound and self.usage is not None and self.usage.tokens_per_second is not None:
            return self.usage.tokens_per_second
        return client

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
        self.started_at = self._wall()
        if self.hedge is not None:
            self.hedge.request()
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
        return float(deadline) - (self._clock() - self._started)

    def next_candidate(self) -> Candidate | None:
        """The next server to try, or ``None`` (then :attr:`fatal` says why: every
        candidate failed, or the deadline ran out). A ``"half_open"`` candidate must be
        admitted first (another request may hold its trial): :meth:`skip` it if not."""
        remaining = self._remaining()
        if remaining is not None and remaining <= 0:
            self.fatal = self._deadline_error()
            return None
        if self._retry is not None:  # the same server again (it refused our prefill)
            cand, self._retry = self._retry, None
            return cand
        if self._next_candidate >= len(self.candidates):
            self.fatal = self._all_failed()
            return None
        cand = self.candidates[self._next_candidate]
        self._next_candidate += 1
        return cand

    def admitted(self, cand: Candidate) -> None:
        """``cand``'s half-open trial was claimed for this request (its attempt is planned
        next; until then :meth:`abandon` gives the trial back)."""
        self._admitted = cand

    def skip(self, cand: Candidate) -> None:
        """``cand`` was not admitted: another request or process holds its half-open trial."""
        self.skipped.append(cand)
        self._trial_held_elsewhere.append(cand)

    @property
    def needs_prefill_knowledge(self) -> bool:
        """The next attempt continues a partial reply: the flow asks whether its server
        honours a prefill before planning it (see :meth:`plan_attempt`)."""
        return self._resume == "continue" and self.endpoint == "chat"

    def plan_attempt(self, cand: Candidate, *, prefill: bool | None = None, trial: bool = False) -> tuple[AttemptPlan, list[StreamEvent]]:
        """The plan of the attempt on ``cand`` and the events announcing it.

        ``prefill``: whether (server, model) is known to continue a trailing assistant
        message (``False``: known to start the reply over; then a repeat of the kept text
        is dropped; ``None``: unknown, nothing is dropped). ``trial``: it holds the
        server's half-open trial.
        """
        remaining = self._remaining()
        if self._sent is None:
            self._sent = self._clock()
        previous = self._plan
        mode = self._resume
        if self.endpoint == "generate":
            prompt = self.prompt + self.text if mode == "continue" else self.prompt
            if self.body is not None:
                body = {**self.body, "prompt": prompt} if mode == "continue" else dict(self.body)
            else:
                body = build_generate_body(self.model, prompt, **self.request)
        else:
            messages = self.messages
            if mode == "continue":
                messages = continuation_messages(self.messages, self.text)
            if self.body is not None:
                body = {**self.body, "messages": messages} if mode == "continue" else dict(self.body)
            else:
                body = build_chat_body(self.model, messages, **self.request)
        t = self.timeouts
        first = t.first_token if cand.warm else t.first_token_cold
        plan = AttemptPlan(
            server=cand.server.url,
            number=len(self._attempts) + len(self._parked) + 1,
            body=body,
            mode=mode,
            connect_timeout_s=_min(t.connect, remaining),
            first_token_timeout_s=_min(first, remaining),
            stall_timeout_s=_min(t.stall, remaining),
            warm=cand.warm,
            trial=trial,
            headers=self._headers.get(cand.server.url),
            path="/api/generate" if self.endpoint == "generate" else "/api/chat",
        )
        self._plan = plan
        self._cand = cand
        self._admitted = None  # the plan holds the trial now
        self._prefill_known = prefill
        # One long line is to be expected: the whole reply to "stream": false, or a generate's
        # final chunk, which carries the whole context (about 8 bytes a token of num_ctx).
        whole = self.body is not None and self.body.get("stream") is False
        long_line = whole or self.endpoint == "generate"
        self._decoder = NDJSONDecoder(MAX_WHOLE_REPLY_BYTES if long_line else MAX_LINE_BYTES, server=plan.server)
        self._attempt_started = self._clock()
        self._attempt_wall = self._wall()
        self._consumer_mark = self.consumer_s
        first_until = None if first is None else self._attempt_started + first
        deadline_until = None if remaining is None else self._attempt_started + remaining
        self._until = _min(first_until, deadline_until)
        self._deadline_until = deadline_until
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
                self._logprobs.clear()
                self._index = 0
                self._tok_count = 0
                self._emitted = False
            self._prefix = self.text if mode == "continue" and prefill is False and self.endpoint == "chat" else ""
        self._kept = self.text if mode == "continue" and self.endpoint == "chat" else ""
        return plan, events

    # -- limits ------------------------------------------------------------------------------
    def read_limits(self) -> tuple[float | None, float | None]:
        """``(until, stall_s)`` for the next read of the current attempt.

        ``until``: absolute ``time.monotonic`` seconds by which the read must return (the
        first-token limit while no output came, and the deadline), or ``None``.
        ``stall_s``: the longest silence allowed for this read once output flows, or
        ``None`` (before the first output the first-token limit applies instead).
        """
        if self._attempt_first is None:
            return self._until, None
        return self._deadline_until, self._plan.stall_timeout_s if self._plan else None

    def timed_out(self) -> None:
        """The read of the current attempt did not return within :meth:`read_limits`."""
        if self.attempt_done:
            return
        plan = self._plan
        assert plan is not None
        now = self._clock()
        if self._deadline_until is not None and now >= self._deadline_until - 1e-3:
            self._attempt_error = self._deadline_error(what=f"while waiting on {plan.server}")
        elif self._attempt_first is None:
            limit = plan.first_token_timeout_s
            self._attempt_error = FirstTokenTimeout(
                f"no first token within the first-token timeout of {limit:g} s", server=plan.server, timeout_s=limit
            )
        else:
            limit = plan.stall_timeout_s
            self._attempt_error = StallTimeout(
                f"stalled: no bytes for the stall timeout of {limit:g} s", server=plan.server, timeout_s=limit
            )

    # -- hedged requests ------------------------------------------------------------------------
    def hedge_at(self) -> float | None:
        """When (``time.monotonic`` seconds) to hedge the attempt just planned, or ``None``
        not to: no policy, something already reached the caller, not a fresh attempt, a
        half-open trial, a hedge already sent, or no candidate fit to take it (warm, breaker
        closed). The delay is the policy's (its (server, model) TTFT quantile, clamped)."""
        plan, policy = self._plan, self.hedge
        if policy is None or plan is None or self._hedged or self._emitted or plan.mode != "fresh" or plan.trial:
            return None
        if self._hedge_index() is None:
            return None
        return self._attempt_started + policy.delay_s(plan.server, self._model_key)

    def _hedge_index(self) -> int | None:
        for i in range(self._next_candidate, len(self.candidates)):
            c = self.candidates[i]
            if c.warm and c.state == "closed":
                return i
        return None

    def start_hedge(self) -> tuple[AttemptPlan, list[StreamEvent]] | None:
        """Plan the hedge of the current attempt, or ``None`` (the budget is spent, or no
        candidate fits any more). The current attempt keeps racing, parked; the hedge is
        the current attempt now (:meth:`switch` moves between them). Its events: a
        ``"meta"`` event ``{"hedge": {"action": "start", "primary", "primary_attempt",
        "after_s"}}``."""
        primary, policy = self._plan, self.hedge
        if policy is None or primary is None or self._hedged or self.attempt_done:
            return None
        i = self._hedge_index()
        if i is None or not policy.try_spend():
            return None
        cand = self.candidates.pop(i)
        self._hedged = True
        waited = self._clock() - self._attempt_started
        self._park()
        plan, _ = self.plan_attempt(cand)
        self._plan = plan = replace(plan, hedge=True)
        meta = hedge_meta(action="start", primary=primary.server, primary_attempt=primary.number, after_s=round(waited, 4))
        return plan, [self._event("meta", meta=meta)]

    def _park(self) -> None:
        plan = self._plan
        assert plan is not None
        self._parked[plan.number] = {k: getattr(self, k) for k in _ATTEMPT_STATE}

    @property
    def racing(self) -> int:
        """Attempts of a hedged race besides the current one."""
        return len(self._parked)

    def switch(self, number: int, *, park: bool = True) -> None:
        """Make racing attempt ``number`` the current one (its bytes are fed next); the
        current one is parked (``park=False``: it ended, forget it)."""
        plan = self._plan
        if plan is not None and plan.number == number:
            return
        state = self._parked.pop(number)
        if park:
            self._park()
        for k, v in state.items():
            setattr(self, k, v)

    def settle(self) -> tuple[list[int], list[StreamEvent]]:
        """The current attempt won the hedged race (its first output, or its whole reply,
        came first): every other racing attempt is recorded as cancelled (``Attempt.
        cancelled``, not a failure). Returns their numbers, to close, and a ``"meta"``
        event ``{"hedge": {"action": "won", "winner", "attempt", "cancelled",
        "cancelled_attempts"}}``."""
        plan = self._plan
        assert plan is not None
        now = self._clock()
        losers = []
        for number, state in self._parked.items():
            lost: AttemptPlan = state["_plan"]
            self._attempts.append(
                Attempt(
                    server=lost.server, number=number, started_at=state["_attempt_wall"],
                    elapsed_s=now - state["_attempt_started"], mode=lost.mode, hedge=lost.hedge, cancelled=True,
                )
            )
            losers.append(lost)
        self._parked.clear()
        meta = hedge_meta(
            action="won", winner=plan.server, attempt=plan.number,
            cancelled=[p.server for p in losers], cancelled_attempts=[p.number for p in losers],
        )
        return [p.number for p in losers], [self._event("meta", meta=meta)]

    def receive(self, data: bytes) -> list[StreamEvent]:
        """Feed response bytes of the current attempt; return the events they complete.

        Never raises a :class:`ServerError`: a failure (error line, malformed line, first
        token too late) ends the attempt and is reported by :meth:`end_attempt`.
        """
        if self.attempt_done:
            return []
        assert self._decoder is not None
        if self._deadline_until is not None and self._clock() >= self._deadline_until:
            # Read after the deadline (e.g. the caller held the stream): nothing more counts.
            server = self._plan.server if self._plan else ""
            self._attempt_error = self._deadline_error(what=f"while {server} was still sending the reply")
            return []
        try:
            chunks = self._decoder.feed(data)
        except ServerError as exc:
            self._attempt_error = exc
            return []
        events = self._handle(chunks)
        if self._decoder._error is not None and not self.attempt_done:  # a bad line after good ones
            self._attempt_error = self._decoder._error
        if self._deadline_until is not None and not self.attempt_done and self._clock() >= self._deadline_until:
            server = self._plan.server if self._plan else ""
            self._attempt_error = self._deadline_error(what=f"while {server} was still sending the reply")
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
                and "logprobs" not in obj
            ):
                content = msg["content"] if "content" in msg else None
                if type(content) is str:
                    if content:
                        if self._attempt_first is None:
                            self._first_output_at(now)
                        self._emit_token(content, now, events)
                        continue
            try:
                chunk = self._parse(obj, server=plan.server)
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
                emitted = len(events)
                self._emit_content(chunk.content, now, events)
                if chunk.logprobs and len(events) > emitted:
                    # Ollama's logprobs of the chunk's tokens ride on its (last) token event.
                    events[-1] = replace(events[-1], logprobs=chunk.logprobs)
                    self._logprobs.extend(chunk.logprobs)
            for i, (name, args) in enumerate(iter_tool_calls(chunk.tool_calls)):
                self._drop_held_repeat()
                self._emitted = True
                self._continue_ok = False
                call = chunk.tool_calls[i]
                fn = call.get("function") or {}
                meta = {k: v for k, v in (("id", call.get("id")), ("index", fn.get("index", call.get("index")))) if v is not None}
                events.append(self._event("tool_call", tool_name=name, tool_args=args, meta=meta or None))
            self._tool_calls.extend(chunk.tool_calls)
            if chunk.done:
                self._drop_held_repeat()
                self._done = True
                self.usage = chunk.usage
                self.context = chunk.context
                return events
        return events

    def _first_output_at(self, now: float) -> None:
        """The current attempt's first output (token, thinking or tool call) arrived."""
        self._attempt_first = now
        if self._first_output is None:  # the request's TTFT counts from its very first
            self._first_output = now

    def _emit_content(self, content: str, now: float, events: list[StreamEvent]) -> None:
        if self._kept:
            # The first content of a continuation: if it does not spell the kept text
            # from its start, the server continued (evidence, remembered per server).
            kept, self._kept = self._kept, ""
            if self._prefill_known is None and not kept.startswith(content) and not content.startswith(kept):
                self.learned_prefill = True
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
            hedge=plan.hedge,
        )
        self._attempts.append(attempt)
        held = self.consumer_s - self._consumer_mark
        self.outcome = _outcome(
            self._model_key, attempt, plan, self.usage, consumer_bound=held > CONSUMER_BOUND_SHARE * attempt.elapsed_s
        )
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
            # The server refused our prefill (HTTP 400 to a continuation): the request is
            # fine, so the reply restarts on that same server (README, failover rules).
            self._continue_ok = False
            if self._cand is not None:
                self._retry = Candidate(server=self._cand.server, warm=self._cand.warm)
        self._resume = decision.resume
        return events

    def abandon(self) -> Outcome | None:
        """The caller closed the stream before the end: mark the reply as incomplete and,
        if the attempt in flight held a half-open trial, the outcome that gives it back
        (stopping to read is no penalty)."""
        if self.complete or self.fatal is not None:
            return None
        self.closed_early = True
        if self._admitted is not None:  # stopped between the trial's claim and its attempt
            url, self._admitted = self._admitted.server.url, None
            return Outcome(server=url, model=self._model_key, kind="release", at=self._wall(), trial=True)
        plan = self._plan
        if plan is None or not plan.trial or (self._attempts and self._attempts[-1].number == plan.number):
            return None
        return Outcome(server=plan.server, model=self._model_key, kind="release", at=self._wall(), trial=True)

    def _all_failed(self) -> AllServersFailed:
        if not self._attempts and self._trial_held_elsewhere:
            held = ", ".join(c.server.url for c in self._trial_held_elsewhere)
            return AllServersFailed(
                f"no server could be tried for model {self.model!r}: every candidate's circuit breaker is "
                f"half-open and its one trial is held by another request or process ({held}); "
                "try again in a moment",
                model=self.model,
                attempts=self._attempts,
            )
        reasons = "; ".join(
            f"{a.server}: {'cancelled (lost a hedged race)' if a.cancelled else error_reason(a.error)}" for a in self._attempts
        ) or "no candidate servers"
        if self.skipped:
            reasons += "; skipped (circuit breaker open, in cooldown): " + ", ".join(c.server.url for c in self.skipped)
        return AllServersFailed(
            f"all {len(self._attempts)} servers failed for model {self.model!r}: {reasons}",
            model=self.model,
            attempts=self._attempts,
        )

    def _deadline_error(self, cause: DeadlineExceeded | None = None, what: str = "") -> DeadlineExceeded:
        """The deadline ran out. When the consumer held the stream for most of the time
        since the current attempt began, the message says so instead of blaming the server."""
        deadline = self.timeouts.deadline
        if cause is not None:
            return DeadlineExceeded(str(cause), deadline_s=deadline, attempts=self._attempts)
        held = self.consumer_s - self._consumer_mark
        if self._plan is not None and held > 0.5 * max(1e-9, self._clock() - self._attempt_started):
            msg = f"deadline of {deadline:g} s exceeded; the caller held the stream for {held:.2f} s of it"
        elif what:
            msg = f"deadline of {deadline:g} s exceeded {what}"
        else:
            msg = f"deadline of {deadline:g} s exceeded after {len(self._attempts)} attempts"
        return DeadlineExceeded(msg, deadline_s=deadline, attempts=self._attempts)


#: The per-attempt state a racing attempt keeps while another one is current.
_ATTEMPT_STATE = (
    "_plan", "_cand", "_prefill_known", "_decoder", "_attempt_started", "_attempt_wall", "_consumer_mark", "_until",
    "_deadline_until", "_attempt_first", "_attempt_tokens", "_attempt_tok_first", "_attempt_tok_last",
    "_attempt_error", "_done", "_held", "_prefix", "_kept",
)


def _rate(tokens: int, first: float, last: float) -> float | None:
    """Tokens/s after the first token: ``(tokens - 1) / (last - first)`` (seconds)."""
    if tokens < 2 or last <= first:
        return None
    return (tokens - 1) / (last - first)


def format_allows_continue(fmt: Any) -> bool:
    """Structured output (``format=``) is never continued: a prefix may not re-parse."""
    return fmt is None or fmt == ""


def _outcome(model: str, attempt: Attempt, plan: AttemptPlan, usage: Usage | None, *, consumer_bound: bool) -> Outcome:
    """What a finished attempt means for health, per the failover table's breaker scope."""
    at = attempt.started_at + attempt.elapsed_s
    error = attempt.error
    if error is None:
        return Outcome(
            server=attempt.server,
            model=model,
            kind="success",
            at=at,
            started_at=attempt.started_at,
            ttft_s=attempt.ttft_s,
            tps=None if consumer_bound else attempt.tokens_per_second,
            server_tps=usage.tokens_per_second if usage else None,
            trial=plan.trial,
        )
    return failure_outcome(attempt.server, model, error, started_at=attempt.started_at, at=at, trial=plan.trial)


def failure_outcome(
    server: str, model: str, error: AICortexError, *, started_at: float, at: float, trial: bool = False
) -> Outcome:
    """What a failed request to ``server`` means for health: the failover table's breaker
    scope for the error (``failure`` of the server or of (server, model), a 503/429
    ``backoff``, or ``none``), with the error's text shortened (``short_error``).
    Shared by chat/generate attempts and embed batches."""
    from ._config import short_error
    from ._failover import RULES, failure_kind

    scope = RULES.get(failure_kind(error), RULES["server_error"]).scope
    kind = {"server": "failure", "model": "failure", "backoff": "backoff"}.get(scope, "none")
    return Outcome(
        server=server, model=model, kind=kind, scope=scope, at=at, started_at=started_at,
        error=short_error(error_reason(error)), trial=trial,
    )
