"""``Stream`` and ``AsyncStream``: the two thin drivers of the request flow (``_flow``).

Both are closeable iterators of :class:`~aicortex.StreamEvent` (design rule 6) with one
shared base for their results. The drivers, :func:`_drive_sync` and :func:`_drive_async`,
only perform the flow's effects (open, read, close, admit, record...); every decision is
the flow's. Leaving a ``with`` block, breaking out of a ``for`` loop, ``close()`` /
``aclose()``, cancelling the task, or garbage collection closes the HTTP connection of the
attempt in flight, and the server sees the disconnect.
"""

from __future__ import annotations

import time
import warnings
from typing import TYPE_CHECKING, Any, AsyncGenerator, Generator, Iterator, Mapping

from ._exceptions import IncompleteStream, InvalidOutput, ServerError
from ._flow import Admit, Close, KnownPrefill, Learn, Open, Read, Record, Show, chat_flow
from ._models import Attempt, Reply, StreamEvent, Usage
from ._session import ChatSession

if TYPE_CHECKING:  # pragma: no cover
    from ._aio import AsyncTransport
    from ._fleet import FleetView
    from ._transport import Transport

__all__ = ["Stream", "AsyncStream", "SHOW_TIMEOUT_S"]

#: Time limit (seconds) of the ``/api/show`` request that learns whether a server
#: continues a prefill (once per server and model, before its first continuation).
SHOW_TIMEOUT_S = 2.0


class _Held:
    """The response in flight, shared by a driver and its stream (so that a stream that is
    garbage-collected can close it without running the driver)."""

    __slots__ = ("body", "fleet")

    def __init__(self, fleet: "FleetView") -> None:
        self.body: Any = None
        self.fleet = fleet

    def release(self) -> Any:
        body, self.body = self.body, None
        if body is not None:
            self.fleet.end(body.server)
        return body


def _drive_sync(s: ChatSession, transport: "Transport", held: _Held) -> Generator[StreamEvent, None, None]:
    """Perform the flow's effects with blocking I/O (the sync driver)."""
    fleet, flow, clock = held.fleet, chat_flow(s), time.monotonic
    send: Any = None
    try:
        while True:
            try:
                item = flow.send(send)
            except StopIteration:
                return
            cls = item.__class__
            if cls is Read:  # the hot path: a chunk's events, then the next read
                events = item.events
                if events:
                    t0 = clock()
                    yield from events
                    s.consumer_s += clock() - t0
                send = held.body.read(item.until)
                continue
            send = None
            if cls is list:
                t0 = clock()
                yield from item
                s.consumer_s += clock() - t0
            elif cls is Record:
                fleet.record(item.outcome)
            elif cls is Open:
                fleet.begin(item.plan.server)
                try:
                    held.body = transport.open_chat(item.plan)
                except ServerError as exc:
                    fleet.end(item.plan.server)
                    send = exc
                except BaseException:
                    fleet.end(item.plan.server)
                    raise
            elif cls is Close:
                held.release().close(item.drain)
            elif cls is Admit:
                send = fleet.admit(item.candidate.server.url, item.model)
            elif cls is KnownPrefill:
                send = fleet.prefill(item.url, item.model)
            elif cls is Show:
                send = transport.show(item.url, item.model, timeout_s=SHOW_TIMEOUT_S)
            elif cls is Learn:
                fleet.learn_prefill(item.url, item.model, item.value)
    finally:
        body = held.release()
        if body is not None:
            body.close(False)
        outcome = s.abandon()
        if outcome is not None:
            fleet.record(outcome)


async def _drive_async(s: ChatSession, transport: "AsyncTransport", held: _Held) -> AsyncGenerator[StreamEvent, None]:
    """Perform the flow's effects with awaits (the async driver)."""
    fleet, flow, clock = held.fleet, chat_flow(s), time.monotonic
    send: Any = None
    try:
        while True:
            try:
                item = flow.send(send)
            except StopIteration:
                return
            send = None
            cls = item.__class__
            if cls is list:
                t0 = clock()
                for event in item:
                    yield event
                s.consumer_s += clock() - t0
            elif cls is Read:
                if item.events:
                    t0 = clock()
                    for event in item.events:
                        yield event
                    s.consumer_s += clock() - t0
                send = await held.body.read(item.until, item.stall_s)
            elif cls is Record:
                fleet.record(item.outcome)
            elif cls is Open:
                fleet.begin(item.plan.server)
                try:
                    held.body = await transport.open_chat(item.plan)
                except ServerError as exc:
                    fleet.end(item.plan.server)
                    send = exc
                except BaseException:  # cancelled while awaiting the head: no longer in flight
                    fleet.end(item.plan.server)
                    raise
            elif cls is Close:
                await held.release().close(item.drain)
            elif cls is Admit:
                send = await fleet.admit_async(item.candidate.server.url, item.model)
            elif cls is KnownPrefill:
                send = fleet.prefill(item.url, item.model)
            elif cls is Show:
                send = await transport.show(item.url, item.model, timeout_s=SHOW_TIMEOUT_S)
            elif cls is Learn:
                fleet.learn_prefill(item.url, item.model, item.value)
    finally:
        _abort(s, held)


