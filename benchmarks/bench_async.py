#!/usr/bin/env python3
"""Benchmark 6, async concurrency: many streams at once on one asyncio event loop.

N loopback servers (default 4) run in ONE separate process (``bench_async.py serve``, an
asyncio server on 127.0.0.1): each ``POST /api/chat`` gets a chunked reply of T tokens
(default 50) plus the ``done`` chunk, one NDJSON line per HTTP chunk and one socket
write per chunk, a token every ``token_delay`` (default 10 ms), as Ollama flushes them.
``/api/version``, ``/api/tags``, ``/api/ps`` answer like Ollama (``fastserver.py``'s
answers), so aicortex can refresh and route.

Each consumer runs in its own fresh subprocess, on one event loop, and starts S streams
(default 1,000) together with ``asyncio.gather``:

(a) ``aiohttp``: the floor: one ``aiohttp.ClientSession``, ``async for line in
    resp.content`` + ``json.loads``, round-robin over the servers;
(b) ``ollama``: the official ``ollama.AsyncClient``, one per server, round-robin;
(c) ``httpx``: raw ``httpx.AsyncClient`` (its default httpcore/anyio transport),
    ``aiter_lines`` + ``json.loads``, round-robin;
(d) ``httpx_aiohttp``: the same loop on ``httpx_aiohttp.HttpxAiohttpClient`` (httpx API,
    aiohttp transport), round-robin;
(e) ``aicortex``: one shared ``aicortex.AsyncClient``, routed (skipped with a note when
    ``aicortex.AsyncClient`` does not exist yet).

Every pool is sized to S connections, so no consumer queues on its pool. Measured per
consumer: errors (exceptions or incomplete replies; must be 0), chunks/s (all tokens /
wall time from the start of the gather to its end), CPU us per chunk of the consumer's
process (``time.process_time()`` over the run / tokens), TTFT p50/p99 (request start ->
first content token, per stream), event-loop lag p99 (a heartbeat task sleeping 10 ms in
a loop; lag = how late each wake-up is), and the split of the streams over the servers.

    python benchmarks/bench_async.py [--quick] [--streams S] [--servers N] [--tokens T]
                                     [--token-delay SECONDS] [--rounds R] [--only a,b]

Targets: aicortex chunks/s >= 2x ``ollama.AsyncClient``; aicortex CPU/chunk <= 1.5x the
aiohttp floor; aicortex loop-lag p99 <= 20 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import socket
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import PY, ServerProcess, emit, percentile, run_json  # noqa: E402

MODEL = "bench"
MESSAGES = [{"role": "user", "content": "hi"}]
CONSUMERS = ("aiohttp", "ollama", "httpx", "httpx_aiohttp", "aicortex")
LABELS = {
    "aiohttp": "(a) aiohttp + json.loads (floor)",
    "ollama": "(b) official ollama.AsyncClient",
    "httpx": "(c) raw httpx.AsyncClient NDJSON loop",
    "httpx_aiohttp": "(d) httpx over aiohttp (httpx_aiohttp) NDJSON loop",
    "aicortex": "(e) aicortex AsyncClient",
}
HEARTBEAT_S = 0.010
DEFAULT_TOKEN_DELAY = 0.160  # paced phase: 6.25 tokens/s per reply, 6,250 chunks/s at 1,000 streams
DEFAULT_RAMP = 4.0           # paced phase: the 1,000 requests start evenly over 4 s
DEFAULT_LOAD_TOKEN_DELAY = 0.010  # load phase: 100 tokens/s per reply, more than any consumer takes
TARGET_VS_OLLAMA = 2.0     # aicortex chunks/s >= 2x ollama.AsyncClient
TARGET_CPU_VS_FLOOR = 1.5  # aicortex CPU/chunk <= 1.5x the aiohttp floor
TARGET_LAG_P99_MS = 20.0   # aicortex event-loop lag p99


def aicortex_async_missing() -> str | None:
    """Why the aicortex consumer cannot run here (``None`` when ``aicortex.AsyncClient`` exists)."""
    try:
        import aicortex
    except Exception as exc:  # pragma: no cover - the repository is importable in every run
        return f"aicortex does not import: {type(exc).__name__}: {exc}"
    if not hasattr(aicortex, "AsyncClient"):
        return "aicortex.AsyncClient does not exist in this checkout"
    return None


def _raise_nofile() -> None:
    """1,000 sockets at once: lift the soft open-files limit to the hard one."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or hard > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65536, hard))
    except (ImportError, ValueError, OSError):
        pass


