"""Candidate ordering for one model: pure, no I/O.

Only enabled servers that list the model (Ollama /api/tags) are candidates. Among them:

1. breaker state: servers whose breakers (server-level and (server, model)) are closed
   or half-open are tried; open ones (in cooldown) are skipped. If *every* candidate is
   open, the one whose cooldown ends soonest is tried anyway, rather than failing
   without trying;
2. warm first: the model is loaded there (Ollama /api/ps at the last refresh);
3. higher ``priority``;
4. fewer requests in flight (least outstanding requests): this process's count, so
   concurrent streams spread evenly over equal servers;
5. lower measured EWMA TTFT for this (server, model); servers never measured come
   first, so a new server gets tried;
6. servers never measured in registration order; a little randomness among measured
   equals (EWMA TTFT within the same ~25 % band) when an ``rng`` is given.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from ._health import Health, breaker_state
from ._models import ModelEntry, Server
from ._session import Candidate

__all__ = ["Route", "order_candidates", "TTFT_BAND"]

#: Width of an "equal TTFT" band: TTFTs within a factor of 1.25 are equals.
TTFT_BAND = 1.25


@dataclass(frozen=True)
class Route:
    """The outcome of routing: ``candidates`` in try order, ``skipped`` (in cooldown)."""

    candidates: list[Candidate] = field(default_factory=list)
    skipped: list[Candidate] = field(default_factory=list)


_LOG_BAND = math.log(TTFT_BAND)


def _clean(h: Health | None) -> bool:
    return h is None or (not h.failures and h.open_until is None)


def _state(pair: "tuple[Health | None, Health | None] | None", now: float) -> tuple[str, float]:
    if pair is None or (_clean(pair[0]) and _clean(pair[1])):
        return "closed", 0.0
    records = [h for h in pair if h is not None]
    states = [breaker_state(h, now) for h in records]
    until = max((h.open_until or 0.0) for h in records)
    if "open" in states:
        return "open", until
    if "half_open" in states:
        return "half_open", until
    return "closed", until


def order_candidates(
    entries: Sequence[tuple[Server, ModelEntry]],
    health: "Mapping[str, tuple[Health | None, Health | None]] | None" = None,
    *,
    now: float = 0.0,
    rng: random.Random | None = None,
    inflight: Mapping[str, int] | None = None,
    cache: "dict[tuple[int, bool, str], Candidate] | None" = None,
) -> Route:
    """Order ``(server, model entry)`` pairs into a :class:`Route`.

    Args:
        entries: ``(server, entry)`` pairs of one model, from the fleet view's snapshot
            (:attr:`Snapshot.entries <aicortex.Snapshot>`; priority, then registration order).
        health: ``{url: (server health, model health)}`` (``None`` = no record); servers
            missing from it have no record at all.
        now: Unix seconds, to tell open breakers from expired cooldowns.
        rng: when given, shuffles servers whose EWMA TTFT fall in the same band.
        inflight: ``{url: requests in flight}``; fewer first among equals.
        cache: a dict that keeps the :class:`Candidate` values between calls (they are
            frozen), so routing over many servers allocates nothing per server.
    """
    health = health or {}
    inflight = inflight or {}
    if cache is None:
        cache = {}
    usable: list[tuple[tuple[Any, ...], Candidate]] = []
    skipped: list[tuple[float, Candidate]] = []
    for idx, (server, entry) in enumerate(entries):
        pair = health.get(server.url)
        state, until = _state(pair, now) if pair is not None else ("closed", 0.0)
        warm = entry.loaded
        key = (id(server), warm, state)
        cand = cache.get(key)
        if cand is None or cand.server is not server:
            cand = cache[key] = Candidate(server=server, warm=warm, state=state)
        if state == "open":
            skipped.append((until, cand))
            continue
        model_health = pair[1] if pair is not None else None
        ttft = model_health.ewma_ttft_s if model_health is not None else None
        if ttft is None or not ttft > 0:
            speed: tuple[Any, ...] = (0, 0, idx)
        else:
            speed = (1, math.floor(math.log(ttft) / _LOG_BAND), rng.random() if rng else idx)
        usable.append(((not warm, -server.priority, inflight.get(server.url, 0), speed), cand))
    usable.sort(key=_first)
    skipped.sort(key=_first)
    candidates = [c for _, c in usable]
    rest = [c for _, c in skipped]
    if not candidates and rest:
        soonest = rest.pop(0)
        candidates = [Candidate(server=soonest.server, warm=soonest.warm, state="forced")]
    return Route(candidates=candidates, skipped=rest)


def _first(item: tuple[Any, Candidate]) -> Any:
    return item[0]
