"""One sans-IO request flow, two thin drivers (design rule 2).

:func:`chat_flow` is a generator that steps a :class:`~aicortex._session.ChatSession`. It
yields either a ``list`` of :class:`~aicortex.StreamEvent` (to hand to the caller) or an
effect, and receives the effect's result through ``send()``:

==============================  ====================================================
effect                          result the driver sends back
==============================  ====================================================
``Admit(candidate, model)``     ``bool``: the half-open trial was claimed
``KnownPrefill(url, model)``    ``bool | None``: what the fleet view knows
``Show(url, model)``            the ``/api/show`` JSON object, or ``None`` if it failed
``Learn(url, model, value)``    ``None`` (remember the prefill knowledge)
``Open(plan)``                  ``None``, or the :class:`~aicortex.ServerError` it raised
``Read(until, stall_s)``        ``bytes`` (``b""`` at the end of the body), ``TIMED_OUT``,
                                or the ``ServerError`` the read raised
``Close(drain)``                ``None`` (drain a finished reply, bounded; else close)
``Record(outcome)``             ``None`` (apply it to the fleet view; never raises)
``Start(plan, until)``          ``None`` at once: the attempt is opened and its body
                                read (by ``until``) in the background (a hedged race)
``Race(until)``                 ``(number, result)``: the next result of a racing
                                attempt (as for ``Open``/``Read``), or ``TIMED_OUT``
                                when ``until`` (the hedge timer) came first
``Drop(number)``                ``None`` (close that racing attempt at once)
``Adopt(number)``               ``None`` (that racing attempt goes on alone: its body is
                                the one ``Read`` and ``Close`` use)
==============================  ====================================================

A hedged request (``ChatSession.hedge``, :mod:`aicortex._hedge`) runs its first attempt
as a race: ``Start``, then ``Race`` with the hedge timer; when the timer fires first the
flow starts the hedge on another server, and the first attempt to produce output wins:
the others are dropped (``Drop``, recorded as cancelled) and the winner adopted. An
attempt that fails in the race ends as usual (``Record``, its ``error`` event) while
the other goes on.

Everything the request decides lives here and in ``ChatSession``: the order of
recording and ``end`` (the outcome is recorded, then ``end`` is handed out, then the body
is drained, so a server that holds its body open after ``done`` never delays ``end``),
when to stop reading, which limit a timeout was. The drivers, ``_stream._drive_sync``
and ``_stream._drive_async``, only perform effects, the way httpx's ``Auth.auth_flow`` is
driven by ``sync_auth_flow`` and ``async_auth_flow`` (``httpx/_auth.py``).

The flow returns when the reply is complete and raises the request's fatal error
(``AllServersFailed``, ``DeadlineExceeded``, ``BadRequest``, or the failure itself with
``on_midstream="raise"``).
"""

from __future__ import annotations

from typing import Any, Generator, Mapping

from ._health import Outcome
from ._models import StreamEvent
from ._session import AttemptPlan, Candidate, ChatSession

__all__ = [
    "Admit",
    "KnownPrefill",
    "Show",
    "Learn",
    "Open",
    "Read",
    "Close",
    "Record",
    "Start",
    "Race",
    "Drop",
    "Adopt",
    "TIMED_OUT",
    "chat_flow",
    "prefill_from_show",
]


class Admit:
    """Claim the half-open trial of ``candidate`` for ``model``."""

    __slots__ = ("candidate", "model")

    def __init__(self, candidate: Candidate, model: str) -> None:
        self.candidate, self.model = candidate, model


class KnownPrefill:
    """Ask the fleet view whether (url, model) continues a prefill."""

    __slots__ = ("url", "model")

    def __init__(self, url: str, model: str) -> None:
        self.url, self.model = url, model


class Show(KnownPrefill):
    """Fetch ``POST url/api/show`` for ``model`` (Ollama ``docs/api.md``, "Show Model Information")."""

    __slots__ = ()


