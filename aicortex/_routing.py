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

__all__ = ["Route", "RouteCache", "order_candidates", "TTFT_BAND"]

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



class RouteCache:
    """:func:`order_candidates` for a large fleet: each model's order is kept between
    calls and fixed up server by server, so a route costs about the same with 1,000
    servers as with 10 (``benchmarks/bench_scale.py``).

    The fleet view calls :meth:`touch` when a server's health record or in-flight count
    changes and :meth:`reset` when it reloads the snapshot; :meth:`route` then re-sorts
    only the touched servers (bisect), and rebuilds a model's order when one of its
    cooldowns ran out or its entries changed.

    The order is :func:`order_candidates`' (a test compares them after random changes),
    with one difference when ``rng`` is given: the servers that are equal to the first
    one up to the random tie-break (same warm state, priority, in-flight count and TTFT
    band) are *rotated* by a random offset rather than shuffled with the rest of their
    band: the first choice is spread evenly among them just the same.

    Thread-safe: routes read a published, immutable order; fix-ups take a short lock.
    """

    def __init__(self) -> None:
        import threading

        self._lock = threading.Lock()
        self._models: dict[str, _ModelOrder] = {}
        self._cands: dict[tuple[int, bool, str], Candidate] = {}

    def reset(self) -> None:
        """Forget every order (after a reload: servers, entries or health changed)."""
        with self._lock:
            self._models = {}
            self._cands = {}

    def touch(self, url: str, record: str = "") -> None:
        """``url`` changed: its ``record`` health (a model key: that model's order), or its
        server-level health or in-flight count (``""``: every model's order)."""
        with self._lock:
            if record:
                mo = self._models.get(record)
                if mo is not None:
                    mo.dirty.add(url)
            else:
                for mo in self._models.values():
                    mo.dirty.add(url)

    def route(
        self,
        key: str,
        entries: Sequence[tuple[Server, ModelEntry]],
        health: "Mapping[tuple[str, str], Health]",
        *,
        now: float,
        rng: random.Random | None = None,
        inflight: Mapping[str, int] | None = None,
    ) -> Route:
        """The :class:`Route` for model ``key`` (see :func:`order_candidates`); ``health``
        is the fleet view's ``{(url, record): Health}``, ``inflight`` ``{url: requests}``."""
        if inflight is None:
            inflight = {}
        mo = self._models.get(key)
        if mo is None or mo.entries is not entries or mo.dirty or now >= mo.view.next_change:
            with self._lock:
                mo = self._models.get(key)
                if mo is None or mo.entries is not entries or now >= mo.view.next_change:
                    mo = _ModelOrder(key, entries)
                    mo.build(health, now, inflight, self._cands)
                    self._models[key] = mo
                elif mo.dirty:
                    mo.fix(health, now, inflight, self._cands)
        view = mo.view
        candidates = list(view.cands)
        if rng is not None and view.head > 1:
            r = rng.randrange(view.head)
            candidates[: view.head] = candidates[r : view.head] + candidates[:r]
        rest = list(view.skipped)
        if not candidates and rest:
            soonest = rest.pop(0)
            candidates = [Candidate(server=soonest.server, warm=soonest.warm, state="forced")]
        return Route(candidates=candidates, skipped=rest)


class _View:
    """One published order of a model: immutable once made."""

    __slots__ = ("cands", "skipped", "head", "next_change")

    def __init__(self, items: "list[tuple[tuple[Any, ...], Candidate]]", skipped: "list[tuple[float, int, Candidate]]", next_change: float) -> None:
        import bisect
        from operator import itemgetter

        self.cands: tuple[Candidate, ...] = tuple(map(itemgetter(1), items))
        self.skipped: tuple[Candidate, ...] = tuple(map(itemgetter(2), skipped))
        self.next_change = next_change
        # The run of servers equal to the first up to the random tie-break (measured, same band).
        self.head = 0
        if items:
            warm, prio, busy, speed = items[0][0]
            if speed[0] == 1:
                self.head = bisect.bisect_left(items, (warm, prio, busy, (1, speed[1] + 1)), key=_first)


