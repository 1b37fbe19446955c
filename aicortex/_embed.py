"""Embeddings across the fleet: one input list, split into batches, spread over every
healthy server that has the model, run concurrently, returned in input order.

:class:`EmbedPlan` decides (sans-IO): which batch a server takes next, what a failure
means (the batch goes back for another server; that server takes no more), when the
request is over. Each server has one worker that takes the next batch when it is free, so
a faster server takes more batches (work stealing). The sync driver runs the workers in
threads, the async driver as tasks; both only do I/O (Ollama ``POST /api/embed``,
``docs/api.md`` "Generate Embeddings").
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ._exceptions import AICortexError, AllServersFailed, BadRequest, ConfigError, DeadlineExceeded, ProtocolError, ServerError, error_reason
from ._health import Outcome
from ._models import Attempt
from ._protocol import model_key

if TYPE_CHECKING:  # pragma: no cover
    from ._aio import AsyncTransport
    from ._fleet import FleetView
    from ._session import Candidate
    from ._transport import Transport

__all__ = ["EmbedResult", "EmbedPlan", "DEFAULT_BATCH_SIZE", "MAX_EMBED_BYTES", "embed_sync", "embed_async", "parse_embed"]

#: Most inputs per request when ``batch_size`` is not given (a long list is cut into
#: about 8 batches per server, of ``MIN_BATCH_SIZE`` to ``DEFAULT_BATCH_SIZE`` inputs).
DEFAULT_BATCH_SIZE = 256
MIN_BATCH_SIZE = 16
#: Longest /api/embed reply read, bytes (a batch of 64 inputs of 4,096 dimensions is ~6 MB).
MAX_EMBED_BYTES = 64 << 20


@dataclass(frozen=True)
class EmbedResult:
    """The embeddings of an input list, in input order.

    Fields:
        embeddings: one vector (list of floats) per input.
        model: the model asked for.
        servers: for each batch, in input order, the URL of the server that embedded it.
        attempts: every request made (one per batch, more where a batch failed over).
        elapsed_s: seconds the whole call took.
    """

    embeddings: list[list[float]]
    model: str
    servers: tuple[str, ...] = ()
    attempts: tuple[Attempt, ...] = field(default_factory=tuple)
    elapsed_s: float = 0.0


def parse_embed(data: bytes, expected: int, server: str | None = None) -> list[list[float]]:
    """The ``embeddings`` of an /api/embed reply, checked: ``expected`` vectors of finite
    numbers, all of one length.

    Raises:
        ProtocolError: anything else.
    """
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError("/api/embed reply is not JSON", server=server) from exc
    vectors = obj.get("embeddings") if isinstance(obj, dict) else None
    if not isinstance(vectors, list) or len(vectors) != expected:
        got = len(vectors) if isinstance(vectors, list) else "no"
        raise ProtocolError(f"/api/embed reply has {got} embeddings for {expected} inputs", server=server)
    width = None
    for v in vectors:
        if not isinstance(v, list) or not all(type(x) in (float, int) and math.isfinite(x) for x in v):
            raise ProtocolError("/api/embed reply has a vector that is not a list of finite numbers", server=server)
        if width is None:
            width = len(v)
        elif len(v) != width:
            raise ProtocolError("/api/embed reply has vectors of different lengths", server=server)
    return [[float(x) for x in v] for v in vectors]


class EmbedPlan:
    """The sans-IO state of one embed call.

    Args:
        model: the model.
        inputs: the texts.
        candidates: servers in routing order.
        batch_size: inputs per request (``None``: ``DEFAULT_BATCH_SIZE``, or fewer so
            that every candidate gets work).
        request: extra body fields (truncate, dimensions, options, keep_alive).
        deadline_s: a total budget in seconds, or ``None``.
    """

    def __init__(
        self,
        model: str,
        inputs: Sequence[str],
        candidates: "Sequence[Candidate]",
        *,
        batch_size: int | None = None,
        request: Mapping[str, Any] | None = None,
        deadline_s: float | None = None,
    ) -> None:
        if batch_size is not None and (not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1):
            raise ConfigError(f"batch_size={batch_size!r}: pass a positive whole number of inputs per request")
        self.model = model
        self.inputs = list(inputs)
        self.candidates = list(candidates)
        n = len(self.inputs)
        # Default: about 8 batches per server (enough to balance servers of different
        # speeds), each of 16 to 256 inputs (few requests, each cheap to resend).
        per = math.ceil(n / (8 * max(1, len(self.candidates))))
        size = batch_size or max(1, min(n, max(MIN_BATCH_SIZE, min(DEFAULT_BATCH_SIZE, per))))
        self.batches: list[tuple[int, int]] = [(i, min(n, i + size)) for i in range(0, n, size)]
        self.request = {k: v for k, v in (request or {}).items() if v is not None}
        self._queue = list(range(len(self.batches)))
        self._results: dict[int, list[list[float]]] = {}
        self._served: dict[int, str] = {}
        self._failed: dict[int, set[str]] = {}  # batch -> servers it failed on
        self._dead: set[str] = set()  # servers that failed in this call: no more batches
        self.attempts: list[Attempt] = []
        self.fatal: AICortexError | None = None
        self.in_flight = 0  # batches taken and not yet back
        self._t0 = time.monotonic()
        self._deadline = None if deadline_s is None else self._t0 + deadline_s

    @property
    def done(self) -> bool:
        """Every batch has its vectors, or the call failed."""
        return self.fatal is not None or len(self._results) == len(self.batches)

    def body(self, batch: int) -> dict[str, Any]:
        """The /api/embed body of one batch."""
        start, end = self.batches[batch]
        return {"model": self.model, "input": self.inputs[start:end], **self.request}

    def take(self, server: str) -> int | None:
        """The next batch for ``server`` to embed, or ``None`` when it has nothing to do
        (queue empty, the server failed in this call, or the call is over)."""
        if self.fatal is not None or server in self._dead:
            return None
        if self._deadline is not None and time.monotonic() >= self._deadline:
            self.fatal = DeadlineExceeded("deadline exceeded while embedding", deadline_s=self._deadline - self._t0, attempts=self.attempts)
            return None
        for i, batch in enumerate(self._queue):
            if server not in self._failed.get(batch, ()):
                self.in_flight += 1
                return self._queue.pop(i)
        return None

    def should_wait(self, server: str) -> bool:
        """``server`` got no batch now but may later: batches are in flight elsewhere and
        one that fails comes back to the queue."""
        return self.fatal is None and server not in self._dead and self.in_flight > 0

    def succeeded(self, batch: int, server: str, vectors: list[list[float]], started: float, elapsed: float) -> Outcome:
        """A batch came back; returns the health outcome to record."""
        self.in_flight -= 1
        self._results[batch] = vectors
        self._served[batch] = server
        self.attempts.append(Attempt(server=server, number=len(self.attempts) + 1, started_at=started, elapsed_s=elapsed))
        return Outcome(server=server, model=model_key(self.model), kind="success", at=started + elapsed, started_at=started)

    def failed(self, batch: int, server: str, error: ServerError, started: float, elapsed: float) -> Outcome:
        """A batch failed on ``server``: it goes back for another server (the failover
        table decides the breaker; HTTP 400 ends the call, it is the caller's request).
        Returns the health outcome to record."""
        from ._session import failure_outcome

        self.in_flight -= 1
        self.attempts.append(Attempt(server=server, number=len(self.attempts) + 1, error=error, started_at=started, elapsed_s=elapsed))
        if isinstance(error, BadRequest):
            self.fatal = error
        else:
            self._dead.add(server)
            self._failed.setdefault(batch, set()).add(server)
            self._queue.insert(0, batch)
        return failure_outcome(server, model_key(self.model), error, started_at=started, at=started + elapsed)

    def abort(self, error: BaseException) -> None:
        """A worker stopped on something that is no server's failure: the call ends."""
        self.in_flight -= 1
        if self.fatal is None:
            self.fatal = error if isinstance(error, AICortexError) else ProtocolError(f"embedding failed: {error!r}")

    def finish(self) -> None:
        """Called when no worker can go on: the call failed if a batch has no vectors."""
        if self.fatal is None and len(self._results) < len(self.batches):
            reasons = "; ".join(f"{a.server}: {error_reason(a.error)}" for a in self.attempts if a.error) or "no server could take a batch"
            self.fatal = AllServersFailed(
                f"embedding with model {self.model!r}: {len(self.batches) - len(self._results)} of {len(self.batches)} "
                f"batches found no server: {reasons}",
                model=self.model,
                attempts=self.attempts,
            )

    def result(self) -> EmbedResult:
        """The :class:`EmbedResult`; raises the call's error if it failed."""
        self.finish()
        if self.fatal is not None:
            raise self.fatal
        vectors: list[list[float]] = []
        for i in range(len(self.batches)):
            vectors.extend(self._results[i])
        return EmbedResult(
            embeddings=vectors,
            model=self.model,
            servers=tuple(self._served[i] for i in range(len(self.batches))),
            attempts=tuple(self.attempts),
            elapsed_s=time.monotonic() - self._t0,
        )


def _read_timeout(timeouts: Any) -> float | None:
    value = timeouts.first_token_cold or timeouts.first_token
    return None if value is None else float(value)


def embed_sync(plan: EmbedPlan, transport: "Transport", fleet: "FleetView", timeouts: Any) -> EmbedResult:
    """Run ``plan`` with one thread per candidate server (the sync driver)."""
    import threading

    lock = threading.Condition()

    def worker(url: str) -> None:
        while True:
            with lock:
                batch = plan.take(url)
                while batch is None and plan.should_wait(url):
                    lock.wait()
                    batch = plan.take(url)
            if batch is None:
                return
            started, t0 = time.time(), time.monotonic()
            fleet.begin(url)
            try:
                data = transport.request_json(
                    url, "POST", "/api/embed", plan.body(batch), connect_timeout_s=timeouts.connect,
                    read_timeout_s=_read_timeout(timeouts), limit=MAX_EMBED_BYTES,
                )
                vectors = parse_embed(data, plan.batches[batch][1] - plan.batches[batch][0], url)
            except ServerError as exc:
                with lock:
                    outcome = plan.failed(batch, url, exc, started, time.monotonic() - t0)
                    lock.notify_all()
            except BaseException as exc:
                with lock:
                    plan.abort(exc)
                    lock.notify_all()
                return
            else:
                with lock:
                    outcome = plan.succeeded(batch, url, vectors, started, time.monotonic() - t0)
                    lock.notify_all()
            finally:
                fleet.end(url)
            fleet.record(outcome)

    threads = [threading.Thread(target=worker, args=(c.server.url,), name="aicortex-embed", daemon=True) for c in plan.candidates]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return plan.result()


async def embed_async(plan: EmbedPlan, transport: "AsyncTransport", fleet: "FleetView", timeouts: Any) -> EmbedResult:
    """Run ``plan`` with one task per candidate server (the async driver)."""
    import asyncio

    changed = asyncio.Condition()

    async def worker(url: str) -> None:
        while True:
            batch = plan.take(url)
            while batch is None and plan.should_wait(url):
                async with changed:
                    await changed.wait()
                batch = plan.take(url)
            if batch is None:
                return
            started, t0 = time.time(), time.monotonic()
            fleet.begin(url)
            try:
                data = await transport.request_json(
                    url, "POST", "/api/embed", plan.body(batch), connect_timeout_s=timeouts.connect,
                    read_timeout_s=_read_timeout(timeouts), limit=MAX_EMBED_BYTES,
                )
                vectors = parse_embed(data, plan.batches[batch][1] - plan.batches[batch][0], url)
            except ServerError as exc:
                outcome = plan.failed(batch, url, exc, started, time.monotonic() - t0)
            except BaseException as exc:
                plan.abort(exc)
                async with changed:
                    changed.notify_all()
                raise
            else:
                outcome = plan.succeeded(batch, url, vectors, started, time.monotonic() - t0)
            finally:
                fleet.end(url)
            fleet.record(outcome)
            async with changed:
                changed.notify_all()

    await asyncio.gather(*(worker(c.server.url) for c in plan.candidates))
    return plan.result()