class Learn:
    """Remember what (url, model) does with a prefill."""

    __slots__ = ("url", "model", "value")

    def __init__(self, url: str, model: str, value: bool | None) -> None:
        self.url, self.model, self.value = url, model, value


class Open:
    """Send the request of ``plan`` (``POST plan.server/api/chat``) and wait for its head."""

    __slots__ = ("plan",)

    def __init__(self, plan: AttemptPlan) -> None:
        self.plan = plan


class Read:
    """Hand out ``events`` (a list, possibly empty) first, then read the next bytes of the
    body: by ``until`` (absolute ``time.monotonic`` seconds, or ``None``), and, once output
    flows, with at most ``stall_s`` seconds of silence. (One effect for both halves of
    the hot loop: a chunk's events, then the next read.)"""

    __slots__ = ("until", "stall_s", "events")

    def __init__(self, until: float | None, stall_s: float | None) -> None:
        self.until, self.stall_s = until, stall_s
        self.events: list[Any] = []


class Close:
    """End the attempt's response: ``drain`` a finished reply (bounded) so its keep-alive
    connection can be reused, else close the connection."""

    __slots__ = ("drain",)

    def __init__(self, drain: bool) -> None:
        self.drain = drain


class Record:
    """Apply ``outcome`` to the fleet view (the store gets it later, in a batch)."""

    __slots__ = ("outcome",)

    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome


class Start:
    """Open ``plan``'s request without waiting for it, then read its body by ``until``
    (absolute ``time.monotonic`` seconds, or ``None``): one racing attempt of a hedged
    request, whose results ``Race`` hands back."""

    __slots__ = ("plan", "until")

    def __init__(self, plan: AttemptPlan, until: float | None) -> None:
        self.plan, self.until = plan, until


class Race:
    """Wait for the next result of any racing attempt (each attempt's next read starts
    once its last result was taken), at most until ``until`` (the hedge timer, absolute
    ``time.monotonic`` seconds, or ``None``)."""

    __slots__ = ("until",)

    def __init__(self, until: float | None) -> None:
        self.until = until


class Drop:
    """Close racing attempt ``number`` at once, whatever it is doing (its server sees the
    disconnect)."""

    __slots__ = ("number",)

    def __init__(self, number: int) -> None:
        self.number = number


class Adopt(Drop):
    """Racing attempt ``number`` goes on alone: ``Read`` and ``Close`` use its body (none
    if its request failed to open)."""

    __slots__ = ()


class _TimedOut:
    __slots__ = ()

    def __repr__(self) -> str:
        return "TIMED_OUT"


#: Sent back for a ``Read`` that did not return within its limits.
TIMED_OUT: Any = _TimedOut()

Step = Generator[Any, Any, None]


def _feed(s: ChatSession, data: Any) -> list[StreamEvent]:
    """Hand one read's result to the session and return its events: bytes (``b""`` is
    the end of the body), ``TIMED_OUT`` (a limit expired) or the transport's
    ``ServerError``."""
    if data.__class__ is bytes:
        return s.receive(data) if data else s.receive_eof()
    if data is TIMED_OUT:
        s.timed_out()
    else:
        s.transport_failed(data)
    return []


