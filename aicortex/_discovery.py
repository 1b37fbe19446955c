"""Fleet discovery: probe servers (Ollama /api/version, /api/tags, /api/ps) into the registry.

The sync client probes concurrently in a bounded thread pool (they only wait on the
network); the async client with asyncio tasks, at most ``max_workers`` at once. The
results are written to the registry by one function, :func:`store_result` (the async
client calls it from a worker thread, off the event loop). A server that fails is
marked ``down`` with its error and keeps its model list: it is never deleted. A probe
also drives the server-level circuit breaker: a failure trips it, a success closes it.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable, Generator, Sequence

from ._exceptions import HTTPStatusError, ServerError
from ._health import after_probe
from ._models import ModelEntry
from ._protocol import parse_ps, parse_tags, parse_version

if TYPE_CHECKING:  # pragma: no cover
    from ._aio import AsyncTransport
    from ._registry import Registry
    from ._transport import Transport

__all__ = ["ProbeResult", "RefreshReport", "probe", "aprobe", "store_result", "refresh_registry", "arefresh_registry"]


@dataclass(frozen=True)
class ProbeResult:
    """What one server answered.

    Fields:
        url: the server.
        ok: all required probes succeeded (/api/version and /api/tags).
        version: from /api/version.
        models: from /api/tags.
        loaded: model names from /api/ps (empty when /api/ps answers an HTTP error, as
            an old server or a proxy may; a connection failure there marks the server down).
        latency_s: seconds the /api/version round trip took.
        error: why the server is down, or ``None``.
    """

    url: str
    ok: bool
    version: str | None = None
    models: tuple[ModelEntry, ...] = ()
    loaded: tuple[str, ...] = ()
    latency_s: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class RefreshReport:
    """The outcome of one refresh: one :class:`ProbeResult` per server probed.

    ``up``/``down`` count servers; ``models`` is the sorted distinct model names found.
    """

    results: tuple[ProbeResult, ...] = field(default_factory=tuple)
    elapsed_s: float = 0.0

    @property
    def up(self) -> int:
        return sum(r.ok for r in self.results)

    @property
    def down(self) -> int:
        return sum(not r.ok for r in self.results)

    @property
    def models(self) -> list[str]:
        return sorted({m.name for r in self.results for m in r.models})


def _probe_steps() -> Generator[str, bytes | ServerError, ProbeResult]:
    """The probe of one server as a flow: yields the paths to GET (``/api/version``,
    ``/api/tags``, ``/api/ps``) and receives each reply's bytes or its ``ServerError``;
    returns the :class:`ProbeResult` (``url`` is filled in by the driver)."""
    t0 = time.perf_counter()
    try:
        reply = yield "/api/version"
        if isinstance(reply, ServerError):
            raise reply
        version = parse_version(reply)
        latency = time.perf_counter() - t0
        reply = yield "/api/tags"
        if isinstance(reply, ServerError):
            raise reply
        models = parse_tags(reply)
    except ServerError as exc:
        return ProbeResult(url="", ok=False, error=exc.reason)
    reply = yield "/api/ps"
    loaded: list[str] = []
    if isinstance(reply, HTTPStatusError):
        pass  # an old server or a proxy without /api/ps: no warm-model data
    elif isinstance(reply, ServerError):
        return ProbeResult(url="", ok=False, error=f"/api/ps: {reply.reason}")
    else:
        try:
            loaded = parse_ps(reply)
        except ServerError as exc:
            return ProbeResult(url="", ok=False, error=f"/api/ps: {exc.reason}")
    return ProbeResult(url="", ok=True, version=version, models=tuple(models), loaded=tuple(loaded), latency_s=latency)


def probe(transport: "Transport", url: str, *, connect_timeout_s: float | None, read_timeout_s: float | None) -> ProbeResult:
    """Probe one server: GET /api/version, /api/tags, then /api/ps. Never raises."""
    steps = _probe_steps()
    reply: bytes | ServerError | None = None
    try:
        while True:
            path = steps.send(reply)  # type: ignore[arg-type]
            try:
                reply = transport.get(url, path, connect_timeout_s=connect_timeout_s, read_timeout_s=read_timeout_s)
            except ServerError as exc:
                reply = exc
    except StopIteration as stop:
        result: ProbeResult = stop.value
        return replace(result, url=url)


async def aprobe(transport: "AsyncTransport", url: str, *, connect_timeout_s: float | None, read_timeout_s: float | None) -> ProbeResult:
    """:func:`probe` with asyncio."""
    steps = _probe_steps()
    reply: bytes | ServerError | None = None
    try:
        while True:
            path = steps.send(reply)  # type: ignore[arg-type]
            try:
                reply = await transport.request_json(url, "GET", path, connect_timeout_s=connect_timeout_s, read_timeout_s=read_timeout_s)
            except ServerError as exc:
                reply = exc
    except StopIteration as stop:
        result: ProbeResult = stop.value
        return replace(result, url=url)


def store_result(registry: "Registry", r: ProbeResult) -> None:
    """Store one probe result and drive the server-level breaker (a failure trips it, a
    success closes it)."""
    registry.record_refresh(
        r.url, version=r.version, models=r.models, loaded=r.loaded, latency_s=r.latency_s, error=r.error
    )
    now = time.time()
    registry.update_health(r.url, "", lambda h: after_probe(h, now, r.error))


async def arefresh_registry(
    registry: "Registry",
    transport: "AsyncTransport",
    urls: Sequence[str],
    *,
    connect_timeout_s: float | None,
    read_timeout_s: float | None,
    max_workers: int = 16,
    on_result: Callable[[ProbeResult], None] | None = None,
) -> RefreshReport:
    """:func:`refresh_registry` with asyncio: at most ``max_workers`` probes at once; each
    result is stored from a worker thread as it arrives."""
    import asyncio

    t0 = time.perf_counter()
    gate = asyncio.Semaphore(max(1, max_workers))

    async def one(url: str) -> ProbeResult:
        async with gate:
            r = await aprobe(transport, url, connect_timeout_s=connect_timeout_s, read_timeout_s=read_timeout_s)
        await asyncio.to_thread(store_result, registry, r)
        if on_result is not None:
            on_result(r)
        return r

    results = await asyncio.gather(*(one(u) for u in urls))
    return RefreshReport(results=tuple(results), elapsed_s=time.perf_counter() - t0)


def refresh_registry(
    registry: "Registry",
    transport: "Transport",
    urls: Sequence[str],
    *,
    connect_timeout_s: float | None,
    read_timeout_s: float | None,
    max_workers: int = 16,
    on_result: Callable[[ProbeResult], None] | None = None,
) -> RefreshReport:
    """Probe ``urls`` concurrently (at most ``max_workers`` at once) and store the results.

    ``on_result`` is called in the calling thread as each server's result is stored
    (e.g. to advance a progress bar). Blackholed servers cost one timeout each, in
    parallel, so 50 servers with 10 blackholed take about one timeout, not ten.
    """
    t0 = time.perf_counter()
    results: list[ProbeResult] = []
    if urls:
        workers = max(1, min(max_workers, len(urls)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="aicortex-probe") as pool:
            futures = {
                pool.submit(probe, transport, url, connect_timeout_s=connect_timeout_s, read_timeout_s=read_timeout_s): i
                for i, url in enumerate(urls)
            }
            for fut in as_completed(futures):
                r = fut.result()
                store_result(registry, r)
                results.append(r)
                if on_result is not None:
                    on_result(r)
    order = {url: i for i, url in enumerate(urls)}
    results.sort(key=lambda r: order[r.url])
    return RefreshReport(results=tuple(results), elapsed_s=time.perf_counter() - t0)
