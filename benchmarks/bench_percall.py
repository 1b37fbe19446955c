#!/usr/bin/env python3
"""Benchmark 7, per-call costs: CPU per short request, routing cost, memory of a long reply.

Three parts, every consumer in its own fresh subprocess (``time.process_time()`` around
the measured loop only; imports, client construction, registry set-up excluded):

(a) **Per request**: N (default 500) sequential requests on one thread, each a streamed
    reply of 10 tokens from ``fastserver.py`` (a separate process on 127.0.0.1), after a
    few warm-up requests: CPU us per request of the official ``ollama.Client``, aicortex
    ``Client.chat(stream=True)``, and a raw httpx NDJSON loop (floor, for reference).
    Target: aicortex <= 1.2x the official client.
(b) **Routing**: 50 servers registered with the model (``Registry.memory()`` +
    ``record_refresh``, no network): us per ``Client.route(model)`` call and per chat
    set-up (``Client.chat(..., stream=True)`` returned and closed before it connects:
    message building, routing, the session and the stream object), beside the same with
    1 server. Target: route <= 0.1 ms with 50 servers.
(c) **Memory**: peak RSS (``ru_maxrss``) of a process consuming one reply of 200,000
    chunks: the official client, aicortex by default (the stream keeps every event), and
    aicortex with ``keep_events=False`` (skipped with a note when the installed aicortex
    has no such option); the raw httpx loop for reference.

    python benchmarks/bench_percall.py [--quick] [--requests N] [--servers 50] [--chunks 200000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import PY, ServerProcess, emit, median, run_json  # noqa: E402

MODEL = "bench"
MESSAGES = [{"role": "user", "content": "hi"}]
REQ_CONSUMERS = ("ollama", "aicortex", "httpx")
MEM_CONSUMERS = ("ollama", "aicortex", "aicortex_nokeep", "httpx")
LABELS = {
    "ollama": "official ollama.Client",
    "aicortex": "aicortex Client.chat(stream=True)",
    "aicortex_nokeep": "aicortex, keep_events=False",
    "httpx": "raw httpx NDJSON loop (floor, reference)",
}
TARGET_REQ_VS_OLLAMA = 1.2
TARGET_ROUTE_MS = 0.1
WARMUP = 5


def keep_events_support() -> str | None:
    """Where aicortex takes ``keep_events``: ``"client"``, ``"chat"`` or ``None`` (not supported)."""
    import inspect

    from aicortex import Client

    if "keep_events" in inspect.signature(Client.__init__).parameters:
        return "client"
    if "keep_events" in inspect.signature(Client.chat).parameters:
        return "chat"
    return None


# -- consumers (child processes) -----------------------------------------------------------------
def _consumer(consumer: str, url: str):
    """``(one_request() -> (tokens, done), close)`` for ``consumer`` against ``url``."""
    if consumer == "httpx":
        import httpx

        client = httpx.Client(timeout=None)
        body = {"model": MODEL, "messages": MESSAGES, "stream": True}

        def one() -> tuple[int, bool]:
            tokens, done = 0, False
            with client.stream("POST", url + "/api/chat", json=body) as r:
                r.raise_for_status()
                for line in r.iter_lines():
                    if not line:
                        continue
                    obj = json.loads(line)
                    if "error" in obj:
                        raise RuntimeError(obj["error"])
                    if obj["message"]["content"]:
                        tokens += 1
                    if obj.get("done"):
                        done = True
                        break
            return tokens, done

        return one, client.close
    if consumer == "ollama":
        import ollama

        client = ollama.Client(host=url)

        def one() -> tuple[int, bool]:
            tokens, done = 0, False
            for part in client.chat(model=MODEL, messages=MESSAGES, stream=True):
                if part.message.content:
                    tokens += 1
                if part.done:
                    done = True
            return tokens, done

        return one, lambda: client._client.close()
    if consumer in ("aicortex", "aicortex_nokeep"):
        from aicortex import Client, Registry

        reg = Registry.memory()
        reg.add(url)
        ckw: dict[str, Any] = {}
        chat_kw: dict[str, Any] = {}
        if consumer == "aicortex_nokeep":
            where = keep_events_support()
            if where == "client":
                ckw["keep_events"] = False
            elif where == "chat":
                chat_kw["keep_events"] = False
            else:
                raise SystemExit("aicortex has no keep_events option")
        client = Client(reg, **ckw)
        client.refresh()

        def one() -> tuple[int, bool]:
            tokens, done = 0, False
            for event in client.chat(MESSAGES, model=MODEL, stream=True, **chat_kw):
                if event.type == "token":
                    tokens += 1
                elif event.type == "end":
                    done = True
            return tokens, done

        def close() -> None:
            client.close()
            reg.close()

        return one, close
    raise SystemExit(f"unknown consumer {consumer!r}")


def child_requests(consumer: str, url: str, n: int, tokens: int) -> dict:
    one, close = _consumer(consumer, url)
    for _ in range(WARMUP):
        one()
    bad = 0
    c0, w0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        got, done = one()
        bad += got != tokens or not done
    c1, w1 = time.process_time(), time.perf_counter()
    close()
    return {"consumer": consumer, "requests": n, "cpu_s": c1 - c0, "wall_s": w1 - w0, "bad_replies": bad}


def child_memory(consumer: str, url: str, chunks: int) -> dict:
    import resource

    one, close = _consumer(consumer, url)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    c0 = time.process_time()
    got, done = one()
    c1 = time.process_time()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    close()
    return {"consumer": consumer, "chunks": got, "done": done, "cpu_s": c1 - c0, "maxrss_kb_before": before, "maxrss_kb": after}


def child_route(servers: int, n: int) -> dict:
    from aicortex import Client, ModelEntry, Registry

    reg = Registry.memory()
    for i in range(servers):
        url = f"http://127.0.0.1:{20000 + i}"  # never contacted: registered as if refreshed
        reg.add(url, name=f"s{i}")
        reg.record_refresh(url, version="0.12.6", models=[ModelEntry(f"{MODEL}:latest")], loaded=[MODEL])
    client = Client(reg, refresh_ttl_s=None)
    route = client.route(MODEL)
    assert len(route.candidates) + len(route.skipped) == servers, route
    for _ in range(20):
        client.route(MODEL)
    out: dict[str, Any] = {"servers": servers, "calls": n}
    for what in ("route", "chat_setup"):
        samples = []
        for _ in range(5):  # best of 5 batches of n calls
            c0 = time.process_time()
            if what == "route":
                for _ in range(n):
                    client.route(MODEL)
            else:
                for _ in range(n):
                    client.chat("hi", model=MODEL, stream=True).close()
            samples.append((time.process_time() - c0) / n * 1e6)
        out[f"{what}_us_best"] = min(samples)
        out[f"{what}_us_median"] = median(samples)
    client.close()
    reg.close()
    return out


# -- the driver ----------------------------------------------------------------------------------
def run(quick: bool = False, requests: int | None = None, servers: int = 50, chunks: int | None = None,
        repeats: int | None = None) -> dict:
    requests = requests or (30 if quick else 500)
    chunks = chunks or (2_000 if quick else 200_000)
    repeats = repeats or (1 if quick else 3)
    route_calls = 50 if quick else 500
    tokens = 10
    here = os.path.abspath(__file__)
    fast = os.path.join(os.path.dirname(here), "fastserver.py")
    notes: list[str] = []
    targets: dict[str, Any] = {}

    # (a) per request
    req_runs: dict[str, list[dict]] = {c: [] for c in REQ_CONSUMERS}
    with ServerProcess([PY, fast, "--chunks", str(tokens)]) as server:
        for _ in range(repeats):
            for c in REQ_CONSUMERS:
                req_runs[c].append(run_json([PY, here, "requests", "--consumer", c, "--url", server.ready,
                                             "--n", str(requests), "--tokens", str(tokens)], timeout=600))
    per_req = {c: min(r["cpu_s"] for r in req_runs[c]) / requests * 1e6 for c in REQ_CONSUMERS}
    bad = {c: sum(r["bad_replies"] for r in req_runs[c]) for c in REQ_CONSUMERS}
    req_rows = []
    for c in REQ_CONSUMERS:
        req_rows.append({
            "consumer": c, "cpu_us_per_request_best": per_req[c],
            "cpu_us_per_request_median": median(r["cpu_s"] / requests * 1e6 for r in req_runs[c]),
            "x_ollama": per_req[c] / per_req["ollama"], "requests_per_s_best": max(requests / r["wall_s"] for r in req_runs[c]),
            "bad_replies": bad[c], "runs": len(req_runs[c]),
        })
    v = per_req["aicortex"] / per_req["ollama"]
    targets.update(aicortex_per_request_vs_ollama=v, aicortex_per_request_vs_ollama_target=TARGET_REQ_VS_OLLAMA,
                   aicortex_per_request_vs_ollama_met=v <= TARGET_REQ_VS_OLLAMA)
    notes.append(f"Target 7a, aicortex CPU per {tokens}-token request <= {TARGET_REQ_VS_OLLAMA}x the official client: {v:.2f}x -> "
                 f"{'MET' if v <= TARGET_REQ_VS_OLLAMA else 'MISSED'}.")

    # (b) routing
    route_rows = [run_json([PY, here, "route", "--servers", str(n), "--n", str(route_calls)]) for n in (1, servers)]
    r50 = route_rows[-1]
    ms = r50["route_us_best"] / 1000
    targets.update(route_ms=ms, route_ms_target=TARGET_ROUTE_MS, route_met=ms <= TARGET_ROUTE_MS)
    notes.append(f"Target 7b, Client.route() with {servers} servers <= {TARGET_ROUTE_MS} ms: {ms:.3f} ms -> "
                 f"{'MET' if ms <= TARGET_ROUTE_MS else 'MISSED'} (chat set-up: {r50['chat_setup_us_best'] / 1000:.3f} ms).")

    # (c) memory
    mem_consumers = list(MEM_CONSUMERS)
    try:
        nokeep = keep_events_support()
    except Exception as exc:  # pragma: no cover
        nokeep = None
        notes.append(f"keep_events check failed: {exc}")
    if nokeep is None:
        mem_consumers.remove("aicortex_nokeep")
        notes.append("aicortex keep_events=False SKIPPED: neither Client() nor Client.chat() takes keep_events in this checkout.")
    mem_rows = []
    with ServerProcess([PY, fast, "--chunks", str(chunks)]) as server:
        for c in mem_consumers:
            r = run_json([PY, here, "memory", "--consumer", c, "--url", server.ready, "--chunks", str(chunks)], timeout=600)
            r["ok"] = r["chunks"] == chunks and r["done"]
            r["peak_rss_mb"] = r["maxrss_kb"] / 1024
            r["rss_growth_mb"] = (r["maxrss_kb"] - r["maxrss_kb_before"]) / 1024
            r["bytes_per_chunk"] = (r["maxrss_kb"] - r["maxrss_kb_before"]) * 1024 / chunks
            mem_rows.append(r)
    mb = {r["consumer"]: r for r in mem_rows}
    if "aicortex_nokeep" in mb:
        notes.append(f"Memory: aicortex keeps ~{mb['aicortex']['bytes_per_chunk']:.0f} bytes/chunk by default, "
                     f"~{mb['aicortex_nokeep']['bytes_per_chunk']:.0f} with keep_events=False (official client "
                     f"~{mb['ollama']['bytes_per_chunk']:.0f}).")
        targets["keep_events_false_rss_growth_mb"] = mb["aicortex_nokeep"]["rss_growth_mb"]

    notes += [
        f"(a) {requests} sequential streamed requests of {tokens} tokens on one thread after {WARMUP} warm-up requests, one fastserver "
        f"process on 127.0.0.1 (keep-alive); best of {repeats} interleaved subprocess run(s) by CPU; CPU = time.process_time() of the loop.",
        f"(b) {route_calls} calls per batch, best of 5 batches; servers registered with record_refresh (never contacted), "
        "refresh_ttl_s=None; chat set-up = chat(stream=True) returned and closed before the first next() (no connection).",
        f"(c) one reply of {chunks:,} chunks per subprocess; peak RSS = ru_maxrss after the loop; growth = after minus before the loop.",
    ]
    if any(bad.values()):
        notes.append("BAD REPLIES (wrong token count or no done): " + ", ".join(f"{c} {n}" for c, n in bad.items() if n))
    extra = [
        {
            "title": f"Routing cost (Client.route / chat set-up, us per call; best of 5 batches of {route_calls})",
            "columns": ["servers registered", "route() us (best)", "route() us (median)", "chat set-up us (best)", "chat set-up us (median)"],
            "rows": [[str(r["servers"]), f"{r['route_us_best']:.1f}", f"{r['route_us_median']:.1f}", f"{r['chat_setup_us_best']:.1f}",
                      f"{r['chat_setup_us_median']:.1f}"] for r in route_rows],
        },
        {
            "title": f"Memory of one {chunks:,}-chunk reply (each in its own subprocess)",
            "columns": ["consumer", "peak RSS MB", "RSS growth MB", "bytes/chunk kept", "complete"],
            "rows": [[LABELS[r["consumer"]], f"{r['peak_rss_mb']:.1f}", f"{r['rss_growth_mb']:.1f}", f"{r['bytes_per_chunk']:.0f}",
                      "yes" if r["ok"] else "NO"] for r in mem_rows],
        },
    ]
    display = [[LABELS[r["consumer"]], f"{r['cpu_us_per_request_best']:.0f}", f"{r['cpu_us_per_request_median']:.0f}",
                f"{r['x_ollama']:.2f}x", f"{r['requests_per_s_best']:,.0f}", str(r["bad_replies"])] for r in req_rows]
    return {
        "name": "percall",
        "title": f"7. Per-call costs ({tokens}-token requests, routing over {servers} servers, memory of a {chunks:,}-chunk reply)",
        "columns": ["consumer", "CPU us/request (best)", "CPU us/request (median)", "x ollama", "requests/s (best)", "bad replies"],
        "rows": req_rows,
        "display_rows": display,
        "route_rows": route_rows,
        "memory_rows": mem_rows,
        "extra_tables": extra,
        "targets": targets,
        "notes": notes,
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("requests", "memory", "route"):
        ap = argparse.ArgumentParser()
        ap.add_argument("--consumer", choices=MEM_CONSUMERS)
        ap.add_argument("--url")
        ap.add_argument("--n", type=int, default=500)
        ap.add_argument("--tokens", type=int, default=10)
        ap.add_argument("--chunks", type=int, default=200_000)
        ap.add_argument("--servers", type=int, default=50)
        a = ap.parse_args(argv[1:])
        if argv[0] == "requests":
            out = child_requests(a.consumer, a.url, a.n, a.tokens)
        elif argv[0] == "memory":
            out = child_memory(a.consumer, a.url, a.chunks)
        else:
            out = child_route(a.servers, a.n)
        print(json.dumps(out))
        return 0
    ap = argparse.ArgumentParser(description="Per-call costs benchmark")
    ap.add_argument("--quick", action="store_true", help="30 requests, 2,000-chunk reply, one run each")
    ap.add_argument("--requests", type=int)
    ap.add_argument("--servers", type=int, default=50)
    ap.add_argument("--chunks", type=int)
    ap.add_argument("--repeats", type=int)
    a = ap.parse_args(argv)
    emit(run(a.quick, a.requests, a.servers, a.chunks, a.repeats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
