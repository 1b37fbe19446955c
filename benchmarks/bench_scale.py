#!/usr/bin/env python3
"""Benchmark 9, fleet scale: routing over 1,000 servers x 50 models, on SQLite and PostgreSQL.

The registry holds 1,000 servers that each list the same 50 models (50,000 model rows;
every model has 1,000 candidate servers, the worst case for routing), with health
records on a third of them (EWMA TTFT, a few open circuit breakers). For each store:

* **fill**: SQLite, ``record_refresh`` of every server; PostgreSQL, ``registry copy``
  from that SQLite file (``copy_registry``), seconds;
* **reload**: one ``Snapshot`` read (what the fleet view does when the store changed),
  median of 5, ms: after a registry change (a server added or refreshed), and after a
  health change only (PostgreSQL then reuses the servers and model entries it read);
* **route**: ``FleetView.route(model)`` (choosing the ordered candidates from the
  in-memory view, no I/O), over all 50 models in turn, after one warm-up round: p50 and
  p99 in microseconds. Target: p99 <= 1 ms. With PostgreSQL the view also adds the
  in-flight leases of another process (1,000 servers with requests in flight elsewhere);
* **busy route**: the same while the view changes under it as it does in service:
  before each route the previous request's first server goes in flight, gets a success
  outcome (new EWMA TTFT) and ends, so every route re-sorts a touched server.

PostgreSQL is a throwaway server started by ``scripts/pgserver.py`` (its row says
"skipped" when PostgreSQL's programs are not installed).

    python benchmarks/bench_scale.py [--quick] [--servers 1000] [--models 50] [--routes 5000]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from _common import emit, median, percentile  # noqa: E402

TARGET_ROUTE_P99_MS = 1.0


def _fill_sqlite(path: Path, servers: int, models: int) -> float:
    from aicortex import ModelEntry, Registry
    from aicortex._health import Health

    t0 = time.perf_counter()
    names = [f"model{i}:latest" for i in range(models)]
    entries = [ModelEntry(n, digest=f"d{i}", size=1_000_000_000 + i) for i, n in enumerate(names)]
    rng = random.Random(1)
    with Registry(path, seed=False) as reg:
        for s in range(servers):
            url = f"http://10.{s // 250}.{s % 250}.1:11434"
            reg.add(url, name=f"gpu{s}", priority=s % 3)
            reg.record_refresh(url, version="0.12.6", models=entries, loaded=names[: s % 5])
        now = time.time()
        for s in range(0, servers, 3):
            url = f"http://10.{s // 250}.{s % 250}.1:11434"
            for m in names[:10]:
                ttft = rng.uniform(0.05, 2.0)
                reg.update_health(url, m, lambda h, t=ttft: Health(successes=5, ewma_ttft_s=t, ewma_tps=40.0))
            if s % 30 == 0:  # an open breaker now and then
                reg.update_health(url, "", lambda h: Health(failures=1, open_until=now + 300, total_failures=1))
    return time.perf_counter() - t0


def _measure(location: str, models: int, routes: int, leases: bool) -> dict[str, Any]:
    from aicortex import Registry
    from aicortex._fleet import FleetView

    from aicortex._health import Health

    reg = Registry(location, seed=False)
    url0 = reg.servers()[0].url
    reloads, health_reloads = [], []
    for i in range(5):
        reg.record_error(url0, f"error {i}")  # a registry change: servers, models, health read again
        t0 = time.perf_counter()
        reg.snapshot()
        reloads.append((time.perf_counter() - t0) * 1000)
    for i in range(5):
        reg.update_health(url0, "model0", lambda h, i=i: Health(successes=i))  # a health change only
        t0 = time.perf_counter()
        reg.snapshot()
        health_reloads.append((time.perf_counter() - t0) * 1000)
    if leases:  # another process has requests in flight on every server
        reg.sync_inflight("other", {s.url: 1 + i % 4 for i, s in enumerate(reg.servers())})  # type: ignore[attr-defined]
    view = FleetView(reg, reload_s=3600)
    if leases:
        view.sync()
    names = [f"model{i}" for i in range(models)]
    rng = random.Random(0)
    candidates = 0
    for name in names:  # warm-up: the view's Candidate cache
        candidates = len(view.route(name, now=time.time(), rng=rng).candidates)
    times = []
    for i in range(routes):
        name = names[i % models]
        t0 = time.perf_counter()
        view.route(name, now=time.time(), rng=rng)
        times.append((time.perf_counter() - t0) * 1e6)
    from aicortex._health import Outcome

    busy = []
    for i in range(routes):
        name = names[i % models]
        t0 = time.perf_counter()
        route = view.route(name, now=time.time(), rng=rng)
        busy.append((time.perf_counter() - t0) * 1e6)
        url = route.candidates[0].server.url
        view.begin(url)
        view.record(Outcome(server=url, model=f"{name}:latest", kind="success", at=time.time(), ttft_s=rng.uniform(0.05, 2.0)))
        view.end(url)
    view._pending.clear()  # not measured: the write-behind of these outcomes
    remote = sum(view.inflight_elsewhere(s.url) for s in view.snapshot.servers)
    view.close()
    reg.close()
    return {
        "reload_ms": median(reloads),
        "health_reload_ms": median(health_reloads),
        "route_p50_us": percentile(times, 50),
        "route_p99_us": percentile(times, 99),
        "busy_p50_us": percentile(busy, 50),
        "busy_p99_us": percentile(busy, 99),
        "candidates": candidates,
        "inflight_elsewhere": remote,
    }


def run(quick: bool = False, servers: int | None = None, models: int | None = None, routes: int | None = None) -> dict[str, Any]:
    servers = servers or (100 if quick else 1000)
    models = models or (10 if quick else 50)
    routes = routes or (500 if quick else 5000)
    rows: list[list[Any]] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="aicortex-scale-") as tmp:
        path = Path(tmp) / "scale.db"
        fill = _fill_sqlite(path, servers, models)
        m = _measure(str(path), models, routes, leases=False)
        rows.append(["SQLite", servers, models, fill, m["reload_ms"], m["health_reload_ms"], m["route_p50_us"], m["route_p99_us"],
                     m["busy_p50_us"], m["busy_p99_us"], m["candidates"]])
        try:
            from pgserver import PgServer, PgUnavailable
        except ImportError as exc:  # pragma: no cover
            notes.append(f"PostgreSQL skipped: {exc}")
        else:
            try:
                pg = PgServer().start()
            except PgUnavailable as exc:
                notes.append(f"PostgreSQL skipped: {exc.reason}")
            else:
                old_password = os.environ.get("PGPASSWORD")
                try:
                    pg.export_password()
                    url = pg.create_database("scale")
                    from aicortex import Registry
                    from aicortex._registry import copy_registry

                    t0 = time.perf_counter()
                    with Registry(str(path), create=False, seed=False) as src, Registry(url, seed=False) as dst:
                        copy_registry(src, dst)
                    fill_pg = time.perf_counter() - t0
                    m = _measure(url, models, routes, leases=True)
                    rows.append(["PostgreSQL (+ leases of another process)", servers, models, fill_pg, m["reload_ms"], m["health_reload_ms"],
                                 m["route_p50_us"], m["route_p99_us"], m["busy_p50_us"], m["busy_p99_us"], m["candidates"]])
                    notes.append(f"PostgreSQL: {m['inflight_elsewhere']} requests in flight elsewhere, read from leases, "
                                 "added to this process's counts when routing")
                finally:
                    pg.cleanup()
                    if old_password is None:
                        os.environ.pop("PGPASSWORD", None)
                    else:
                        os.environ["PGPASSWORD"] = old_password
    p99 = max(max(r[7], r[9]) for r in rows) / 1000
    notes.append(f"{routes} routes per store over {models} models in turn; every model has {servers} candidate servers; "
                 "fill = record_refresh of every server (SQLite), copy_registry from the SQLite file (PostgreSQL)")
    notes.append(f"target: route p99 <= {TARGET_ROUTE_P99_MS} ms: {'met' if p99 <= TARGET_ROUTE_P99_MS else 'MISSED'} (worst {p99:.3f} ms)")
    return {
        "name": "scale",
        "title": f"9. Fleet scale: {servers:,} servers x {models} models, routing from the in-memory view",
        "columns": ["store", "servers", "models", "fill s", "reload ms", "health-only reload ms", "route p50 us", "route p99 us",
                    "busy route p50 us", "busy route p99 us", "candidates"],
        "rows": rows,
        "notes": notes,
        "targets": {"route_p99_ms": p99, "route_p99_met": p99 <= TARGET_ROUTE_P99_MS},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--servers", type=int)
    ap.add_argument("--models", type=int)
    ap.add_argument("--routes", type=int)
    a = ap.parse_args(argv)
    emit(run(quick=a.quick, servers=a.servers, models=a.models, routes=a.routes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
