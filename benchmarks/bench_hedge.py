#!/usr/bin/env python3
"""Benchmark 10, delayed hedged requests: TTFT percentiles and extra attempts, hedging off vs on.

Four loopback FakeOllama servers in this process, the model warm on all of them. Each
server answers from a queue of scripts in which 3 % wait ``SLOW_S`` (2 s) before their
first token and the rest ``FAST_S`` (20 ms), at random positions (seeded, the same
sequence for both runs), so any request (a hedge too) can meet a slow one, the way a
server with a long prompt ahead in its queue answers. Requests arrive at a fixed rate,
``RATE`` per second (open loop: a slow reply does not hold the next request back, so
both runs put the same load on the machine), as tasks on one ``AsyncClient`` or on a
thread pool sharing one ``Client``; the first ``WARMUP`` requests of each run fill the
per-(server, model) TTFT windows and are not counted.

TTFT is ``Reply.ttft_s`` (from sending the first attempt to the first token, the hedge
included). "Extra attempts" = attempts beyond one per request, as a share of requests.
Hedging uses the default ``HedgePolicy()`` (p95, floor 0.1 s, ceiling 2 s, budget 5 %,
burst 10).

    python benchmarks/bench_hedge.py [--quick] [--requests N]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import os
import random
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import emit, percentile  # noqa: E402

from aicortex import AsyncClient, Client, HedgePolicy, Registry, Timeouts  # noqa: E402
from aicortex.testing import FakeOllama, Script  # noqa: E402

MODEL = "m"
SERVERS = 4
SLOW_SHARE = 0.03
SLOW_S = 2.0
FAST_S = 0.02
RATE = 100.0  # requests per second
THREADS = 64
WARMUP = 100
TOKENS = tuple(f" t{i}" for i in range(8))
TIMEOUTS = Timeouts(connect=2.0, first_token=10.0, first_token_cold=10.0, stall=5.0)


def _scripts(n: int, seed: int) -> list[Script]:
    rng = random.Random(seed)
    fast, slow = Script(tokens=TOKENS, first_token_delay=FAST_S), Script(tokens=TOKENS, first_token_delay=SLOW_S)
    return [slow if rng.random() < SLOW_SHARE else fast for _ in range(n)]


def _fleet(n_requests: int) -> tuple[list[FakeOllama], Registry]:
    fakes = [FakeOllama(models=[MODEL], script=Script(tokens=TOKENS, first_token_delay=FAST_S)).start() for _ in range(SERVERS)]
    per_server = int(n_requests * 1.5 / SERVERS) + 50  # more than any server is asked for, hedges included
    for i, fake in enumerate(fakes):
        fake.push(*_scripts(per_server, seed=1000 + i))
    reg = Registry.memory()
    for i, fake in enumerate(fakes):
        reg.add(fake.url, name=f"s{i}")
    return fakes, reg


def _figures(replies: list[Any], seconds: float) -> dict[str, Any]:
    ttfts = [r.ttft_s for r in replies]
    extra = sum(len(r.attempts) - 1 for r in replies)
    return {
        "requests": len(replies),
        "p50_ms": percentile(ttfts, 50) * 1000,
        "p95_ms": percentile(ttfts, 95) * 1000,
        "p99_ms": percentile(ttfts, 99) * 1000,
        "max_ms": max(ttfts) * 1000,
        "extra_attempts": extra,
        "extra_pct": 100.0 * extra / len(replies),
        "hedges_won": sum(1 for r in replies if any(a.cancelled for a in r.attempts) and r.attempts[-1].hedge),
        "seconds": seconds,
    }


async def _run_async(reg: Registry, hedge: bool, n: int) -> dict[str, Any]:
    async with AsyncClient(reg, timeout=TIMEOUTS, hedge=hedge) as client:
        await client.refresh()

        async def one(i: int, at: float) -> Any:
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            return await client.chat(f"question {i}", model=MODEL)

        t0 = time.perf_counter()
        replies = await asyncio.gather(*(one(i, t0 + i / RATE) for i in range(WARMUP + n)))
        return _figures(list(replies)[WARMUP:], time.perf_counter() - t0)


def _run_sync(reg: Registry, hedge: bool, n: int) -> dict[str, Any]:
    with Client(reg, timeout=TIMEOUTS, hedge=hedge) as client:
        client.refresh()
        with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
            t0 = time.perf_counter()
            futures = []
            for i in range(WARMUP + n):
                time.sleep(max(0.0, t0 + i / RATE - time.perf_counter()))
                futures.append(pool.submit(client.chat, f"question {i}", model=MODEL))
            replies = [f.result() for f in futures]
        return _figures(replies[WARMUP:], time.perf_counter() - t0)


def measure(kind: str, hedge: bool, n: int) -> dict[str, Any]:
    fakes, reg = _fleet(n + WARMUP)
    try:
        if kind == "async":
            return asyncio.run(_run_async(reg, hedge, n))
        return _run_sync(reg, hedge, n)
    finally:
        reg.close()
        for f in fakes:
            f.stop()


COLUMNS = ["client", "hedging", "requests", "TTFT p50 ms", "TTFT p95 ms", "TTFT p99 ms", "TTFT max ms", "extra attempts", "hedges won", "wall s"]


def run(quick: bool = False, requests: int | None = None, kinds: tuple[str, ...] = ("async", "sync")) -> dict:
    """One run per client kind with hedging off, then on. ``quick``: 60 requests after 40
    warm-up ones and 0.5 s slow replies (a smoke test: too few TTFTs for the p95, so the
    hedge waits for the 2 s ceiling and the figures say little)."""
    global WARMUP, SLOW_S
    n = requests or (60 if quick else 1000)
    if quick:
        WARMUP, SLOW_S = 40, 0.5
    rows, display = [], []
    for kind in kinds:
        for hedge in (False, True):
            fig = measure(kind, hedge, n)
            rows.append({"client": kind, "hedge": hedge, **fig})
            display.append([
                "AsyncClient" if kind == "async" else "Client (threads)", "on" if hedge else "off", f"{fig['requests']:,}",
                f"{fig['p50_ms']:.1f}", f"{fig['p95_ms']:.1f}", f"{fig['p99_ms']:.1f}", f"{fig['max_ms']:.1f}",
                f"{fig['extra_attempts']} ({fig['extra_pct']:.1f} %)", str(fig["hedges_won"]), f"{fig['seconds']:.1f}",
            ])
    targets: dict[str, Any] = {}
    for kind in kinds:
        off = next(r for r in rows if r["client"] == kind and not r["hedge"])
        on = next(r for r in rows if r["client"] == kind and r["hedge"])
        targets[f"{kind}_p99_ratio"] = off["p99_ms"] / on["p99_ms"]
        targets[f"{kind}_met"] = (
            off["p99_ms"] >= 4 * on["p99_ms"] and on["extra_pct"] <= 8.0 and on["p50_ms"] <= off["p50_ms"] * 1.25
        )
    notes = [
        f"{SERVERS} loopback FakeOllama servers, model warm; {SLOW_SHARE:.0%} of replies wait {SLOW_S:g} s before the "
        f"first token, the rest {FAST_S * 1000:g} ms; {RATE:g} requests/s arriving at a fixed rate; {WARMUP} warm-up "
        "requests per run not counted.",
        "Hedging: HedgePolicy() defaults: hedge after the (server, model) p95 TTFT of the last 200 replies, "
        "clamped to [0.1 s, 2 s], to the next warm server with its breaker closed; token bucket 5 %/request, burst 10.",
        "Target: p99 TTFT at least 4x lower with <= 8 % extra attempts, p50 unchanged: "
        + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in targets.items() if k.endswith("_met")),
    ]
    return {
        "name": "hedge",
        "title": "Benchmark 10: delayed hedged requests (TTFT with 3 % slow first tokens)",
        "columns": COLUMNS,
        "rows": rows,
        "display_rows": display,
        "notes": notes,
        "targets": targets,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--requests", type=int)
    ap.add_argument("--only", choices=["async", "sync"])
    a = ap.parse_args(argv)
    emit(run(quick=a.quick, requests=a.requests, kinds=(a.only,) if a.only else ("async", "sync")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