def _abort(s: ChatSession, held: _Held) -> None:
    """Close the response in flight at once and give back a held trial (never raises)."""
    body = held.release()
    if body is not None:
        try:
            body.abort()
        except Exception:  # pragma: no cover - closing a socket
            pass
    outcome = s.abandon()
    if outcome is not None:
        held.fleet.record(outcome)


class _Results:
    """What a streamed reply knows, shared by :class:`Stream` and :class:`AsyncStream`."""

    def __init__(self, session: ChatSession, keep_events: bool, include: "frozenset[str] | None" = None) -> None:
        self._session = session
        self._output: Any = None
        self._events: list[StreamEvent] | None = [] if keep_events else None
        self._closed = False
        self._include = include  # the event types handed out (None: all); every one is kept

    def _result_text(self) -> str:
        s = self._session
        if s.fatal is not None:
            raise s.fatal
        if not s.complete:
            raise IncompleteStream(
                "the stream was closed before the reply completed; text() and reply() are only "
                "for a complete reply (the partial text is in stream.partial_text)",
                server=s.server,
            )
        return s.text

    def _make_reply(self, validate: bool = True) -> Reply:
        """The complete reply; ``validate=False`` leaves ``output`` unset (a tool loop's
        rounds: only the last one's text is the answer)."""
        s = self._session
        text = self._result_text()
        return Reply(
            text=text,
            message=s.message(),
            usage=s.usage,
            server=s.server or "",
            attempts=s.attempts,
            ttft_s=s.ttft_s,
            tokens_per_second=s.tokens_per_second,
            model=s.model,
            context=s.context,
            logprobs=tuple(s._logprobs),
            output=self._validated(text) if validate else None,
        )

    def _validated(self, text: str) -> Any:
        """The reply validated as ``output_type`` (pydantic), once; ``None`` without one."""
        output_type = self._session.output_type
        if output_type is None or self._output is not None:
            return self._output
        try:
            self._output = output_type.model_validate_json(text)
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            s = self._session
            raise InvalidOutput(
                f"the reply of {s.server} does not validate as {output_type.__name__} (model {s.model!r}): {exc}",
                server=s.server, model=s.model, text=text,
            ) from exc
        return self._output

    @property
    def output(self) -> Any:
        """With ``output_type=SomeModel``: the complete reply validated as that pydantic
        model (``None`` before the end). Raises ``InvalidOutput`` if it does not validate."""
        if not self._session.complete:
            return None
        return self._validated(self._session.text)

    @property
    def events(self) -> list[StreamEvent]:
        """Every event so far (a list copy); ``[]`` when the stream keeps no events
        (``keep_events=False``, to hold memory flat on long replies)."""
        return list(self._events or ())

    @property
    def complete(self) -> bool:
        """The reply completed (its ``end`` event was produced)."""
        return self._session.complete

    @property
    def closed_early(self) -> bool:
        """The stream was closed before the reply completed (``text()`` then raises)."""
        return self._session.closed_early

    @property
    def partial_text(self) -> str:
        """The reply's text so far, complete or not (never raises)."""
        return self._session.text

    @property
    def thinking(self) -> str:
        """The reply's thinking text so far."""
        return self._session.thinking

    @property
    def message(self) -> dict[str, Any]:
        """The assistant message so far, as Ollama shapes it, to append to the history:
        ``{"role": "assistant", "content", "thinking"?, "tool_calls"?}``."""
        return self._session.message()

    @property
    def tool_calls(self) -> list[Mapping[str, Any]]:
        """Tool calls received so far (Ollama's shape)."""
        return self._session.tool_calls

    @property
    def ttft_s(self) -> float | None:
        """Seconds from sending the request to the first token or thinking chunk
        (failovers included), ``None`` before it."""
        return self._session.ttft_s

    @property
    def tokens_per_second(self) -> float | None:
        """Tokens/s after the first token: client-measured, or the server-reported figure
        when the consumer was slower than the server (see ``ChatSession.tokens_per_second``)."""
        return self._session.tokens_per_second

    @property
    def usage(self) -> Usage | None:
        """:class:`~aicortex.Usage` of the final ``done`` chunk, ``None`` before it."""
        return self._session.usage

    @property
    def server(self) -> str | None:
        """URL of the server that produced the reply (``None`` until it completed)."""
        return self._session.server

    @property
    def attempts(self) -> tuple[Attempt, ...]:
        """One :class:`~aicortex.Attempt` per server tried so far."""
        return self._session.attempts

    @property
    def model(self) -> str:
        """The model asked for."""
        return self._session.model

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<{type(self).__name__} model={self._session.model!r} {state}>"


