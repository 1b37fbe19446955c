#!/usr/bin/env python3
"""Benchmark 3, failover cost: TTFT when the first server is dead, and the mid-stream gap.

Loopback FakeOllama servers (token_delay 0) in this process. For each way the first
server can be dead, a fresh in-memory registry lists it first (priority 1) with a healthy
server second, and two requests are made in a row on one ``Client``:

* request 1 pays for the failure (a refused connect is immediate; a connect timeout, a
  blackholed request and a 503 cost what the timeouts allow);
* request 2 comes while the dead server's circuit breaker is open (or, for the 503, its
  busy backoff runs), so it should be skipped and TTFT be back to the healthy figure.

TTFT is ``Stream.ttft_s`` (from the first ``next()``, failovers included); "call -> first
token" also counts ``Client.chat()`` itself (routing reads the SQLite registry).

Mid-stream: the first server dies after k tokens (FIN, RST, an error line, a stall); the
gap is from the ``StreamEvent.timestamp`` of its last token to that of the first token of
the next server (``on_midstream="continue"``: the partial reply is sent as a prefill).

    python benchmarks/bench_failover.py [--quick] [--reps N]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from typing import Any, Callable, Iterator

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import emit, median  # noqa: E402

from aicortex import Client, ModelEntry, Registry, Timeouts  # noqa: E402
from aicortex.testing import FakeOllama, Script, blackhole_listener, closed_port_url  # noqa: E402

MODEL = "m"
TIMEOUTS = Timeouts(connect=0.5, first_token=1.0, first_token_cold=1.0, stall=1.0)
TOKENS = tuple(f" w{i}" for i in range(40))
DROP_K = 10


@contextlib.contextmanager
def _fleet(first: str | None) -> Iterator[tuple[Client, str]]:
    """A registry with the dead server ``first`` (None = none) first, then a healthy fake."""
    stack = contextlib.ExitStack()
    with stack:
        healthy = stack.enter_context(FakeOllama(models=[MODEL], script=Script(tokens=TOKENS)))
        reg = Registry.memory()
        stack.callback(reg.close)
        dead_url = None
        refreshed_dead = False
        if first == "refused":
            dead_url = closed_port_url()
        elif first == "connect_timeout":
            dead_url = stack.enter_context(blackhole_listener())
        elif first == "blackhole":
            dead_url = stack.enter_context(FakeOllama(models=[MODEL], script=Script(blackhole=True))).url
            refreshed_dead = True
        elif first == "http_503":
            dead_url = stack.enter_context(FakeOllama(models=[MODEL], script=Script(status=503))).url
            refreshed_dead = True
        if dead_url and refreshed_dead:
            reg.add(dead_url, name="dead", priority=1)
        reg.add(healthy.url, name="healthy")
        client = Client(reg, timeout=TIMEOUTS, spread_load=False)
        stack.callback(client.close)
        client.refresh()
        if dead_url and not refreshed_dead:
            # Cannot be probed: register it as if an earlier refresh had seen the model there.
            reg.add(dead_url, name="dead", priority=1)
            reg.record_refresh(dead_url, version="0.12.6", models=[ModelEntry(f"{MODEL}:latest")], loaded=[MODEL])
        yield client, healthy.url


def _one_request(client: Client) -> dict[str, Any]:
    t0 = time.perf_counter()
    stream = client.chat("hi", model=MODEL, stream=True)
    first = None
    with stream:
        for ev in stream:
            if ev.type == "token" and first is None:
                first = time.perf_counter()
    attempts = stream.attempts
    return {
        "ttft_s": stream.ttft_s,
        "call_to_first_s": None if first is None else first - t0,
        "attempts": len(attempts),
        "first_error": type(attempts[0].error).__name__ if attempts and attempts[0].error else "-",
        "text_ok": stream.text() == "".join(TOKENS),
    }


SCENARIOS = [
    ("healthy first server", None),
    ("first refuses connections", "refused"),
    ("first: connect times out (blackhole_listener)", "connect_timeout"),
    ("first: blackholed request (accepts, never answers)", "blackhole"),
    ("first answers HTTP 503 (busy)", "http_503"),
]

MIDSTREAM = [
    ("drop (FIN) after k tokens", dict(drop_after=DROP_K)),
    ("reset (RST) after k tokens", dict(drop_after=DROP_K, reset=True)),
    ("error line after k tokens", dict(error_after=DROP_K)),
    ("stall after k tokens (stall timeout 1.0 s)", dict(stall_after=DROP_K, stall=30.0)),
]


def _midstream(kw: dict[str, Any]) -> dict[str, Any]:
    with FakeOllama(models=[MODEL], script=Script(tokens=TOKENS, **kw)) as bad, FakeOllama(
        models=[MODEL], script=Script(tokens=TOKENS)
    ) as good:
        reg = Registry.memory()
        try:
            reg.add(bad.url, name="bad", priority=1)
            reg.add(good.url, name="good")
            with Client(reg, timeout=TIMEOUTS, spread_load=False) as client:
                client.refresh()
                with client.chat("hi", model=MODEL, stream=True) as stream:
                    events = list(stream)
                text_ok = "".join(e.content for e in events if e.type == "token") == "".join(TOKENS)
                last_bad = max((e.timestamp for e in events if e.type == "token" and e.server == bad.url), default=None)
                first_good = min((e.timestamp for e in events if e.type == "token" and e.server == good.url), default=None)
                gap = None if last_bad is None or first_good is None else first_good - last_bad
                return {"gap_s": gap, "attempts": len(stream.attempts), "text_ok": text_ok,
                        "error": type(stream.attempts[0].error).__name__ if stream.attempts[0].error else "-"}
        finally:
            reg.close()


def run(quick: bool = False, reps: int | None = None) -> dict:
    reps = reps or (1 if quick else 3)
    scenarios = SCENARIOS if not quick else SCENARIOS
    rows, display = [], []
    for label, kind in scenarios:
        per_req: list[list[dict]] = [[], []]
        for _ in range(reps):
            with _fleet(kind) as (client, _healthy):
                for i in range(2):
                    per_req[i].append(_one_request(client))
        for i in range(2):
            rs = per_req[i]
            row = {
                "scenario": label, "request": i + 1,
                "ttft_ms_median": median(r["ttft_s"] * 1000 for r in rs if r["ttft_s"] is not None),
                "ttft_ms_max": max((r["ttft_s"] * 1000 for r in rs if r["ttft_s"] is not None), default=None),
                "call_to_first_token_ms_median": median(r["call_to_first_s"] * 1000 for r in rs if r["call_to_first_s"] is not None),
                "attempts": max(r["attempts"] for r in rs),
                "first_attempt_error": rs[0]["first_error"],
                "text_ok": all(r["text_ok"] for r in rs),
                "reps": len(rs),
            }
            rows.append(row)
            display.append([
                label if i == 0 else "", "1st" if i == 0 else "2nd (breaker open)" if kind else "2nd",
                f"{row['ttft_ms_median']:.1f}", f"{row['ttft_ms_max']:.1f}", f"{row['call_to_first_token_ms_median']:.1f}",
                str(row["attempts"]), row["first_attempt_error"], "yes" if row["text_ok"] else "NO", str(row["reps"]),
            ])
    mid_rows, mid_display = [], []
    for label, kw in MIDSTREAM:
        rs = [_midstream(kw) for _ in range(reps)]
        gaps = [r["gap_s"] * 1000 for r in rs if r["gap_s"] is not None]
        row = {"scenario": label, "k": DROP_K, "gap_ms_median": median(gaps), "gap_ms_max": max(gaps, default=None),
               "attempts": max(r["attempts"] for r in rs), "error": rs[0]["error"],
               "text_ok": all(r["text_ok"] for r in rs), "reps": len(rs)}
        mid_rows.append(row)
        mid_display.append([label, str(DROP_K), f"{row['gap_ms_median']:.1f}" if gaps else "-", f"{row['gap_ms_max']:.1f}" if gaps else "-",
                            str(row["attempts"]), row["error"], "yes" if row["text_ok"] else "NO", str(len(rs))])
    t = TIMEOUTS
    notes = [
        f"Timeouts for every request here: connect={t.connect} s, first_token={t.first_token} s, "
        f"first_token_cold={t.first_token_cold} s, stall={t.stall} s (small on purpose; defaults are 2/30/120/30 s).",
        f"FakeOllama servers on 127.0.0.1 in this process, token_delay 0, {len(TOKENS)}-token replies; "
        f"a fresh registry and Client for each of {reps} repetition(s); 2nd request right after the 1st on the same Client.",
        "'text intact' = the reply's text equals the scripted text exactly (nothing lost or repeated).",
    ]
    return {
        "name": "failover",
        "title": "3. Failover cost (TTFT with a dead first server; mid-stream gap)",
        "columns": ["first server", "request", "TTFT ms (median)", "TTFT ms (max)", "chat() call -> first token ms", "attempts", "1st attempt error", "text intact", "reps"],
        "rows": rows,
        "display_rows": display,
        "midstream": mid_rows,
        "extra_tables": [{
            "title": f"Mid-stream: first server dies after k={DROP_K} tokens; gap = last token from it -> first token from the next (StreamEvent.timestamp)",
            "columns": ["failure", "k", "gap ms (median)", "gap ms (max)", "attempts", "error", "text intact", "reps"],
            "rows": mid_display,
        }],
        "timeouts": {"connect": t.connect, "first_token": t.first_token, "first_token_cold": t.first_token_cold, "stall": t.stall},
        "notes": notes,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Failover cost benchmark")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int)
    a = ap.parse_args(argv)
    emit(run(a.quick, a.reps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
