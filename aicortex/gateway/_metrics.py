"""Prometheus metrics of the gateway (prometheus-client), one registry per app.

Exposed at ``GET /metrics`` in Prometheus's text format:

- ``aicortex_gateway_requests_total{route, status}``: requests answered.
- ``aicortex_gateway_failovers_total{kind}``: ``continue`` (a reply continued on the next
  server), ``restart`` (restarted before any output reached the client), ``broken`` (a
  restart after output: the stream ended with an in-stream error).
- ``aicortex_gateway_ttft_seconds{server, model}``: time to first token, seconds, as the
  gateway saw it (failovers included).
- ``aicortex_gateway_tokens_per_second{server, model}``: client-measured tokens/s.
- ``aicortex_gateway_in_flight`` / ``aicortex_gateway_queued``: admitted and waiting requests.
- ``aicortex_server_breaker_state{server}``: 0 closed, 1 half-open, 2 open (read from the
  fleet view at scrape time); ``aicortex_server_in_flight{server}``.

Recording never raises into a reply: a failure is logged (``aicortex.gateway``) and counted
in :attr:`Metrics.errors`.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator

if TYPE_CHECKING:  # pragma: no cover
    from .._fleet import FleetView
    from ._limits import Limiter

__all__ = ["Metrics", "breaker_state"]

logger = logging.getLogger("aicortex.gateway")

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TPS_BUCKETS = (1, 5, 10, 20, 40, 80, 160, 320, 640, 1280)


def breaker_state(failures: int, open_until: float | None, now: float) -> int:
    """0 closed (no consecutive failures), 2 open (in its cooldown), 1 half-open (failed,
    cooldown over: the next request is a trial)."""
    if failures <= 0:
        return 0
    return 2 if open_until is not None and open_until > now else 1


class Metrics:
    """The gateway's metrics on their own :class:`prometheus_client.CollectorRegistry`."""

    def __init__(self, fleet: "FleetView", limiter: "Limiter") -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        self.errors = 0
        r = self.registry
        self.requests = Counter("aicortex_gateway_requests", "Requests answered", ["route", "status"], registry=r)
        self.failovers = Counter("aicortex_gateway_failovers", "Failovers by kind", ["kind"], registry=r)
        self.ttft = Histogram(
            "aicortex_gateway_ttft_seconds", "Time to first token (failovers included)", ["server", "model"],
            buckets=TTFT_BUCKETS, registry=r,
        )
        self.tps = Histogram(
            "aicortex_gateway_tokens_per_second", "Client-measured tokens/s", ["server", "model"],
            buckets=TPS_BUCKETS, registry=r,
        )
        in_flight = Gauge("aicortex_gateway_in_flight", "Requests admitted and not finished", registry=r)
        in_flight.set_function(lambda: limiter.active)
        queued = Gauge("aicortex_gateway_queued", "Requests waiting for a slot", registry=r)
        queued.set_function(lambda: limiter.queued)
        r.register(_FleetCollector(fleet))

    def safely(self, fn: Callable[[], Any]) -> None:
        """Run one recording; log and count a failure instead of raising."""
        try:
            fn()
        except Exception:  # pragma: no cover - prometheus-client does not fail here
            self.errors += 1
            logger.debug("metrics recording failed", exc_info=True)

    def request(self, route: str, status: int) -> None:
        """Count one answered request (``route``: a bounded path label; ``status``: HTTP)."""
        self.safely(lambda: self.requests.labels(route, str(status)).inc())

    def failover(self, kind: str) -> None:
        """Count one failover: ``retry``, ``continue``, ``restart`` or ``broken``."""
        self.safely(lambda: self.failovers.labels(kind).inc())

    def reply(self, server: str | None, model: str, ttft_s: float | None, tps: float | None) -> None:
        """Observe a completed reply's TTFT (seconds) and tokens/s under the server that
        finished it."""

        def record() -> None:
            if server is None:
                return
            if ttft_s is not None:
                self.ttft.labels(server, model).observe(ttft_s)
            if tps is not None:
                self.tps.labels(server, model).observe(tps)

        self.safely(record)

    def exposition(self) -> tuple[bytes, str]:
        """The text exposition and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _FleetCollector:
    """Breaker state and in-flight counts per server, read at scrape time."""

    def __init__(self, fleet: "FleetView") -> None:
        self.fleet = fleet

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        state = GaugeMetricFamily("aicortex_server_breaker_state", "Circuit breaker: 0 closed, 1 half-open, 2 open", labels=["server"])
        inflight = GaugeMetricFamily("aicortex_server_in_flight", "Requests of this gateway in flight per server", labels=["server"])
        now = time.time()
        for server in self.fleet.snapshot.servers:
            h = self.fleet.health(server.url)
            state.add_metric([server.url], breaker_state(h.failures, h.open_until, now))
            inflight.add_metric([server.url], self.fleet.inflight(server.url))
        yield state
        yield inflight