class Stream(_Results):
    """A streamed chat reply: iterate it for events; a context manager.

    The request is sent when iteration starts (the first ``next()``), like the
    official client's lazy generator. Events: one ``"start"``, then ``"token"`` /
    ``"thinking"`` / ``"tool_call"`` as they arrive, ``"error"`` (and ``"meta"``,
    ``"reset"``) around failovers, and one ``"end"`` when the reply completed.

    ``break`` out of a ``for`` loop closes the stream at once (the connection too), even
    while you still hold the stream; ``text()`` then raises ``IncompleteStream``.

    Iteration raises (after the ``"error"`` event of the last attempt):
        AllServersFailed: every candidate failed (``.attempts`` has each error).
        BadRequest: HTTP 400, the request itself is wrong (no failover).
        DeadlineExceeded: the total deadline ran out.
        ServerError: with ``on_midstream="raise"``, the failure that broke the reply.

    Results: ``text()``, ``reply()``, ``events``, ``partial_text``, ``thinking``,
    ``tool_calls``, ``ttft_s``, ``tokens_per_second``, ``usage``, ``server``,
    ``attempts``, ``complete``, ``closed_early``.
    """

    def __init__(
        self, session: ChatSession, transport: "Transport", fleet: "FleetView", *, keep_events: bool = True,
        include: "frozenset[str] | None" = None,
    ) -> None:
        super().__init__(session, keep_events, include)
        # The driver does not reference the Stream, so dropping the Stream frees it at
        # once and closes the connection.
        self._gen: Generator[StreamEvent, None, None] = _drive_sync(session, transport, _Held(fleet))

    def __iter__(self) -> Iterator[StreamEvent]:
        return self._loop()

    def _loop(self) -> Iterator[StreamEvent]:
        # A generator only the for loop holds: on ``break`` the loop drops it, it is
        # finalised at once, and the stream is closed.
        if self._closed:
            return
        events, include = self._events, self._include
        try:
            for event in self._gen:
                if events is not None:
                    events.append(event)
                if include is None or event.type in include:
                    yield event
        finally:
            self.close()

    def __next__(self) -> StreamEvent:
        while True:
            if self._closed:
                raise StopIteration
            try:
                event = next(self._gen)
            except BaseException:
                self.close()
                raise
            if self._events is not None:
                self._events.append(event)
            if self._include is None or event.type in self._include:
                return event

    def close(self) -> None:
        """Stop the request and release its connection. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._gen.close()

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def text(self) -> str:
        """The reply's text (no thinking). Reads the rest of the stream if it is still open.

        Raises what iteration raises (e.g. ``AllServersFailed``), and
        ``IncompleteStream`` when the stream was closed before the reply completed.
        """
        for _ in self._loop():
            pass
        return self._result_text()

    def reply(self) -> Reply:
        """Read the stream to its end and return the whole :class:`~aicortex.Reply`.
        Raises as :meth:`text`."""
        self.text()
        return self._make_reply()


class AsyncStream(_Results):
    """A streamed chat reply for ``asyncio``: ``async for`` it; an async context manager.

    Same events, results and errors as :class:`Stream`. The request is sent when
    iteration starts. Leaving ``async with``, ``aclose()``, or cancelling the task closes
    the connection at once. A stream dropped without being closed is closed by the
    garbage collector, with a ``ResourceWarning`` (as httpx does). ``await text()`` /
    ``await reply()`` read the rest.
    """

    def __init__(
        self, session: ChatSession, transport: "AsyncTransport", fleet: "FleetView", *, keep_events: bool = True,
        include: "frozenset[str] | None" = None,
    ) -> None:
        super().__init__(session, keep_events, include)
        self._held = _Held(fleet)
        self._agen: AsyncGenerator[StreamEvent, None] = _drive_async(session, transport, self._held)
        self._started = False

    def __aiter__(self) -> "AsyncStream":
        return self

    async def __anext__(self) -> StreamEvent:
        while True:
            if self._closed:
                raise StopAsyncIteration
            self._started = True
            try:
                event = await self._agen.__anext__()
            except BaseException:
                await self.aclose()
                raise
            if self._events is not None:
                self._events.append(event)
            if self._include is None or event.type in self._include:
                return event

    async def aclose(self) -> None:
        """Stop the request and close its connection. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._agen.aclose()
        finally:
            _abort(self._session, self._held)

    async def __aenter__(self) -> "AsyncStream":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._started and not self._session.complete and self._session.fatal is None:
            warnings.warn(f"{self!r} was not closed: use `async with` or `await stream.aclose()`", ResourceWarning, stacklevel=1)
        try:
            _abort(self._session, self._held)
        except Exception:  # pragma: no cover
            pass

    async def text(self) -> str:
        """The reply's text (no thinking), reading the rest of the stream first.
        Raises as :meth:`Stream.text`."""
        async for _ in self:
            pass
        return self._result_text()

    async def reply(self) -> Reply:
        """Read the stream to its end and return the whole :class:`~aicortex.Reply`."""
        await self.text()
        return self._make_reply()

