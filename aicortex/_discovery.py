"""Fleet discovery: probe servers (Ollama /api/version, /api/tags, /api/ps) into the registry.

Probes run concurrently in a bounded thread pool (they only wait on the network); the
results are written to the registry from the calling thread. A server that fails is
marked ``down`` with its error and keeps its model list: it is never deleted. A probe
also drives the server-level circuit breaker: a failure trips it, a success closes it.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

from ._exceptions import HTTPStatusError, ServerError
from ._health import after_probe
from ._models import ModelEntry
from ._protocol import parse_ps, parse_tags, parse_version

if TYPE_CHECKING:  # pragma: no cover
    from ._registry import Registry
    from ._transport import Transport

__all__ = ["ProbeResult", "RefreshReport", "probe", "refresh_registry"]


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


def probe(transport: "Transport", url: str, *, connect_timeout_s: float | None, read_timeout_s: float | None) -> ProbeResult:
    """Probe one server: GET /api/version, /api/tags, then /api/ps. Never raises."""
    kw = {"connect_timeout_s": connect_timeout_s, "read_timeout_s": read_timeout_s}
    try:
        t0 = time.perf_counter()
        version = parse_version(transport.get(url, "/api/version", **kw), server=url)
        latency = time.perf_counter() - t0
        models = parse_tags(transport.get(url, "/api/tags", **kw), server=url)
    except ServerError as exc:
        return ProbeResult(url=url, ok=False, error=exc.reason)
    try:
        loaded = parse_ps(transport.get(url, "/api/ps", **kw), server=url)
    except HTTPStatusError:
        loaded = []  # an old server or a proxy without /api/ps: no warm-model data
    except ServerError as exc:
        return ProbeResult(url=url, ok=False, error=f"/api/ps: {exc.reason}")
    return ProbeResult(url=url, ok=True, version=version, models=tuple(models), loaded=tuple(loaded), latency_s=latency)


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
                registry.record_refresh(
                    r.url, version=r.version, models=r.models, loaded=r.loaded, latency_s=r.latency_s, error=r.error
                )
                now = time.time()
                registry.update_health(r.url, "", lambda h: after_probe(h, now, r.error))
                results.append(r)
                if on_result is not None:
                    on_result(r)
    order = {url: i for i, url in enumerate(urls)}
    results.sort(key=lambda r: order[r.url])
    return RefreshReport(results=tuple(results), elapsed_s=time.perf_counter() - t0)
