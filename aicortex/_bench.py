"""``Client.bench``: measure each server that has a model with K short replies.

Each reply is pinned to one server (``chat(servers=[url])``, no failover, mid-stream
failures raised), so the figures are that server's own. Every attempt goes through the
client's normal bookkeeping (EWMA TTFT and tokens/s, breakers), and the p50/p95 figures
of the run are stored in the registry's ``bench`` table, where ``servers list`` and
routing can read them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

from ._exceptions import AICortexError, AllServersFailed, ConfigError, error_reason

if TYPE_CHECKING:  # pragma: no cover
    from ._client import Client

__all__ = ["BenchResult", "DEFAULT_BENCH_PROMPT", "percentile", "bench_servers"]

DEFAULT_BENCH_PROMPT = "Count from 1 to 20, separated by spaces."


def percentile(values: Sequence[float], p: float) -> float | None:
    """Linearly interpolated percentile (``p`` in 0..100) of ``values``; ``None`` if empty."""
    vals = sorted(values)
    if not vals:
        return None
    k = (len(vals) - 1) * p / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return vals[lo] + (vals[hi] - vals[lo]) * (k - lo)


@dataclass(frozen=True)
class BenchResult:
    """One server's figures over ``runs`` short replies.

    Fields: ``server`` (URL), ``name``, ``runs``, ``ok`` (replies that completed),
    ``errors`` (the reasons of the others), ``ttft_p50_s``/``ttft_p95_s`` (seconds),
    ``tps_p50``/``tps_p95`` (client-measured tokens/s), ``server_tps_p50`` (Ollama's
    ``eval_count / eval_duration``), ``measured_at`` (Unix seconds). A figure is ``None``
    when no reply gave it.
    """

    server: str
    name: str
    runs: int
    ok: int
    errors: tuple[str, ...] = field(default_factory=tuple)
    ttft_p50_s: float | None = None
    ttft_p95_s: float | None = None
    tps_p50: float | None = None
    tps_p95: float | None = None
    server_tps_p50: float | None = None
    measured_at: float = 0.0


def bench_servers(
    client: "Client",
    model: str,
    runs: int = 5,
    *,
    prompt: str = DEFAULT_BENCH_PROMPT,
    max_tokens: int | None = 32,
    warmup: int = 0,
    on_result: Callable[[BenchResult], None] | None = None,
) -> list[BenchResult]:
    """Measure every enabled server that lists ``model`` (see :meth:`Client.bench`)."""
    if runs < 1 or warmup < 0:
        raise ConfigError(f"runs must be >= 1 and warmup >= 0 (got runs={runs}, warmup={warmup})")
    options = {"num_predict": max_tokens} if max_tokens is not None else None
    out = []
    for server in client.list_model_servers(model):
        ttfts: list[float] = []
        tps: list[float] = []
        server_tps: list[float] = []
        errors: list[str] = []
        for i in range(warmup + runs):
            try:
                with client.chat(
                    prompt, model=model, stream=True, options=options, servers=[server.url], on_midstream="raise"
                ) as stream:
                    stream.text()
            except AICortexError as exc:
                if i >= warmup:
                    # One pinned server: its attempt's error says more than "all 1 servers failed".
                    cause = exc.attempts[-1].error if isinstance(exc, AllServersFailed) and exc.attempts else exc
                    errors.append(error_reason(cause))
                continue
            if i < warmup:
                continue
            if stream.ttft_s is not None:
                ttfts.append(stream.ttft_s)
            if stream.tokens_per_second is not None:
                tps.append(stream.tokens_per_second)
            if stream.usage is not None and stream.usage.tokens_per_second is not None:
                server_tps.append(stream.usage.tokens_per_second)
        result = BenchResult(
            server=server.url,
            name=server.name,
            runs=runs,
            ok=runs - len(errors),
            errors=tuple(errors),
            ttft_p50_s=percentile(ttfts, 50),
            ttft_p95_s=percentile(ttfts, 95),
            tps_p50=percentile(tps, 50),
            tps_p95=percentile(tps, 95),
            server_tps_p50=percentile(server_tps, 50),
            measured_at=time.time(),
        )
        client.registry.record_bench(model, result)
        out.append(result)
        if on_result is not None:
            on_result(result)
    return out
