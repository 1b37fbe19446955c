"""``ToolStream`` and ``AsyncToolStream``: a ``run_tools=True`` chat as one stream.

The two drivers of :func:`aicortex._tools.tool_loop_flow`. Each round is an ordinary
:class:`~aicortex.Stream` (or :class:`~aicortex.AsyncStream`), with its own routing,
failover and health bookkeeping; the driver hands its events through
:meth:`~aicortex._tools.ToolLoop.relay`, calls the tools the flow asks for (awaiting an
async one in the async driver) and hands out their ``tool_result`` events. The wrappers
are :class:`Stream` / :class:`AsyncStream` subclasses, so that iteration, ``include=``,
``events``, closing and the results read the same way; the results that span rounds
(``text()``, ``reply()``, ``attempts``, ``ttft_s``, ``complete``, ``closed_early``) come
from the loop. ``stream=False`` reads the same object to its end.
"""

from __future__ import annotations

import inspect
import warnings
from functools import partial
from typing import TYPE_CHECKING, Any, AsyncGenerator, Awaitable, Callable, Generator

from ._exceptions import IncompleteStream
from ._models import Attempt, Reply, StreamEvent
from ._stream import AsyncStream, Stream, _abort, _Results
from ._tools import AskRound, RunTool, ToolLoop, tool_loop_flow

if TYPE_CHECKING:  # pragma: no cover
    from ._session import ChatSession

__all__ = ["ToolStream", "AsyncToolStream"]

#: Opens the chat of one round from its messages (``Client.chat(..., stream=True)``).
OpenRound = Callable[[list[dict[str, Any]]], Stream]
AsyncOpenRound = Callable[[list[dict[str, Any]]], Awaitable[AsyncStream]]


class _Round:
    """The round's stream in flight, shared by a driver and its wrapper (so that closing
    or collecting the wrapper closes it without running the driver)."""

    __slots__ = ("stream",)

    def __init__(self, stream: Any) -> None:
        self.stream = stream


def _sync_call(item: RunTool) -> tuple[bool, Any]:
    try:
        value = item.fn(**item.args)
    except Exception as exc:  # the user's function failed: the model is told why
        return False, exc
    if inspect.isawaitable(value):
        close = getattr(value, "close", None)
        if callable(close):
            close()  # never awaited: no "coroutine was never awaited" warning
        return False, TypeError(f"{item.name} returned an awaitable: run async tools with AsyncClient")
    return True, value


def _drive_sync(loop: ToolLoop, held: _Round, open_round: OpenRound) -> Generator[StreamEvent, None, None]:
    """Step the tool loop with blocking I/O: stream each round, call each tool."""
    flow = tool_loop_flow(loop)
    send: Any = None
    try:
        while True:
            try:
                item = flow.send(send)
            except StopIteration:
                return
            send = None
            if item.__class__ is AskRound:
                current = held.stream
                if current is None:  # the first round was opened at the call
                    current = held.stream = open_round(item.messages)
                    loop.begin_round(current._session)
                for event in current:  # the round's Stream: closed when the loop ends
                    out = loop.relay(event, partial(current._make_reply, False))
                    if out is not None:
                        yield out
                send = current._make_reply(validate=False)
                held.stream = None
            elif item.__class__ is RunTool:
                send = _sync_call(item)
            else:
                yield from item
    finally:
        current, held.stream = held.stream, None
        if current is not None:
            current.close()


async def _drive_async(loop: ToolLoop, held: _Round, open_round: AsyncOpenRound) -> AsyncGenerator[StreamEvent, None]:
    """Step the tool loop with awaits: stream each round, call (and await) each tool."""
    flow = tool_loop_flow(loop)
    send: Any = None
    try:
        while True:
            try:
                item = flow.send(send)
            except StopIteration:
                return
            send = None
            if item.__class__ is AskRound:
                current = held.stream
                if current is None:
                    current = held.stream = await open_round(item.messages)
                    loop.begin_round(current._session)
                async for event in current:  # the round's AsyncStream closes itself at its end
                    out = loop.relay(event, partial(current._make_reply, False))
                    if out is not None:
                        yield out
                send = current._make_reply(validate=False)
                held.stream = None
            elif item.__class__ is RunTool:
                try:
                    value = item.fn(**item.args)
                    if inspect.isawaitable(value):
                        value = await value
                    send = (True, value)
                except Exception as exc:  # the user's function failed: the model is told why
                    send = (False, exc)
            else:
                for event in item:
                    yield event
    finally:
        current, held.stream = held.stream, None
        if current is not None:
            await current.aclose()


