"""``bench_servers``: what ``aicortex bench -m MODEL [--runs K]`` needs from the library.

Measures every server that lists ``model`` with K short streamed replies each, pinned to
that one server (no failover), and returns p50/p95 TTFT and tokens/s per server. Each
attempt goes through the client's normal bookkeeping, so the figures also land in the
registry's per-(server, model) metrics (EWMA TTFT, EWMA client tokens/s, EWMA
server-reported tokens/s) and breakers, where routing reads them.

Written to be moved into the library as is (standard library + aicortex only). It uses
three private pieces of ``Client`` because the public API has no way to send a request to
one chosen server: ``Client._transport``, ``Client._record_attempt`` and the
``ChatSession``/``Stream`` constructors. A public ``Client.chat(..., server=URL)`` (or
``servers=[...]``, routing restricted to those) would remove all three.

    from aicortex import Client
    from fleet_bench import bench_servers
    with Client() as client:
        for row in bench_servers(client, "llama3.2", runs=5):
            print(row["name"], row["ttft_p50_s"], row["tps_p50"])
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Sequence

__all__ = ["bench_servers", "DEFAULT_PROMPT"]

DEFAULT_PROMPT = "Count from 1 to 20, separated by spaces."


def _pct(values: Sequence[float], p: float) -> float | None:
    """Linear-interpolated percentile (``p`` in 0..100); ``None`` for no values."""
    vals = sorted(values)
    if not vals:
        return None
    k = (len(vals) - 1) * p / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return vals[lo] + (vals[hi] - vals[lo]) * (k - lo)


def bench_servers(
    client: Any,
    model: str,
    runs: int = 5,
    *,
    prompt: str = DEFAULT_PROMPT,
    max_tokens: int | None = 32,
    servers: Sequence[str] | None = None,
    warmup: int = 0,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Benchmark each server that lists ``model``: ``runs`` short streamed replies each.

    Args:
        client: an :class:`aicortex.Client` (its registry, timeouts and HTTP pool are used;
            every attempt is recorded in its registry's metrics and breakers).
        model: the model to run (as in ``chat(model=...)``).
        runs: measured replies per server (K).
        prompt: the user message of each reply.
        max_tokens: ``options.num_predict`` (``None``: the server's default).
        servers: URLs or names to measure; default every enabled server listing the
            model, in routing order, including those whose breaker is open.
        warmup: extra replies per server before the measured ones (e.g. 1 to load a
            cold model); recorded in the registry too, left out of the figures.
        on_result: called with each server's dict as soon as it is done.

    Returns one dict per server, in order::

        {"server": url, "name": str, "runs": K, "ok": n, "errors": [str, ...],
         "ttft_p50_s", "ttft_p95_s",            # Stream.ttft_s (request -> first token)
         "tps_p50", "tps_p95",                  # Stream.tokens_per_second (client-measured)
         "server_tps_p50", "server_tps_p95",    # Stream.usage.tokens_per_second (eval_count/eval_duration)
         "tokens_p50",                          # content tokens (chunks) per reply
         "ewma_ttft_s", "ewma_tps", "ewma_server_tps"}   # the registry's metrics afterwards

    Figures are ``None`` when no run succeeded (or, for tokens/s, a reply had < 2 tokens).

    Raises:
        ModelNotFound: no enabled server lists ``model``.
        ConfigError: bad ``runs`` or ``warmup``.
    """
    from aicortex import AICortexError, ConfigError
    from aicortex._protocol import build_messages
    from aicortex._session import Candidate, ChatSession
    from aicortex._stream import Stream

    if runs < 1 or warmup < 0:
        raise ConfigError(f"runs must be >= 1 and warmup >= 0 (got runs={runs}, warmup={warmup})")
    route = client.route(model)
    cands = list(route.candidates) + list(route.skipped)
    if servers is not None:
        wanted = {client.registry.get(s).url for s in servers}
        cands = [c for c in cands if c.server.url in wanted]
    options = {"num_predict": max_tokens} if max_tokens is not None else None
    out: list[dict[str, Any]] = []
    for cand in cands:
        url = cand.server.url
        pinned = Candidate(server=cand.server, warm=cand.warm, state="forced")
        ttfts: list[float] = []
        tps: list[float] = []
        server_tps: list[float] = []
        tokens: list[float] = []
        errors: list[str] = []
        for i in range(warmup + runs):
            session = ChatSession(
                model=model,
                messages=build_messages(prompt),
                candidates=[pinned],
                timeouts=client.timeouts,
                policy="raise",
                request={"options": options},
            )
            stream = Stream(session, client._transport, on_attempt=lambda a, s=session: client._record_attempt(model, a, s))
            n = 0
            try:
                with stream:
                    for ev in stream:
                        if ev.type == "token":
                            n += 1
            except AICortexError as exc:
                if i >= warmup:
                    errors.append(f"{type(exc).__name__}: {exc}")
                continue
            if i < warmup:
                continue
            tokens.append(n)
            if stream.ttft_s is not None:
                ttfts.append(stream.ttft_s)
            if stream.tokens_per_second is not None:
                tps.append(stream.tokens_per_second)
            if stream.usage is not None and stream.usage.tokens_per_second is not None:
                server_tps.append(stream.usage.tokens_per_second)
        health = client.registry.health(url, model)
        row = {
            "server": url,
            "name": cand.server.name,
            "runs": runs,
            "ok": len(tokens),
            "errors": errors,
            "ttft_p50_s": _pct(ttfts, 50),
            "ttft_p95_s": _pct(ttfts, 95),
            "tps_p50": _pct(tps, 50),
            "tps_p95": _pct(tps, 95),
            "server_tps_p50": _pct(server_tps, 50),
            "server_tps_p95": _pct(server_tps, 95),
            "tokens_p50": _pct(tokens, 50),
            "ewma_ttft_s": health.ewma_ttft_s,
            "ewma_tps": health.ewma_tps,
            "ewma_server_tps": health.ewma_server_tps,
            "measured_at": time.time(),
        }
        out.append(row)
        if on_result is not None:
            on_result(row)
    return out