# -- the server (a child process) ----------------------------------------------------------------
def serve(servers: int, tokens: int, token_delay: float) -> None:
    """N HTTP/1.1 listeners on 127.0.0.1 in this process; prints ``READY [urls]``; runs until
    stdin closes. One ticker writes the next chunk of every reply in flight each
    ``token_delay`` (a socket write per chunk), so the server's cost is small and flat."""
    from fastserver import chat_lines, static_responses, NOT_FOUND

    _raise_nofile()
    lines = chat_lines(tokens)
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
            b"Date: Fri, 21 Nov 2025 23:59:00 GMT\r\nTransfer-Encoding: chunked\r\n\r\n")
    pieces = [b"%x\r\n%s\r\n" % (len(line), line) for line in lines]
    pieces[-1] += b"0\r\n\r\n"
    pieces[0] = head + pieces[0]
    static = static_responses()
    # Each reply has its own pace: piece k is written k * token_delay after the request
    # arrived (a ticker with RES-second resolution), so replies started at different times
    # do not all send at the same instant.
    res = min(0.001, token_delay / 10) if token_delay > 0 else 0.001
    step = max(1, round(token_delay / res))
    due: dict[int, list] = collections.defaultdict(list)  # tick -> [(protocol, index of the next piece)]
    counts: collections.Counter = collections.Counter()
    state = {"tick": 0}

    class Conn(asyncio.Protocol):
        def __init__(self, port: int) -> None:
            self.port = port
            self.buf = b""
            self.tr: asyncio.Transport | None = None

        def connection_made(self, transport) -> None:  # type: ignore[override]
            self.tr = transport
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def connection_lost(self, exc) -> None:  # type: ignore[override]
            self.tr = None

        def data_received(self, data: bytes) -> None:
            self.buf += data
            while b"\r\n\r\n" in self.buf:
                head_, _, rest = self.buf.partition(b"\r\n\r\n")
                hl = head_.split(b"\r\n")
                method, target = hl[0].decode("latin-1").split(" ")[:2]
                length = 0
                for h in hl[1:]:
                    name, _, value = h.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                if len(rest) < length:
                    return
                self.buf = rest[length:]
                path = target.split("?", 1)[0]
                if method == "POST" and path == "/api/chat":
                    counts[self.port] += 1
                    self.tr.write(pieces[0])  # headers + first token at once
                    if len(pieces) > 1:
                        if token_delay > 0:
                            due[state["tick"] + step].append((self, 1))
                        else:
                            self.tr.write(b"".join(pieces[1:]))
                else:
                    self.tr.write(static.get((method, path), NOT_FOUND))

    async def ticker() -> None:
        loop = asyncio.get_running_loop()
        state["tick"] = int(loop.time() / res)
        while True:
            await asyncio.sleep(res)
            now = int(loop.time() / res)
            while state["tick"] < now:
                state["tick"] += 1
                t = state["tick"]
                for proto, i in due.pop(t, ()):
                    if proto.tr is None:
                        continue
                    proto.tr.write(pieces[i])
                    if i + 1 < len(pieces):
                        due[t + step].append((proto, i + 1))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        srvs, urls = [], []
        for _ in range(servers):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            srv = await loop.create_server(lambda p=port: Conn(p), sock=sock, backlog=4096)
            srvs.append(srv)
            urls.append(f"http://127.0.0.1:{port}")
        tick = asyncio.ensure_future(ticker())
        print("READY " + json.dumps(urls), flush=True)
        await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes the pipe
        tick.cancel()
        for srv in srvs:
            srv.close()
        print(json.dumps({str(p): n for p, n in counts.items()}), file=sys.stderr, flush=True)

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass


