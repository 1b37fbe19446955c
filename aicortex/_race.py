"""The I/O of a hedged race for both drivers: racing attempts opened and read side by side.

The flow (``_flow._race``) decides; these classes only perform its ``Start``, ``Race``,
``Drop`` and ``Adopt`` effects:

* :class:`SyncRace` (the sync driver, httpx): each racing attempt's next step (its open,
  which waits for the head, then one read) runs on a short-lived helper thread that
  resolves a ``concurrent.futures.Future``; ``Race`` is ``concurrent.futures.wait(...,
  FIRST_COMPLETED)`` on them. A thread per step, not a selector: httpx hides its sockets
  and reads through its own buffers, and the open itself (the head comes with the first
  token, ollama-protocol §3.4) is the long wait, so only a thread can wait on it while
  another attempt runs. Threads exist only for hedged requests and only until the first
  token; the winner is read on the caller's thread afterwards. A loser's socket is shut
  down at once (``SyncBody.fire``), so its blocked step returns and the helper closes it.
* :class:`AsyncRace` (the async driver, aiohttp): each step is a task, ``Race`` is
  ``asyncio.wait(..., FIRST_COMPLETED)``, and a loser's task is cancelled and its
  response aborted.

Each attempt's in-flight count (``FleetView.begin``/``end``) spans its whole life.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
import time
from typing import TYPE_CHECKING, Any

from ._exceptions import ServerError
from ._flow import TIMED_OUT

if TYPE_CHECKING:  # pragma: no cover
    from ._aio import AsyncBody, AsyncTransport
    from ._fleet import FleetView
    from ._session import AttemptPlan
    from ._transport import SyncBody, Transport

__all__ = ["SyncRace", "AsyncRace"]


class _SyncLane:
    __slots__ = ("number", "body", "until", "opened", "future", "busy", "dropped", "lock")

    def __init__(self, number: int, body: "SyncBody", until: float | None) -> None:
        self.number, self.body, self.until = number, body, until
        self.opened = False
        self.future: concurrent.futures.Future[Any] | None = None
        self.busy = False
        self.dropped = False
        self.lock = threading.Lock()


class SyncRace:
    """The racing attempts of one hedged request, for the sync driver."""

    def __init__(self, transport: "Transport", fleet: "FleetView") -> None:
        self._t, self._fleet = transport, fleet
        self._lanes: dict[int, _SyncLane] = {}

    def start(self, plan: "AttemptPlan", until: float | None) -> None:
        """Begin opening ``plan``'s attempt (then its first read, by ``until``)."""
        body = self._t.prepare_chat(plan)
        self._fleet.begin(plan.server)
        lane = self._lanes[plan.number] = _SyncLane(plan.number, body, until)
        self._step(lane)

    def _step(self, lane: _SyncLane) -> None:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        lane.future, lane.busy = future, True
        threading.Thread(target=_run_step, args=(lane, future), name="aicortex-hedge", daemon=True).start()

    def race(self, until: float | None) -> Any:
        """The next ``(number, result)`` of any racing attempt, or ``TIMED_OUT`` by ``until``."""
        waiting: dict[concurrent.futures.Future[Any], _SyncLane] = {}
        for lane in self._lanes.values():
            if lane.future is None:
                self._step(lane)
            assert lane.future is not None
            waiting[lane.future] = lane
        timeout = None if until is None else max(0.0, until - time.monotonic())
        done, _ = concurrent.futures.wait(waiting, timeout, concurrent.futures.FIRST_COMPLETED)
        if not done:
            return TIMED_OUT
        lane = min((waiting[f] for f in done), key=lambda la: la.number)
        future, lane.future = lane.future, None
        assert future is not None
        return lane.number, future.result()  # a step's own exception (e.g. the client closed) is raised here

    def drop(self, number: int) -> None:
        """Close racing attempt ``number`` at once (never raises)."""
        lane = self._lanes.pop(number, None)
        if lane is None:
            return
        self._fleet.end(lane.body.server)
        with lane.lock:
            lane.dropped = True
            busy = lane.busy
        try:
            if busy:
                lane.body.fire()  # its step returns at once; the helper thread closes it
            else:
                lane.body.close(False)
        except Exception:  # pragma: no cover - closing a socket
            pass

    def adopt(self, number: int) -> "SyncBody | None":
        """Attempt ``number`` goes on alone: its body (``None`` if it never opened). Its
        step is done (the flow adopts an attempt right after taking its result)."""
        lane = self._lanes.pop(number)
        if lane.opened:
            return lane.body
        self._fleet.end(lane.body.server)
        return None

    def close(self) -> None:
        """Drop every racing attempt (the stream was closed, or the request failed)."""
        for number in list(self._lanes):
            self.drop(number)


