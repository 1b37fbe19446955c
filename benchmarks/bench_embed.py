#!/usr/bin/env python3
"""Benchmark 8, embeddings at fleet speed: one input list over 1 and 3 servers.

3 FakeOllama servers in a separate process on 127.0.0.1, each embedding at a fixed rate
(``embed_delay`` seconds per input, one request at a time, as Ollama runs an embedding
model). The same 10,000 inputs are embedded (a) by the official ``ollama`` client on one
server (one request), (b) by aicortex pinned to one server (``servers=[url]``, batches of
64), and (c) by aicortex over the fleet (batches spread over the 3 servers, sync and
async). Target: (c) at least 2.5x the throughput of one server.

    python benchmarks/bench_embed.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import PY, ServerProcess, emit  # noqa: E402

MODEL = "embed"


def _measure(fn) -> tuple[float, list[list[float]]]:
    t0 = time.perf_counter()
    vectors = fn()
    return time.perf_counter() - t0, vectors


def run(quick: bool = False, inputs: int | None = None, delay: float = 0.0003) -> dict:
    from aicortex import AsyncClient, Client, Registry

    n = inputs or (300 if quick else 10_000)
    texts = [f"document {i}: the quick brown fox jumps over the lazy dog" for i in range(n)]
    here = os.path.dirname(os.path.abspath(__file__))
    cmd = [PY, os.path.join(here, "fakefleet.py"), "--servers", "1", "--model", MODEL, "--embed-delay", str(delay)]
    rows = []
    # One process per server, as three machines would be (the fake's JSON work stays off
    # the other servers' GIL).
    with ServerProcess(cmd) as p0, ServerProcess(cmd) as p1, ServerProcess(cmd) as p2:
        urls = [json.loads(p.ready)[0] for p in (p0, p1, p2)]
        reg = Registry.memory()
        for i, url in enumerate(urls):
            reg.add(url, name=f"s{i}")
        with Client(reg) as client:
            client.refresh()

            import ollama

            with ollama.Client(host=urls[0]) as official:
                t_official, v_official = _measure(lambda: official.embed(model=MODEL, input=texts)["embeddings"])
            t_one, v_one = _measure(lambda: client.embed(texts, model=MODEL, servers=[urls[0]]).embeddings)
            t_fleet, v_fleet = _measure(lambda: client.embed(texts, model=MODEL).embeddings)
            last = client.embed(texts, model=MODEL)

            async def fleet_async() -> list[list[float]]:
                async with AsyncClient(reg) as ac:
                    return (await ac.embed(texts, model=MODEL)).embeddings

            t_async, v_async = _measure(lambda: asyncio.run(fleet_async()))
        reg.close()
    same = all(v == v_official for v in (v_one, v_fleet, v_async))
    spread = {u: last.servers.count(u) for u in urls}
    for label, servers, t in (
        ("(a) official ollama client, one server, one request", 1, t_official),
        ("(b) aicortex embed(), pinned to one server", 1, t_one),
        ("(c) aicortex Client.embed(), the fleet", 3, t_fleet),
        ("(c) aicortex AsyncClient.embed(), the fleet", 3, t_async),
    ):
        rows.append([label, servers, n, round(t, 3), round(n / t), round(t_official / t, 2)])
    speedup = t_official / min(t_fleet, t_async)
    sync_speedup = t_official / t_fleet
    return {
        "name": "embed",
        "title": "8. Embeddings at fleet speed (10,000 inputs, 3 servers at a fixed rate)",
        "columns": ["consumer", "servers", "inputs", "seconds", "inputs/s", "x one server"],
        "rows": rows,
        "notes": [
            f"Each server (its own process on 127.0.0.1) embeds one input per {delay * 1000:g} ms, one request at a time: one server's ceiling is {1 / delay:,.0f} inputs/s.",
            f"Target, the fleet >= 2.5x one server: sync {sync_speedup:.2f}x, async {t_official / t_async:.2f}x -> {'MET' if sync_speedup >= 2.5 else 'MISSED'}.",
            f"Vectors identical to the official client's, in input order: {same}.",
            f"Batches per server (sync, default batches): {list(spread.values())}.",
        ],
        "targets": {"speedup_sync": sync_speedup, "speedup_async": t_official / t_async, "met": sync_speedup >= 2.5 and same},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    emit(run(quick=a.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
