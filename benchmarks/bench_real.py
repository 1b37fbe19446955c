#!/usr/bin/env python3
"""Benchmark 5, a real model: TTFT and tokens/s of real local inference stacks.

Starts 2 stacks of ``scripts/realstack.py`` (llama.cpp serving SmolLM2-135M behind an
Ollama-API front end, each on 127.0.0.1) and measures each with
:meth:`aicortex.Client.bench` (``aicortex bench``): a few short replies pinned to each server, as aicortex
measures them (``Stream.ttft_s``, ``Stream.tokens_per_second``) beside the figures the
server reports (``Stream.usage.tokens_per_second`` = eval_count / eval_duration).
Skipped, with the reason printed, when the real stack cannot be installed or started.

    python benchmarks/bench_real.py [--quick] [--runs K] [--stacks N]
"""

from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "scripts"))

from _common import emit  # noqa: E402

COLUMNS = ["server", "ok/runs", "TTFT p50 ms", "TTFT p95 ms", "tok/s p50 (aicortex)", "tok/s p95 (aicortex)",
           "tok/s p50 (server-reported)", "registry EWMA TTFT ms", "registry EWMA tok/s"]


def run(quick: bool = False, runs: int | None = None, stacks: int = 2, max_tokens: int = 48) -> dict:
    runs = runs or (1 if quick else 4)
    base = {"name": "real_model", "title": "5. Real model (realstack: llama.cpp SmolLM2-135M behind an Ollama-API front end)",
            "columns": COLUMNS, "rows": []}
    try:
        import realstack
    except ImportError as exc:
        return {**base, "skipped": f"scripts/realstack.py not importable: {exc}", "notes": []}
    try:
        realstack.ensure_installed()
        group = realstack.Stacks(stacks)
    except realstack.StackUnavailable as exc:
        return {**base, "skipped": f"real stack unavailable: {exc.reason}", "notes": []}
    from dataclasses import asdict

    from aicortex import Client, Registry
    from aicortex._bench import DEFAULT_BENCH_PROMPT

    with group as started:
        reg = Registry.memory()
        try:
            for i, s in enumerate(started):
                reg.add(s.url, name=f"stack{i}")
            with Client(reg) as client:
                client.refresh()
                results = client.bench(realstack.MODEL, runs, max_tokens=max_tokens, warmup=1)
                rows = [{**asdict(r), "ewma_ttft_s": reg.health(r.server, realstack.MODEL).ewma_ttft_s,
                         "ewma_tps": reg.health(r.server, realstack.MODEL).ewma_tps} for r in results]
        finally:
            reg.close()

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v * 1000:.0f}"

    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    display = [[r["name"], f"{r['ok']}/{r['runs']}", ms(r["ttft_p50_s"]), ms(r["ttft_p95_s"]), num(r["tps_p50"]), num(r["tps_p95"]),
                num(r["server_tps_p50"]), ms(r["ewma_ttft_s"]), num(r["ewma_tps"])] for r in rows]
    notes = [
        f"{stacks} stacks started together (1 llama.cpp thread each on this 2-core machine); per stack 1 warm-up reply, then "
        f"{runs} measured replies of at most {max_tokens} tokens (options.num_predict), prompt {DEFAULT_BENCH_PROMPT!r}; "
        "measured with aicortex's own Client.bench() (the `aicortex bench` command).",
        "TTFT = Stream.ttft_s; tok/s (aicortex) = Stream.tokens_per_second (chunks after the first / seconds since the first); "
        "server-reported = Stream.usage.tokens_per_second (eval_count / eval_duration).",
        "The registry EWMAs include the warm-up reply (the first reply of a stack is the slow one).",
        "The front end (ollama-proxy-plus) reports eval_count as a whitespace word count, so its tok/s is words/s, not tokens/s "
        "(scripts/README.md); the client-measured figure counts stream chunks (one token each here).",
    ]
    for r in rows:
        if r["errors"]:
            notes.append(f"ERRORS on {r['name']}: {r['errors'][:3]}")
    return {**base, "rows": rows, "display_rows": display, "notes": notes}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Real-model benchmark")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--runs", type=int)
    ap.add_argument("--stacks", type=int, default=2)
    a = ap.parse_args(argv)
    emit(run(a.quick, a.runs, a.stacks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