class _LoopResults(_Results):
    """The results of a tool loop, over :class:`_Results`: the current round's session
    answers for the current round (``message``, ``partial_text``, ``usage``...), the loop
    for what spans rounds."""

    _tools: ToolLoop

    @property
    def _session(self) -> "ChatSession":
        session = self._tools.session
        assert session is not None
        return session

    @_session.setter
    def _session(self, session: "ChatSession") -> None:
        self._tools.begin_round(session)

    def _result_text(self) -> str:
        final = self._tools.final
        if final is not None:
            return final.text
        s = self._session
        if s.fatal is not None:
            raise s.fatal
        raise IncompleteStream(
            "the stream was closed before the tool loop's final answer completed; text() and reply() "
            "are only for a complete reply (stream.tool_results has the calls run so far)",
            server=s.server,
        )

    def _make_reply(self, validate: bool = True) -> Reply:
        self._result_text()
        final = self._tools.final
        assert final is not None
        if not validate or self._session.output_type is None:
            return final
        return Reply(**{**final.__dict__, "output": self._validated(final.text)})

    @property
    def output(self) -> Any:
        """With ``output_type=SomeModel``: the final answer validated as that pydantic
        model (``None`` before the loop ends). Raises ``InvalidOutput`` if it does not validate."""
        final = self._tools.final
        return None if final is None else self._validated(final.text)

    @property
    def complete(self) -> bool:
        """The loop's final answer completed (its ``end`` event was produced)."""
        return self._tools.final is not None

    @property
    def closed_early(self) -> bool:
        """The stream was closed before the final answer completed (in a round, or
        between rounds while tools ran)."""
        return self._closed and self._tools.final is None and self._session.fatal is None

    @property
    def attempts(self) -> tuple[Attempt, ...]:
        """Every round's attempts so far, in order (each round numbers its own from 1)."""
        return self._tools.attempts

    @property
    def ttft_s(self) -> float | None:
        """Seconds from the first round's request to its first output (token, thinking
        or tool call), failovers included; ``None`` before it."""
        return self._tools.ttft_s

    @property
    def tool_results(self) -> tuple[dict[str, Any], ...]:
        """The calls run so far: ``{"name", "arguments", "id", "result"}``, in order."""
        return tuple(self._tools.results)

    @property
    def round(self) -> int:
        """The current round, 1-based (round 1 is the first request)."""
        return self._tools.number


class ToolStream(_LoopResults, Stream):
    """A ``run_tools=True`` chat streamed: every round's events, one ``tool_result``
    per call run, and the final answer, as one :class:`~aicortex.Stream`.

    Events: one ``"start"``; each round's ``"thinking"`` / ``"token"`` / ``"tool_call"``
    (and failover ``"error"`` / ``"meta"`` / ``"reset"``) as they arrive; after a round
    that asked for tools, one ``"tool_result"`` per call (``tool_name``, ``tool_args``,
    ``tool_result`` = the value returned or the error text, ``content`` = the text sent
    to the model, ``meta={"index", "round", "id"?, "error"?}``); a ``"meta"`` event
    ``{"tool_round": n, ...}`` where round ``n`` starts; one ``"end"`` when the final
    answer completed. Token ``index`` counts within a round.

    Results as :class:`Stream`: ``text()`` and ``reply()`` are the final answer's
    (``reply().tool_results`` lists every call, ``reply().attempts`` every round's);
    ``message``, ``partial_text``, ``usage``, ``server``, ``tokens_per_second`` are the
    current round's; ``ttft_s`` is the first round's; plus ``tool_results`` and ``round``.
    Closing it (``with``, ``break``, ``close()``) closes the round's connection at once
    and runs no further tool or round.

    Iteration raises what a round's :class:`Stream` raises (``AllServersFailed``...);
    a tool that raises is never raised: the model gets the error's text.
    """

    def __init__(
        self, loop: ToolLoop, first: Stream, open_round: OpenRound, *, keep_events: bool = True,
        include: "frozenset[str] | None" = None,
    ) -> None:
        self._tools = loop
        _Results.__init__(self, first._session, keep_events, include)
        self._held = _Round(first)
        self._gen = _drive_sync(loop, self._held, open_round)


class AsyncToolStream(_LoopResults, AsyncStream):
    """A ``run_tools=True`` chat streamed for ``asyncio``: the events and results of
    :class:`ToolStream`, read as :class:`~aicortex.AsyncStream` is (``async for``,
    ``async with``, ``await text()`` / ``reply()``, ``aclose()``). A tool that is a
    coroutine function is awaited; cancelling the task (in a round or in a tool) closes
    the round's connection."""

    def __init__(
        self, loop: ToolLoop, first: AsyncStream, open_round: AsyncOpenRound, *, keep_events: bool = True,
        include: "frozenset[str] | None" = None,
    ) -> None:
        self._tools = loop
        _Results.__init__(self, first._session, keep_events, include)
        self._round = _Round(first)
        self._agen = _drive_async(loop, self._round, open_round)
        self._started = False

    async def aclose(self) -> None:
        """Stop the loop and close the round's connection. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._agen.aclose()
        finally:
            current, self._round.stream = self._round.stream, None
            if current is not None:
                await current.aclose()

    def __del__(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._started and self._tools.final is None and self._session.fatal is None:
            warnings.warn(f"{self!r} was not closed: use `async with` or `await stream.aclose()`", ResourceWarning, stacklevel=1)
        current, self._round.stream = self._round.stream, None
        if current is not None and not current._closed:
            current._closed = True
            try:
                _abort(current._session, current._held)
            except Exception:  # pragma: no cover
                pass