class _ModelOrder:
    """The sorted candidates of one model, fixed up server by server."""

    def __init__(self, key: str, entries: Sequence[tuple[Server, ModelEntry]]) -> None:
        self.key = key
        self.entries = entries
        self.index = {server.url: i for i, (server, _) in enumerate(entries)}
        self.dirty: set[str] = set()
        self.items: list[tuple[tuple[Any, ...], Candidate]] = []
        self.skipped: list[tuple[float, int, Candidate]] = []
        self.item_of: dict[str, Any] = {}
        self.until: dict[str, float] = {}
        self.view = _View([], [], float("-inf"))

    def _item(
        self,
        idx: int,
        health: "Mapping[tuple[str, str], Health]",
        now: float,
        inflight: Mapping[str, int],
        cands: dict[tuple[int, bool, str], Candidate],
    ) -> tuple[bool, Any, float]:
        """``(usable, item, change)`` of the server at ``idx``: its sort item (as in
        :func:`order_candidates`) and when its breaker state changes by itself."""
        server, entry = self.entries[idx]
        url = server.url
        srv, mod = health.get((url, "")), health.get((url, self.key))
        pair = (srv, mod) if srv is not None or mod is not None else None
        state, until = _state(pair, now) if pair is not None else ("closed", 0.0)
        warm = entry.loaded
        ckey = (id(server), warm, state)
        cand = cands.get(ckey)
        if cand is None or cand.server is not server:
            cand = cands[ckey] = Candidate(server=server, warm=warm, state=state)
        change = min(
            (h.open_until for h in (srv, mod) if h is not None and h.open_until is not None and h.open_until > now),
            default=math.inf,
        )
        if state == "open":
            return False, (until, idx, cand), change
        ttft = mod.ewma_ttft_s if mod is not None else None
        if ttft is None or not ttft > 0:
            speed: tuple[Any, ...] = (0, 0, idx)
        else:
            speed = (1, math.floor(math.log(ttft) / _LOG_BAND), idx)
        return True, ((not warm, -server.priority, inflight.get(url, 0), speed), cand), change

    def build(
        self,
        health: "Mapping[tuple[str, str], Health]",
        now: float,
        inflight: Mapping[str, int],
        cands: dict[tuple[int, bool, str], Candidate],
    ) -> None:
        items: list[tuple[tuple[Any, ...], Candidate]] = []
        skipped: list[tuple[float, int, Candidate]] = []
        for idx in range(len(self.entries)):
            usable, item, change = self._item(idx, health, now, inflight, cands)
            (items if usable else skipped).append(item)
            url = self.entries[idx][0].url
            self.item_of[url] = item
            self.until[url] = change
        items.sort(key=_first)
        skipped.sort(key=_skip_key)
        self.items, self.skipped = items, skipped
        self.dirty = set()
        self._publish()

    def fix(
        self,
        health: "Mapping[tuple[str, str], Health]",
        now: float,
        inflight: Mapping[str, int],
        cands: dict[tuple[int, bool, str], Candidate],
    ) -> None:
        import bisect

        dirty, self.dirty = self.dirty, set()
        for url in dirty:
            idx = self.index.get(url)
            if idx is None:
                continue
            old = self.item_of[url]
            if isinstance(old[0], tuple):
                at = bisect.bisect_left(self.items, old[0], key=_first)
                if at < len(self.items) and self.items[at] is old:
                    del self.items[at]
            else:
                at = bisect.bisect_left(self.skipped, _skip_key(old), key=_skip_key)
                if at < len(self.skipped) and self.skipped[at] is old:
                    del self.skipped[at]
            usable, item, change = self._item(idx, health, now, inflight, cands)
            if usable:
                bisect.insort(self.items, item, key=_first)
            else:
                bisect.insort(self.skipped, item, key=_skip_key)
            self.item_of[url] = item
            self.until[url] = change
        self._publish()

    def _publish(self) -> None:
        self.view = _View(self.items, self.skipped, min(self.until.values(), default=math.inf))


def _skip_key(item: tuple[float, int, Candidate]) -> tuple[float, int]:
    return item[0], item[1]