def _run_step(lane: _SyncLane, future: "concurrent.futures.Future[Any]") -> None:
    """One step of a racing attempt, on a helper thread: open it if not yet open, then
    read once; a dropped attempt is closed here, once its step returned."""
    result: Any = None
    error: BaseException | None = None
    try:
        if not lane.opened:
            try:
                lane.body.open()
            except ServerError as exc:
                result = exc
            else:
                lane.opened = True
        if lane.opened:
            result = lane.body.read(lane.until)
    except BaseException as exc:  # e.g. ConfigError: the client was closed meanwhile
        error = exc
    with lane.lock:
        lane.busy = False
        dropped = lane.dropped
    if dropped:
        try:
            lane.body.close(False)
        except Exception:  # pragma: no cover - closing a socket
            pass
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class _AsyncLane:
    __slots__ = ("number", "plan", "body", "until", "task")

    def __init__(self, plan: "AttemptPlan", until: float | None) -> None:
        self.number, self.plan, self.until = plan.number, plan, until
        self.body: "AsyncBody | None" = None
        self.task: asyncio.Future[Any] | None = None


class AsyncRace:
    """The racing attempts of one hedged request, for the async driver."""

    def __init__(self, transport: "AsyncTransport", fleet: "FleetView") -> None:
        self._t, self._fleet = transport, fleet
        self._lanes: dict[int, _AsyncLane] = {}

    def start(self, plan: "AttemptPlan", until: float | None) -> None:
        """Begin opening ``plan``'s attempt (then its first read, by ``until``)."""
        self._fleet.begin(plan.server)
        lane = self._lanes[plan.number] = _AsyncLane(plan, until)
        lane.task = asyncio.ensure_future(self._step(lane))

    async def _step(self, lane: _AsyncLane) -> Any:
        if lane.body is None:
            try:
                lane.body = await self._t.open_chat(lane.plan)
            except ServerError as exc:
                return exc
        return await lane.body.read(lane.until, None)

    async def race(self, until: float | None) -> Any:
        """The next ``(number, result)`` of any racing attempt, or ``TIMED_OUT`` by ``until``."""
        waiting: dict[asyncio.Future[Any], _AsyncLane] = {}
        for lane in self._lanes.values():
            if lane.task is None:
                lane.task = asyncio.ensure_future(self._step(lane))
            waiting[lane.task] = lane
        timeout = None if until is None else max(0.0, until - time.monotonic())
        done, _ = await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if not done:
            return TIMED_OUT
        lane = min((waiting[t] for t in done), key=lambda la: la.number)
        task, lane.task = lane.task, None
        assert task is not None
        return lane.number, task.result()

    def drop(self, number: int) -> None:
        """Close racing attempt ``number`` at once: cancel its step, abort its response
        (never raises)."""
        lane = self._lanes.pop(number, None)
        if lane is None:
            return
        self._fleet.end(lane.plan.server)
        task = lane.task
        if task is not None:
            if task.done():
                if not task.cancelled():
                    task.exception()  # retrieved: no "never retrieved" warning
            else:
                task.cancel()
                task.add_done_callback(functools.partial(_abort_later, lane))  # an open that won the cancel race
        _abort_body(lane)

    def adopt(self, number: int) -> "AsyncBody | None":
        """Attempt ``number`` goes on alone: its body (``None`` if it never opened)."""
        lane = self._lanes.pop(number)
        if lane.body is not None:
            return lane.body
        self._fleet.end(lane.plan.server)
        return None

    def close(self) -> None:
        """Drop every racing attempt (the stream was closed, or the request failed)."""
        for number in list(self._lanes):
            self.drop(number)


def _abort_later(lane: _AsyncLane, task: "asyncio.Future[Any]") -> None:
    _abort_body(lane)


def _abort_body(lane: _AsyncLane) -> None:
    body, lane.body = lane.body, None
    if body is not None:
        try:
            body.abort()
        except Exception:  # pragma: no cover - closing a socket
            pass
