#!/usr/bin/env python3
"""Benchmark 11, the gateway under load: S concurrent streaming clients (default 500) through
``aicortex serve`` over N loopback servers (default 4), against the same clients connected
directly to the servers, in the same run.

Three processes, each measured on its own:

- the servers: ``bench_async.py serve`` (N asyncio listeners in one process; every reply is
  T tokens, default 50, one NDJSON line per HTTP chunk, a token every ``token_delay``,
  default 20 ms, i.e. 50 tokens/s per reply, like a GPU-backed Ollama);
- the gateway: this file's ``gateway`` subcommand (the app of ``aicortex.gateway.create_app``
  on uvicorn, the ``gateway`` extra as installed: h11, asyncio loop), on a registry of the
  N servers;
- the clients: ``bench_async.py consume --consumer aiohttp`` (one aiohttp session, an NDJSON
  loop: the cheapest client), S streams started evenly over ``ramp`` seconds (default 2 s),
  round-robin over the N servers (direct) or all to the gateway.

Reported per path (direct, gateway): errors (exceptions or incomplete replies: must be 0),
TTFT p50/p99 as the clients saw it (request sent -> first content token), chunks/s, the
clients' CPU us per chunk; for the gateway, the added TTFT (gateway p50/p99 minus direct
p50/p99) and the gateway process's CPU us per chunk relayed (its /proc CPU time over the run
/ chunks delivered). Rounds alternate direct and gateway; the best round of each is kept.

    python benchmarks/bench_gateway.py [--quick] [--streams S] [--servers N] [--tokens T]
                                       [--token-delay SECONDS] [--ramp SECONDS] [--rounds R]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import PY, ServerProcess, emit, run_json  # noqa: E402

HERE = os.path.abspath(__file__)
ASYNC = os.path.join(os.path.dirname(HERE), "bench_async.py")


def gateway(urls: list[str], http: str = "auto", loop: str = "auto") -> None:
    """Serve the gateway over ``urls`` on 127.0.0.1 (a free port); print ``READY url``; run
    until stdin closes."""
    import asyncio
    import socket
    import threading

    import uvicorn

    from aicortex import Registry
    from aicortex.gateway import create_app, http_protocol

    from bench_async import _raise_nofile

    _raise_nofile()
    reg = Registry.memory()
    for u in urls:
        reg.add(u)
    # every client is 127.0.0.1 here: no per-client limit; room for every stream
    app = create_app(reg, per_client=None, max_active=4096, max_queue=4096, refresh_interval_s=None)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(
        app, log_level="warning", access_log=False, backlog=4096, timeout_graceful_shutdown=1, http=http_protocol(kind=http), loop=loop,  # type: ignore[arg-type]
    ))

    def watch_stdin() -> None:
        sys.stdin.read()
        server.should_exit = True

    async def main() -> None:
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=[sock])
        print(f"READY http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
        threading.Thread(target=watch_stdin, daemon=True).start()
        await server.main_loop()
        await server.shutdown(sockets=[sock])

    config = server.config
    config.load()
    if loop == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())
    reg.close()


def _consume(urls: list[str], streams: int, tokens: int, ramp: float) -> dict[str, Any]:
    return run_json([PY, ASYNC, "consume", "--consumer", "aiohttp", "--urls", json.dumps(urls), "--streams", str(streams),
                     "--tokens", str(tokens), "--ramp", str(ramp)], timeout=600)


def _sub(a: Any, b: Any) -> float | None:
    return None if a is None or b is None else a - b


def _variants() -> list[tuple[str, str, str]]:
    """(label, http, loop) of the gateway runs: uvicorn's fast stack when installed, and
    its pure-Python one."""
    import importlib.util

    out = []
    if importlib.util.find_spec("httptools") and importlib.util.find_spec("uvloop"):
        out.append(("gateway (httptools + uvloop)", "httptools", "uvloop"))
    out.append(("gateway (h11 + asyncio)", "h11", "asyncio"))
    return out


def _one_pace(streams: int, servers: int, tokens: int, token_delay: float, ramp: float, rounds: int) -> tuple[list[dict], dict]:
    direct: list[dict[str, Any]] = []
    through: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _ in _variants()}
    srv_cmd = [PY, ASYNC, "serve", "--servers", str(servers), "--tokens", str(tokens), "--token-delay", str(token_delay)]
    with ServerProcess(srv_cmd) as fleet, contextlib.ExitStack() as stack:
        urls = json.loads(fleet.ready)
        gws = {}
        for label, http, loop in _variants():
            gw = stack.enter_context(ServerProcess([PY, HERE, "gateway", "--urls", json.dumps(urls), "--http", http, "--loop", loop]))
            _consume([gw.ready], min(streams, 50), tokens, 0.0)  # warm-up: imports, routing
            gws[label] = gw
        for _ in range(rounds):
            s0 = fleet.cpu_s()
            row = _consume(urls, streams, tokens, ramp)
            s1 = fleet.cpu_s()
            row["server_cpu_us_per_chunk"] = (s1 - s0) / row["chunks_total"] * 1e6 if row["chunks_total"] and s0 is not None and s1 is not None else None
            direct.append(row)
            for label, gw in gws.items():
                g0 = gw.cpu_s()
                row = _consume([gw.ready], streams, tokens, ramp)
                g1 = gw.cpu_s()
                row["gateway_cpu_s"] = None if g0 is None or g1 is None else g1 - g0
                row["gateway_cpu_us_per_chunk"] = (
                    row["gateway_cpu_s"] / row["chunks_total"] * 1e6 if row["chunks_total"] and row["gateway_cpu_s"] is not None else None
                )
                row["gateway_cpu_share"] = row["gateway_cpu_s"] / row["wall_s"] if row["gateway_cpu_s"] is not None and row["wall_s"] else None
                through[label].append(row)

    def best(rows: list[dict[str, Any]]) -> dict[str, Any]:
        row = dict(min(rows, key=lambda r: (r["ttft_ms_p99"] if r["ttft_ms_p99"] is not None else float("inf"))))
        row["errors"] = sum(r["errors"] for r in rows)
        row["errors_sample"] = [e for r in rows for e in r["errors_sample"]][:5]
        row["ttft_ms_p99_all_rounds"] = [r["ttft_ms_p99"] for r in rows]
        return row

    d = best(direct)
    rows = [{"path": "direct (clients -> servers)", "token_delay_s": token_delay, **d}]
    for label, runs in through.items():
        g = best(runs)
        rows.append({"path": label, "token_delay_s": token_delay, **g,
                     "added_ttft_ms_p50": _sub(g["ttft_ms_p50"], d["ttft_ms_p50"]),
                     "added_ttft_ms_p99": _sub(g["ttft_ms_p99"], d["ttft_ms_p99"])})
    return rows, {"direct": direct, **through}


def run(quick: bool = False, streams: int | None = None, servers: int = 4, tokens: int | None = None,
        token_delays: list[float] | None = None, ramp: float | None = None, rounds: int | None = None) -> dict:
    """Per pace (seconds between two tokens of a reply): direct, then each gateway variant,
    ``rounds`` times alternating; the best round (lowest TTFT p99) of each is shown."""
    streams = streams or (20 if quick else 500)
    tokens = tokens or (10 if quick else 50)
    token_delays = token_delays or ([0.005] if quick else [0.1, 0.02])
    ramp = (0.05 if quick else 2.0) if ramp is None else ramp
    rounds = rounds or (1 if quick else 2)
    rows: list[dict[str, Any]] = []
    raw = {}
    for delay in token_delays:
        pace_rows, pace_raw = _one_pace(streams, servers, tokens, delay, ramp, rounds)
        rows += pace_rows
        raw[str(delay)] = pace_raw

    def f(v: Any, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    display = [
        [f"{1 / r['token_delay_s']:g} tok/s", r["path"], f"{r['errors']}", f(r["chunks_per_s"], ",.0f"),
         f(r["ttft_ms_p50"], ",.1f"), f(r["ttft_ms_p99"], ",.1f"), f(r.get("added_ttft_ms_p99"), "+,.1f"),
         f(r["cpu_us_per_chunk"], ",.1f"), f(r.get("gateway_cpu_us_per_chunk"), ",.1f"),
         f(r.get("gateway_cpu_share") and r["gateway_cpu_share"] * 100, ".0f") + ("%" if r.get("gateway_cpu_share") else "")]
        for r in rows
    ]
    notes = [
        f"{streams:,} concurrent streams of {tokens} tokens each, started evenly over {ramp:g} s, per pace (tokens/s of "
        f"each reply); {servers} loopback servers in one process; {rounds} round(s) per path, alternating; the round with "
        "the lowest TTFT p99 is shown (every round's p99 is in the JSON).",
        f"Servers, gateway and clients share this machine's {os.cpu_count()} cores. 'added TTFT' = gateway minus direct, "
        "same pace, same run; 'gateway CPU us/chunk' = the gateway process's CPU time over the run / chunks delivered.",
    ]
    for r in rows:
        if r["errors"]:
            notes.append(f"ERRORS ({r['path']}): " + "; ".join(r["errors_sample"][:3]))
    return {
        "name": "gateway",
        "title": f"11. Gateway under load ({streams:,} concurrent streams over {servers} servers)",
        "columns": ["pace", "path", "errors", "chunks/s", "TTFT p50 ms", "TTFT p99 ms", "added TTFT p99 ms",
                    "client CPU us/chunk", "gateway CPU us/chunk", "gateway CPU share"],
        "rows": rows,
        "display_rows": display,
        "runs_raw": raw,
        "notes": notes,
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "gateway":
        ap = argparse.ArgumentParser()
        ap.add_argument("--urls", required=True, help="JSON list of server URLs")
        ap.add_argument("--http", default="auto", choices=["auto", "h11", "httptools"])
        ap.add_argument("--loop", default="auto", choices=["auto", "asyncio", "uvloop"])
        g = ap.parse_args(argv[1:])
        gateway(json.loads(g.urls), g.http, g.loop)
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="20 streams of 10 tokens, one round")
    ap.add_argument("--streams", type=int)
    ap.add_argument("--servers", type=int, default=4)
    ap.add_argument("--tokens", type=int)
    ap.add_argument("--token-delay", type=float, action="append", help="seconds between two tokens of a reply (repeatable; default 0.1 and 0.02)")
    ap.add_argument("--ramp", type=float)
    ap.add_argument("--rounds", type=int)
    a = ap.parse_args(argv)
    emit(run(a.quick, a.streams, a.servers, a.tokens, a.token_delay, a.ramp, a.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
