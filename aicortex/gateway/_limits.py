"""Admission control of the gateway: requests in flight per client and in total, with a
bounded queue (asyncio, one event loop).

A request is admitted at once while fewer than ``max_active`` are in flight; otherwise it
waits in a FIFO queue of at most ``max_queue`` requests for at most ``queue_timeout_s``
seconds. A full queue, a wait that runs out, or a client that already has
``per_client`` requests in flight or queued is refused with :class:`Busy`, which the gateway
answers with HTTP 503 in Ollama's "server busy" shape (``server/sched.go`` ``ErrMaxQueue``).
"""

from __future__ import annotations

import asyncio
import collections
from contextlib import asynccontextmanager
from typing import AsyncIterator

__all__ = ["Limiter", "Busy", "BUSY_ERROR"]

#: Ollama's own text for a full queue (two spaces after the period, ``server/sched.go``).
BUSY_ERROR = "server busy, please try again.  maximum pending requests exceeded"


class Busy(Exception):
    """The request was not admitted; ``str()`` is the error text for the client."""


class Limiter:
    """Concurrency limits with a bounded FIFO queue.

    Args:
        max_active: requests in flight at once (all clients together), >= 1.
        max_queue: requests waiting for a slot, >= 0 (0: refuse at once when full).
        per_client: requests in flight or queued per client key, >= 1; ``None``: no limit.
        queue_timeout_s: longest wait in the queue, seconds; ``None``: no limit.

    Attributes:
        active: requests in flight now. ``queued``: requests waiting now.
    """

    def __init__(self, max_active: int, max_queue: int, per_client: int | None = None, queue_timeout_s: float | None = 30.0) -> None:
        if max_active < 1 or max_queue < 0 or (per_client is not None and per_client < 1):
            raise ValueError("max_active and per_client must be >= 1 and max_queue >= 0")
        self.max_active = max_active
        self.max_queue = max_queue
        self.per_client = per_client
        self.queue_timeout_s = queue_timeout_s
        self.active = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._per: dict[str, int] = {}

    @property
    def queued(self) -> int:
        """Requests waiting for a slot."""
        return len(self._waiters)

    @asynccontextmanager
    async def slot(self, client: str) -> AsyncIterator[None]:
        """Hold one slot for ``client`` for the body of the ``async with``.

        Raises:
            Busy: the client is over ``per_client``, the queue is full, or the wait ran out.
        """
        held = self._per.get(client, 0)
        if self.per_client is not None and held >= self.per_client:
            raise Busy(
                "server busy, please try again.  too many concurrent requests from this client "
                f"(limit {self.per_client})"
            )
        self._per[client] = held + 1
        try:
            if self.active < self.max_active and not self._waiters:
                self.active += 1
            elif len(self._waiters) >= self.max_queue:
                raise Busy(BUSY_ERROR)
            else:
                await self._wait()  # woken with the slot already counted in ``active``
        except BaseException:
            self._release_client(client)
            raise
        try:
            yield
        finally:
            self.active -= 1
            self._release_client(client)
            self._wake()

    async def _wait(self) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await asyncio.wait_for(fut, self.queue_timeout_s)
        except BaseException as exc:
            if fut.done() and not fut.cancelled():  # handed a slot at the same moment: give it back
                self.active -= 1
                self._wake()
            else:
                fut.cancel()
                try:
                    self._waiters.remove(fut)
                except ValueError:
                    pass
            if isinstance(exc, asyncio.TimeoutError):
                raise Busy(BUSY_ERROR) from None
            raise

    def _wake(self) -> None:
        """Hand free slots to the oldest waiters (counted in ``active`` at once, so that
        no newcomer overtakes them)."""
        while self._waiters and self.active < self.max_active:
            fut = self._waiters.popleft()
            if not fut.done():
                self.active += 1
                fut.set_result(None)

    def _release_client(self, client: str) -> None:
        n = self._per.get(client, 0) - 1
        if n > 0:
            self._per[client] = n
        else:
            self._per.pop(client, None)