def chat_flow(s: ChatSession) -> Step:
    """The request flow of one chat: see the module docstring for the protocol."""
    yield s.start()
    while True:
        cand = s.next_candidate()
        while cand is not None and cand.state == "half_open":
            if (yield Admit(cand, s.model)):
                s.admitted(cand)
                break
            s.skip(cand)
            cand = s.next_candidate()
        if cand is None:
            assert s.fatal is not None
            raise s.fatal
        url = cand.server.url
        prefill = None
        if s.needs_prefill_knowledge:
            prefill = yield KnownPrefill(url, s.model)
            if prefill is None:
                prefill = prefill_from_show((yield Show(url, s.model)))
                if prefill is not None:
                    yield Learn(url, s.model, prefill)
        plan, events = s.plan_attempt(cand, prefill=prefill, trial=cand.state == "half_open")
        if events:
            yield events
        hedge_at = s.hedge_at()
        if hedge_at is None:
            opened = yield Open(plan)
            if opened is not None:
                s.transport_failed(opened)
            events = []
        else:
            events = yield from _race(s, plan, hedge_at)
            opened = None
        if opened is None:
            read = Read(*s.read_limits())
            flowing = s.has_output  # output has begun: the limits change once, at the first output
            while not s.attempt_done:
                read.events = events
                data = yield read
                events = _feed(s, data)
                if s.attempt_done or data == b"":
                    break
                if not flowing and s.has_output:
                    flowing = True
                    read = Read(*s.read_limits())
            if events:
                yield events
        events = s.end_attempt()
        if s.learned_prefill is not None:
            yield Learn(url, s.model, s.learned_prefill)
            s.learned_prefill = None
        if s.outcome is not None:
            yield Record(s.outcome)
        yield events
        if opened is None:
            yield Close(drain=s.complete)
        if s.fatal is not None:
            raise s.fatal
        if s.complete:
            return


def _race(s: ChatSession, plan: AttemptPlan, hedge_at: float) -> Generator[Any, Any, list[Any]]:
    """The first attempt of a hedged request, raced against its hedge until one of them
    produces output (or its whole reply). Returns the winner's events; the winner (or the
    last attempt left, failed) is then the session's current attempt and is adopted."""
    lanes = [plan.number]
    yield Start(plan, s.read_limits()[0])
    timer: float | None = hedge_at
    while True:
        got = yield Race(timer)
        if got is TIMED_OUT:  # no first token by the hedge delay
            timer = None
            hedge = s.start_hedge()
            if hedge is not None:
                second, events = hedge
                lanes.append(second.number)
                yield Start(second, s.read_limits()[0])
                yield events
            continue
        number, data = got
        s.switch(number)
        events = _feed(s, data)
        if s.has_output or (s.attempt_done and s.attempt_error is None):  # the winner
            if len(lanes) > 1:
                losers, meta = s.settle()
                for loser in losers:
                    yield Drop(loser)
                events = meta + events
            yield Adopt(number)
            return events
        if not s.attempt_done:
            continue  # bytes but no output yet
        if len(lanes) == 1:  # the last one left failed: it ends as any attempt does
            yield Adopt(number)
            return events
        lanes.remove(number)  # it failed; the other races on
        ended = s.end_attempt()
        if s.outcome is not None:
            yield Record(s.outcome)
        yield events + ended
        yield Drop(number)
        if s.fatal is not None:
            for other in lanes:
                yield Drop(other)
            raise s.fatal
        s.switch(lanes[0], park=False)


def prefill_from_show(show: Mapping[str, Any] | None) -> bool | None:
    """Whether a model continues a trailing assistant message, from its ``/api/show``
    reply (Ollama ``docs/api.md``; the rules of Ollama's ``server/prompt.go`` and
    ``template/template.go``):

    * a builtin ``renderer`` (qwen3-coder, gpt-oss...) continues it: ``True``;
    * a Go template that tests ``$last`` leaves the last assistant turn open (the
      library templates of Llama 3.x and most others): ``True``;
    * a legacy template without ``.Messages`` (``.Prompt``/``.Response``) writes it as the
      response, a prefill: ``True``; no template at all (llama-server's own): ``True``;
    * a ``.Messages`` template without ``$last`` closes every turn (the ChatML-style
      fallbacks): ``False``, the server starts the reply over.

    ``None`` when the reply is missing or not understood.
    """
    if not isinstance(show, Mapping):
        return None
    renderer = show.get("renderer")
    if isinstance(renderer, str) and renderer:
        return True
    template = show.get("template")
    if template is None or template == "":
        return True if "template" in show or "modelfile" in show else None
    if not isinstance(template, str):
        return None
    if "$last" in template:
        return True
    if ".Messages" in template:
        return False
    return True