# -- the consumers (each in its own child process) -----------------------------------------------
async def _setup(consumer: str, urls: list[str], streams: int):
    """Imports, clients, registry refresh (not timed). Returns ``(one(i, rec), aclose(), info)``."""
    body = {"model": MODEL, "messages": MESSAGES, "stream": True}
    info: dict[str, Any] = {}
    n = len(urls)

    def _check(obj: dict, rec: dict, t0: float) -> bool:
        if "error" in obj:
            raise RuntimeError(obj["error"])
        if obj["message"]["content"]:
            if rec["ttft_s"] is None:
                rec["ttft_s"] = time.perf_counter() - t0
            rec["tokens"] += 1
        return bool(obj.get("done"))

    if consumer == "aiohttp":
        import aiohttp

        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=streams, limit_per_host=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=60),
        )

        async def one(i: int, rec: dict) -> None:
            url = urls[i % n]
            t0 = time.perf_counter()
            async with session.post(url + "/api/chat", json=body) as r:
                r.raise_for_status()
                async for line in r.content:
                    if line.strip() and _check(json.loads(line), rec, t0):
                        rec["done"] = True
                        break
            rec["server"] = url

        return one, session.close, info
    if consumer in ("httpx", "httpx_aiohttp"):
        import httpx

        kw = dict(timeout=httpx.Timeout(60.0, connect=30.0), limits=httpx.Limits(max_connections=streams, max_keepalive_connections=streams))
        if consumer == "httpx":
            client = httpx.AsyncClient(**kw)
        else:
            from httpx_aiohttp import HttpxAiohttpClient

            client = HttpxAiohttpClient(**kw)

        async def one(i: int, rec: dict) -> None:
            url = urls[i % n]
            t0 = time.perf_counter()
            async with client.stream("POST", url + "/api/chat", json=body) as r:
                r.raise_for_status()
                async for line in r.aiter_lines():
                    if line and _check(json.loads(line), rec, t0):
                        rec["done"] = True
                        break
            rec["server"] = url

        return one, client.aclose, info
    if consumer == "ollama":
        import httpx
        import ollama

        clients = [ollama.AsyncClient(host=u, limits=httpx.Limits(max_connections=streams, max_keepalive_connections=streams)) for u in urls]

        async def one(i: int, rec: dict) -> None:
            t0 = time.perf_counter()
            async for part in await clients[i % n].chat(model=MODEL, messages=MESSAGES, stream=True):
                if part.message.content:
                    if rec["ttft_s"] is None:
                        rec["ttft_s"] = time.perf_counter() - t0
                    rec["tokens"] += 1
                if part.done:
                    rec["done"] = True
            rec["server"] = urls[i % n]

        async def aclose() -> None:
            for c in clients:
                await c._client.aclose()

        return one, aclose, info
    if consumer == "aicortex":
        import inspect

        from aicortex import AsyncClient, Registry

        reg = Registry.memory()
        for j, u in enumerate(urls):
            reg.add(u, name=f"fast{j}")
        params = inspect.signature(AsyncClient).parameters
        ckw: dict[str, Any] = {}
        if "max_connections" in params:  # the same pool size as the peers
            ckw["max_connections"] = streams
        info["client_kwargs"] = dict(ckw)
        client = AsyncClient(reg, **ckw)
        await client.refresh()

        async def one(i: int, rec: dict) -> None:
            t0 = time.perf_counter()
            async with client.chat("hi", model=MODEL, stream=True) as s:
                async for ev in s:
                    if ev.type == "token":
                        if rec["ttft_s"] is None:
                            rec["ttft_s"] = time.perf_counter() - t0
                        rec["tokens"] += 1
                    elif ev.type == "end":
                        rec["done"] = True
                rec["stream_ttft_s"] = s.ttft_s
                rec["attempts"] = len(s.attempts)
                rec["server"] = s.server

        async def aclose() -> None:
            await client.aclose()
            reg.close()

        return one, aclose, info
    raise SystemExit(f"unknown consumer {consumer!r}")


