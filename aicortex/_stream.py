"""``Stream``: the synchronous driver of a :class:`~aicortex._session.ChatSession`.

A closeable iterator of :class:`~aicortex.StreamEvent` (design rule 6): leaving a
``with`` block, breaking out of a ``for`` loop and then dropping the stream, calling
``close()``, or garbage collection all close the HTTP connection of the attempt in flight.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

from ._exceptions import ServerError
from ._models import Attempt, Reply, StreamEvent, Usage
from ._session import ChatSession

if TYPE_CHECKING:  # pragma: no cover
    from ._transport import Transport

__all__ = ["Stream"]


class Stream:
    """A streamed chat reply: iterate it for events; a context manager.

    The request is sent when iteration starts (the first ``next()``), like the
    official client's lazy generator. Events: one ``"start"``, then ``"token"`` /
    ``"thinking"`` / ``"tool_call"`` as they arrive, ``"error"`` (and ``"meta"``,
    ``"reset"``) around failovers, and one ``"end"`` when the reply completed.

    Iteration raises (after the ``"error"`` event of the last attempt):
        AllServersFailed: every candidate failed (``.attempts`` has each error).
        BadRequest: HTTP 400, the request itself is wrong (no failover).
        DeadlineExceeded: the total deadline ran out.
        ServerError: with ``on_midstream="raise"``, the failure that broke the reply.

    Attributes and methods:
        text(): the reply's text, reading the rest of the stream first if needed.
        events: every event so far (a list copy).
        ttft_s: seconds from the start of iteration to the first token or thinking
            chunk received (includes failover time), ``None`` before it.
        tokens_per_second: client-measured tokens/s (tokens after the first / seconds
            since the first), ``None`` with fewer than two tokens.
        usage: :class:`~aicortex.Usage` of the final ``done`` chunk, ``None`` before it.
        server: URL of the server that produced the reply (``None`` until it completed).
        attempts: one :class:`~aicortex.Attempt` per server tried so far.
    """

    def __init__(
        self,
        session: ChatSession,
        transport: "Transport",
        *,
        on_attempt: Callable[[Attempt], None] | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self._session = session
        self._transport = transport
        self._on_close = on_close
        self._events: list[StreamEvent] = []
        # The generator does not reference the Stream, so dropping the Stream (e.g. after
        # ``break`` in a bare for loop) frees it at once and closes the connection.
        self._gen: Iterator[StreamEvent] = _drive(session, transport, on_attempt)
        self._closed = False

    def __iter__(self) -> "Stream":
        return self

    def __next__(self) -> StreamEvent:
        if self._closed:
            raise StopIteration
        try:
            event = next(self._gen)
        except BaseException:
            self.close()
            raise
        self._events.append(event)
        return event

    def close(self) -> None:
        """Stop the request and release its connection. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            self._gen.close()
        finally:
            if self._on_close is not None:
                self._on_close()

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # -- results -------------------------------------------------------------------------------
    def text(self) -> str:
        """The reply's text (no thinking). Reads the rest of the stream if it is still open.

        Raises what iteration raises (e.g. ``AllServersFailed``).
        """
        for _ in self:
            pass
        if self._session.fatal is not None:
            raise self._session.fatal
        return self._session.text

    def reply(self) -> Reply:
        """Read the stream to its end and return the whole :class:`~aicortex.Reply`."""
        text = self.text()
        s = self._session
        return Reply(
            text=text,
            message=s.message(),
            usage=s.usage,
            server=s.server or "",
            attempts=s.attempts,
            ttft_s=s.ttft_s,
            tokens_per_second=s.tokens_per_second,
            model=s.model,
        )

    @property
    def events(self) -> list[StreamEvent]:
        return list(self._events)

    @property
    def thinking(self) -> str:
        """The reply's thinking text so far."""
        return self._session.thinking

    @property
    def tool_calls(self) -> list[Mapping[str, Any]]:
        """Tool calls received so far (Ollama's shape)."""
        return self._session.tool_calls

    @property
    def ttft_s(self) -> float | None:
        return self._session.ttft_s

    @property
    def tokens_per_second(self) -> float | None:
        return self._session.tokens_per_second

    @property
    def usage(self) -> Usage | None:
        return self._session.usage

    @property
    def server(self) -> str | None:
        return self._session.server

    @property
    def attempts(self) -> tuple[Attempt, ...]:
        return self._session.attempts

    @property
    def model(self) -> str:
        """The model asked for."""
        return self._session.model

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Stream model={self._session.model!r} {state} events={len(self._events)}>"


def _drive(
    s: ChatSession, transport: "Transport", on_attempt: Callable[[Attempt], None] | None
) -> Iterator[StreamEvent]:
    """The driver loop: the only I/O of a sync request (see ``_session`` for the protocol)."""
    yield from s.start()
    while True:
        plan, events = s.next_attempt()
        yield from events
        if plan is None:
            assert s.fatal is not None
            raise s.fatal
        try:
            with transport.stream_chat(
                plan.server,
                plan.body,
                connect_timeout_s=plan.connect_timeout_s,
                first_token_timeout_s=plan.first_token_timeout_s,
                stall_timeout_s=plan.stall_timeout_s,
            ) as body:
                for data in body:
                    yield from s.receive(data)
                    if s.attempt_done:
                        break
                else:
                    yield from s.receive_eof()
                if s.attempt_done and s.attempt_error is None:
                    _drain(body)
        except ServerError as exc:
            s.transport_failed(exc)
        events = s.end_attempt()
        if on_attempt is not None:  # before the events: a caller may stop at "end"
            on_attempt(s.attempts[-1])
        yield from events
        if s.fatal is not None:
            raise s.fatal
        if s.complete:
            return


#: After ``done``, read at most this much of what is left (normally only the chunked
#: terminator), so that the connection goes back to the pool for the next request.
_DRAIN_BYTES = 64 * 1024


def _drain(body: Iterator[bytes]) -> None:
    """Read the rest of a finished reply, keeping its keep-alive connection reusable."""
    seen = 0
    try:
        for data in body:
            seen += len(data)
            if seen > _DRAIN_BYTES:
                return
    except ServerError:
        return  # the reply is complete; a broken tail only costs the connection