async def _consume(consumer: str, urls: list[str], streams: int, tokens: int, ramp: float = 0.0) -> dict[str, Any]:
    _raise_nofile()
    one, aclose, info = await _setup(consumer, urls, streams)
    lags: list[float] = []
    stop = asyncio.Event()

    async def heartbeat() -> None:
        while not stop.is_set():
            t = time.perf_counter()
            await asyncio.sleep(HEARTBEAT_S)
            lags.append(max(0.0, time.perf_counter() - t - HEARTBEAT_S))

    recs: list[dict[str, Any]] = [
        {"tokens": 0, "done": False, "error": None, "ttft_s": None, "attempts": 1, "server": None} for _ in range(streams)
    ]

    async def guarded(i: int) -> None:
        rec = recs[i]
        if ramp > 0:
            await asyncio.sleep(i * ramp / streams)
        try:
            await one(i, rec)
        except Exception as exc:  # counted and reported
            rec["error"] = f"{type(exc).__name__}: {exc}"[:300]
        if rec["error"] is None and (rec["tokens"] != tokens or not rec["done"]):
            rec["error"] = f"incomplete: {rec['tokens']} tokens, done={rec['done']}"

    hb = asyncio.ensure_future(heartbeat())
    await asyncio.sleep(HEARTBEAT_S * 2)  # the heartbeat is ticking before the load starts
    c0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(guarded(i) for i in range(streams)))
    c1, t1 = time.process_time(), time.perf_counter()
    stop.set()
    await hb
    await aclose()
    total = sum(r["tokens"] for r in recs)
    errors = [r["error"] for r in recs if r["error"]]
    ttfts = [r["ttft_s"] * 1000 for r in recs if r["ttft_s"] is not None]
    inner = [r["stream_ttft_s"] * 1000 for r in recs if r.get("stream_ttft_s") is not None]
    spread = collections.Counter(urls.index(r["server"]) for r in recs if r["server"] in urls)
    lag_ms = [x * 1000 for x in lags]
    return {
        "consumer": consumer, "streams": streams, "ramp_s": ramp, "chunks_total": total, "wall_s": t1 - t0, "cpu_s": c1 - c0,
        "chunks_per_s": total / (t1 - t0) if t1 > t0 else None,
        "cpu_us_per_chunk": (c1 - c0) / total * 1e6 if total else None,
        "ttft_ms_p50": percentile(ttfts, 50), "ttft_ms_p99": percentile(ttfts, 99),
        "stream_ttft_ms_p50": percentile(inner, 50), "stream_ttft_ms_p99": percentile(inner, 99),
        "loop_lag_ms_p50": percentile(lag_ms, 50), "loop_lag_ms_p99": percentile(lag_ms, 99), "loop_lag_ms_max": max(lag_ms, default=None),
        "heartbeats": len(lags),
        "errors": len(errors), "errors_sample": errors[:5],
        "failovers": sum(1 for r in recs if r["attempts"] > 1),
        "streams_per_server": [spread.get(i, 0) for i in range(len(urls))],
        "info": info,
    }


# -- the driver ----------------------------------------------------------------------------------
def _spread_pct(per_server: list[int]) -> float | None:
    """Largest deviation from an even split, in percent of the even share."""
    total = sum(per_server)
    if not per_server or not total:
        return None
    even = total / len(per_server)
    return max(abs(x - even) for x in per_server) / even * 100


def _pick(rounds_: list[dict], key: str, best: Any) -> dict:
    """The round that is best by ``key`` (``best`` is max or min), with errors and failovers summed."""
    row = dict(best(rounds_, key=lambda r: r[key] if r[key] is not None else (float("inf") if best is min else 0)))
    row["errors"] = sum(r["errors"] for r in rounds_)
    row["errors_sample"] = [e for r in rounds_ for e in r["errors_sample"]][:5]
    row["failovers"] = sum(r["failovers"] for r in rounds_)
    row["rounds"] = len(rounds_)
    row[f"{key}_all_rounds"] = [r[key] for r in rounds_]
    row["spread_pct"] = _spread_pct(row["streams_per_server"])
    return row


def run(quick: bool = False, streams: int | None = None, servers: int = 4, tokens: int | None = None,
        token_delay: float | None = None, rounds: int | None = None, only: list[str] | None = None,
        ramp: float | None = None, load_token_delay: float | None = None) -> dict:
    """Two phases per consumer, each in a fresh subprocess, against its own server process:

    - ``load``: every stream starts at once and the servers send a token every
      ``load_token_delay`` (10 ms: 100,000 chunks/s for 1,000 streams, more than any
      consumer here takes), so the consumer is the bottleneck: chunks/s is its capacity.
    - ``paced``: the streams start evenly over ``ramp`` seconds and the servers send a
      token every ``token_delay`` (160 ms, 6,250 chunks/s at 1,000 streams, under the
      floor's capacity): TTFT and loop lag of a consumer that is not saturated.
    """
    streams = streams or (20 if quick else 1000)
    tokens = tokens or (10 if quick else 50)
    rounds = rounds or 1
    ramp = (0.05 if quick else DEFAULT_RAMP) if ramp is None else ramp
    token_delay = (0.02 if quick else DEFAULT_TOKEN_DELAY) if token_delay is None else token_delay
    load_token_delay = (0.002 if quick else DEFAULT_LOAD_TOKEN_DELAY) if load_token_delay is None else load_token_delay
    consumers = [c for c in CONSUMERS if not only or c in only]
    missing = aicortex_async_missing()
    notes: list[str] = []
    if "aicortex" in consumers and missing:
        consumers.remove("aicortex")
        notes.append(f"(e) aicortex SKIPPED: {missing}.")
    import importlib.util

    for c, mod in (("aiohttp", "aiohttp"), ("httpx_aiohttp", "httpx_aiohttp")):
        if c in consumers and importlib.util.find_spec(mod) is None:
            consumers.remove(c)
            notes.append(f"{LABELS[c]} SKIPPED: {mod} is not installed (pip install aiohttp httpx-aiohttp).")
    here = os.path.abspath(__file__)
    phases = {"load": (load_token_delay, 0.0), "paced": (token_delay, ramp)}
    raw: dict[str, dict[str, list[dict]]] = {ph: {c: [] for c in consumers} for ph in phases}
    for ph, (delay, ph_ramp) in phases.items():
        cmd = [PY, here, "serve", "--servers", str(servers), "--tokens", str(tokens), "--token-delay", str(delay)]
        with ServerProcess(cmd) as fleet:
            urls = json.loads(fleet.ready)
            for _ in range(rounds):
                for c in consumers:
                    s0 = fleet.cpu_s()
                    row = run_json([PY, here, "consume", "--consumer", c, "--urls", json.dumps(urls), "--streams", str(streams),
                                    "--tokens", str(tokens), "--ramp", str(ph_ramp)], timeout=600)
                    s1 = fleet.cpu_s()
                    row["server_cpu_share"] = None if s0 is None or s1 is None or not row["wall_s"] else (s1 - s0) / row["wall_s"]
                    row["phase"] = ph
                    raw[ph][c].append(row)
    rows = []
    for c in consumers:
        load = _pick(raw["load"][c], "chunks_per_s", max)
        paced = _pick(raw["paced"][c], "loop_lag_ms_p99", min)
        rows.append({
            "consumer": c,
            "errors": load["errors"] + paced["errors"],
            "errors_sample": (load["errors_sample"] + paced["errors_sample"])[:5],
            "failovers": load["failovers"] + paced["failovers"],
            "chunks_per_s": load["chunks_per_s"],
            "cpu_us_per_chunk_load": load["cpu_us_per_chunk"],
            "cpu_us_per_chunk_paced": paced["cpu_us_per_chunk"],
            "paced_chunks_per_s": paced["chunks_per_s"],
            "ttft_ms_p50": paced["ttft_ms_p50"], "ttft_ms_p99": paced["ttft_ms_p99"],
            "stream_ttft_ms_p50": paced["stream_ttft_ms_p50"], "stream_ttft_ms_p99": paced["stream_ttft_ms_p99"],
            "loop_lag_ms_p50": paced["loop_lag_ms_p50"], "loop_lag_ms_p99": paced["loop_lag_ms_p99"],
            "loop_lag_ms_max": paced["loop_lag_ms_max"],
            "load_ttft_ms_p50": load["ttft_ms_p50"], "load_ttft_ms_p99": load["ttft_ms_p99"], "load_loop_lag_ms_p99": load["loop_lag_ms_p99"],
            "streams_per_server": paced["streams_per_server"], "streams_per_server_load": load["streams_per_server"],
            "spread_pct": paced["spread_pct"],
            "server_cpu_share_load": load["server_cpu_share"], "server_cpu_share_paced": paced["server_cpu_share"],
            "info": paced["info"], "load": load, "paced": paced,
        })
    by = {r["consumer"]: r for r in rows}
    floor = by.get("aiohttp")
    ollama_rate = by.get("ollama", {}).get("chunks_per_s")

    def f(v: Any, spec: str, suffix: str = "") -> str:
        return "-" if v is None else format(v, spec) + suffix

    def ratio(x: Any, y: Any) -> float | None:
        return x / y if x and y else None

    display = []
    for r in rows:
        x_load = ratio(r["cpu_us_per_chunk_load"], floor and floor["cpu_us_per_chunk_load"])
        x_paced = ratio(r["cpu_us_per_chunk_paced"], floor and floor["cpu_us_per_chunk_paced"])
        r["cpu_x_floor_load"], r["cpu_x_floor_paced"] = x_load, x_paced
        r["chunks_per_s_x_ollama"] = ratio(r["chunks_per_s"], ollama_rate)
        display.append([
            LABELS[r["consumer"]], str(r["errors"]), f(r["chunks_per_s"], ",.0f"), f(r["chunks_per_s_x_ollama"], ".2f", "x"),
            f(r["cpu_us_per_chunk_load"], ".1f"), f(x_load, ".2f", "x"), f(r["cpu_us_per_chunk_paced"], ".1f"), f(x_paced, ".2f", "x"),
            f(r["ttft_ms_p50"], ".1f"), f(r["ttft_ms_p99"], ".1f"), f(r["loop_lag_ms_p99"], ".1f"),
            "/".join(str(x) for x in r["streams_per_server"]),
        ])
    targets: dict[str, Any] = {}
    a = by.get("aicortex")
    if a and a["chunks_per_s"]:
        v = a["chunks_per_s_x_ollama"]
        if v is not None:
            targets.update(aicortex_vs_ollama_rate=v, aicortex_vs_ollama_rate_target=TARGET_VS_OLLAMA, aicortex_vs_ollama_rate_met=v >= TARGET_VS_OLLAMA)
            notes.append(f"Target 6a, aicortex chunks/s (load) >= {TARGET_VS_OLLAMA}x ollama.AsyncClient: {v:.2f}x -> {'MET' if v >= TARGET_VS_OLLAMA else 'MISSED'}.")
        xs = [x for x in (a["cpu_x_floor_load"], a["cpu_x_floor_paced"]) if x is not None]
        if xs:
            v = max(xs)
            targets.update(aicortex_cpu_vs_floor=v, aicortex_cpu_vs_floor_target=TARGET_CPU_VS_FLOOR, aicortex_cpu_vs_floor_met=v <= TARGET_CPU_VS_FLOOR)
            notes.append(f"Target 6b, aicortex CPU/chunk <= {TARGET_CPU_VS_FLOOR}x the aiohttp floor (in both phases): worst {v:.2f}x -> "
                         f"{'MET' if v <= TARGET_CPU_VS_FLOOR else 'MISSED'}.")
        lag = a["loop_lag_ms_p99"]
        if lag is not None:
            targets.update(aicortex_loop_lag_p99_ms=lag, aicortex_loop_lag_p99_ms_target=TARGET_LAG_P99_MS, aicortex_loop_lag_met=lag <= TARGET_LAG_P99_MS)
            notes.append(f"Target 6c, aicortex event-loop lag p99 (paced) <= {TARGET_LAG_P99_MS:g} ms: {lag:.1f} ms -> {'MET' if lag <= TARGET_LAG_P99_MS else 'MISSED'}"
                         f" (the aiohttp floor: {f(floor and floor['loop_lag_ms_p99'], '.1f', ' ms')}).")
        targets["aicortex_errors"] = a["errors"]
        targets["aicortex_errors_met"] = a["errors"] == 0
        if a["spread_pct"] is not None:
            notes.append(f"aicortex spread over the {servers} servers (paced): {'/'.join(map(str, a['streams_per_server']))} "
                         f"(largest deviation from even {a['spread_pct']:.0f}%); under load: {'/'.join(map(str, a['streams_per_server_load']))}; "
                         f"failovers {a['failovers']}.")
        if a.get("stream_ttft_ms_p50") is not None:
            notes.append(f"aicortex stream.ttft_s (paced): p50 {a['stream_ttft_ms_p50']:.1f} ms, p99 {a['stream_ttft_ms_p99']:.1f} ms.")
        if a["info"].get("client_kwargs") == {}:
            notes.append("aicortex AsyncClient takes no max_connections: it ran with its default pool (the peers had one of "
                         f"{streams} connections).")
    hx, hxa, aio = by.get("httpx"), by.get("httpx_aiohttp"), by.get("aiohttp")
    if hx and hxa and aio:
        notes.append(
            "Async transport (CPU us/chunk load / paced; chunks/s under load): aiohttp {} / {}, {} ; httpx-over-aiohttp {} / {}, {} ; "
            "raw httpx (httpcore) {} / {}, {}.".format(
                *(f(r[k], ".1f") for r in (aio,) for k in ("cpu_us_per_chunk_load", "cpu_us_per_chunk_paced")), f(aio["chunks_per_s"], ",.0f"),
                *(f(r[k], ".1f") for r in (hxa,) for k in ("cpu_us_per_chunk_load", "cpu_us_per_chunk_paced")), f(hxa["chunks_per_s"], ",.0f"),
                *(f(r[k], ".1f") for r in (hx,) for k in ("cpu_us_per_chunk_load", "cpu_us_per_chunk_paced")), f(hx["chunks_per_s"], ",.0f")))
    notes += [
        f"{streams} streams per phase, each consumer in its own fresh subprocess on one asyncio loop (streams as tasks of one asyncio.gather); "
        f"{servers} servers in a separate asyncio process on 127.0.0.1; each reply {tokens} tokens + the done chunk, one NDJSON line per HTTP "
        "chunk, one socket write per chunk, each reply at its own pace. Every pool sized to the stream count.",
        f"load phase: all streams start at once, a token every {load_token_delay * 1000:g} ms per reply (the servers could send "
        f"{streams / load_token_delay:,.0f} chunks/s): chunks/s and CPU us/chunk (load) are the consumer's capacity. "
        f"Best of {rounds} round(s) by chunks/s.",
        f"paced phase: streams start evenly over {ramp:g} s, a token every {token_delay * 1000:g} ms per reply "
        f"({streams / token_delay:,.0f} chunks/s at full concurrency): TTFT (request start -> first content token), loop lag and "
        f"CPU us/chunk (paced) of a consumer that can keep up. Best of {rounds} round(s) by loop lag p99.",
        "Loop lag = how late a 10 ms asyncio.sleep heartbeat wakes (p99 over the run). CPU us/chunk = time.process_time() of the consumer "
        "process over the run / tokens received. x ollama = chunks/s over ollama.AsyncClient's; x floor = CPU/chunk over aiohttp's.",
        f"Errors (exceptions or incomplete replies) summed over every round of both phases. Client and servers share the machine's "
        f"{os.cpu_count()} cores; server CPU share: "
        + ", ".join(f"{r['consumer']} {f(r['server_cpu_share_load'] and r['server_cpu_share_load'] * 100, '.0f', '%')} (load) / "
                    f"{f(r['server_cpu_share_paced'] and r['server_cpu_share_paced'] * 100, '.0f', '%')} (paced)" for r in rows) + ".",
    ]
    for r in rows:
        if r["errors"]:
            common = collections.Counter(r["errors_sample"]).most_common(3)
            notes.append(f"ERRORS ({r['consumer']}): " + "; ".join(f"{k} x {e[:200]}" for e, k in common))
    return {
        "name": "async_concurrency",
        "title": f"6. Async concurrency ({streams:,} streams on one event loop)",
        "columns": ["consumer", "errors", "chunks/s (load)", "x ollama", "CPU us/chunk (load)", "x floor", "CPU us/chunk (paced)",
                    "x floor (paced)", "TTFT p50 ms", "TTFT p99 ms", "loop lag p99 ms", "streams per server"],
        "rows": rows,
        "display_rows": display,
        "runs_raw": raw,
        "targets": targets,
        "skipped_consumers": {"aicortex": missing} if missing else {},
        "notes": notes,
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "serve":
        ap = argparse.ArgumentParser()
        ap.add_argument("--servers", type=int, default=4)
        ap.add_argument("--tokens", type=int, default=50)
        ap.add_argument("--token-delay", type=float, default=0.010)
        a = ap.parse_args(argv[1:])
        serve(a.servers, a.tokens, a.token_delay)
        return 0
    if argv and argv[0] == "consume":
        ap = argparse.ArgumentParser()
        ap.add_argument("--consumer", choices=CONSUMERS, required=True)
        ap.add_argument("--urls", required=True, help="JSON list")
        ap.add_argument("--streams", type=int, required=True)
        ap.add_argument("--tokens", type=int, required=True)
        ap.add_argument("--ramp", type=float, default=0.0)
        a = ap.parse_args(argv[1:])
        print(json.dumps(asyncio.run(_consume(a.consumer, json.loads(a.urls), a.streams, a.tokens, a.ramp))))
        return 0
    ap = argparse.ArgumentParser(description="Async concurrency benchmark")
    ap.add_argument("--quick", action="store_true", help="20 streams of 10 tokens, one round")
    ap.add_argument("--streams", type=int)
    ap.add_argument("--servers", type=int, default=4)
    ap.add_argument("--tokens", type=int)
    ap.add_argument("--token-delay", type=float, help=f"paced phase: seconds between two tokens of a reply (default {DEFAULT_TOKEN_DELAY})")
    ap.add_argument("--load-token-delay", type=float, help=f"load phase: the same (default {DEFAULT_LOAD_TOKEN_DELAY})")
    ap.add_argument("--ramp", type=float, help=f"paced phase: start the streams evenly over this many seconds (default {DEFAULT_RAMP})")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--only", help=f"comma-separated subset of: {', '.join(CONSUMERS)}")
    a = ap.parse_args(argv)
    only = [x.strip() for x in a.only.split(",")] if a.only else None
    emit(run(a.quick, a.streams, a.servers, a.tokens, a.token_delay, a.rounds, only, a.ramp, a.load_token_delay))
    return 0


if __name__ == "__main__":
    sys.exit(main())
