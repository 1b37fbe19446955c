"""Delayed hedged requests: when to send a second attempt, where, and how many (sans-IO).

A hedged request ("The Tail at Scale", Dean & Barroso, CACM 2013) sends a second copy of
a request only once the first has waited longer than most requests do, and keeps the
copy that answers first. For a streamed reply "answers" means its first token: the first
attempt to produce output wins, and the other is closed at once (its server sees the
disconnect and stops generating).

This module holds the decisions; ``_session.ChatSession`` asks them and ``_flow``
runs the race, so the sync and async drivers only perform I/O:

* **when**: after the p95 TTFT of the first attempt's (server, model), taken from
  :data:`TTFT_WINDOWS`, this process's window of recent TTFTs per (server, model),
  clamped to ``[floor_s, ceiling_s]``; ``ceiling_s`` until ``min_samples`` TTFTs are known;
* **where**: the next candidate in routing order whose model is warm (Ollama
  ``/api/ps``) and whose circuit breaker is closed; never a cold server, a server in
  cooldown, or one whose half-open trial would be spent on it;
* **how many**: one hedge per request at most, and a token bucket caps them: each
  request adds ``budget`` tokens (up to ``burst``), a hedge takes one, so over N
  requests at most ``burst + budget * N`` extra attempts are sent.

Never with ``on_midstream="raise"`` (that caller asked for no second server), never for
a continuation (only before anything reached the caller).
"""

from __future__ import annotations

import bisect
import collections
import math
import threading
from typing import Any, Iterable, Mapping

from ._exceptions import ConfigError

__all__ = ["HedgePolicy", "TTFTWindows", "TTFT_WINDOWS", "resolve_hedge"]


class TTFTWindows:
    """Recent TTFTs (seconds) per (server URL, model key), for quantiles.

    A sliding window of the last ``size`` successful attempts' TTFTs per key, kept
    sorted as they come in (``bisect``), so a quantile is one index: exact over the
    window, O(size) per insert, and old figures age out as the window slides, so a server
    that got faster is believed after ``size`` requests. Thread-safe.
    """

    def __init__(self, size: int = 200) -> None:
        if size < 1:
            raise ConfigError("the TTFT window size must be >= 1")
        self.size = size
        self._lock = threading.Lock()
        self._order: dict[tuple[str, str], collections.deque[float]] = {}
        self._sorted: dict[tuple[str, str], list[float]] = {}

    def add(self, server: str, model: str, ttft_s: float) -> None:
        """Remember one attempt's TTFT (seconds) for (server, model key)."""
        if not (ttft_s >= 0.0) or math.isinf(ttft_s):
            return
        key = (server, model)
        with self._lock:
            order = self._order.get(key)
            if order is None:
                order = self._order[key] = collections.deque()
                self._sorted[key] = []
            ranked = self._sorted[key]
            if len(order) >= self.size:
                old = order.popleft()
                del ranked[bisect.bisect_left(ranked, old)]
            order.append(ttft_s)
            bisect.insort(ranked, ttft_s)

    def count(self, server: str, model: str) -> int:
        """How many TTFTs the window of (server, model) holds."""
        return len(self._order.get((server, model), ()))

    def quantile(self, server: str, model: str, q: float, *, min_samples: int = 1) -> float | None:
        """The ``q`` quantile (0..1, nearest rank) of (server, model)'s window, seconds;
        ``None`` with fewer than ``min_samples`` figures."""
        with self._lock:
            ranked = self._sorted.get((server, model))
            if not ranked or len(ranked) < max(1, min_samples):
                return None
            return ranked[min(len(ranked) - 1, max(0, math.ceil(q * len(ranked)) - 1))]

    def server_quantiles(self, server: str, qs: Iterable[float] = (0.5, 0.95)) -> tuple[int, list[float | None]]:
        """``(count, [quantile...])`` over every model of ``server`` together (for
        ``aicortex top``)."""
        with self._lock:
            merged = sorted(v for (url, _), ranked in self._sorted.items() if url == server for v in ranked)
        if not merged:
            return 0, [None for _ in qs]
        return len(merged), [merged[min(len(merged) - 1, max(0, math.ceil(q * len(merged)) - 1))] for q in qs]

    def clear(self) -> None:
        """Forget every figure (tests)."""
        with self._lock:
            self._order.clear()
            self._sorted.clear()


#: This process's recent TTFTs, fed by every client's successful attempts (``FleetView.record``).
TTFT_WINDOWS = TTFTWindows()


class HedgePolicy:
    """When, where and how often a request is hedged (see the module docstring).

    Args:
        quantile: hedge once the first attempt waited longer than this quantile of its
            (server, model)'s recent TTFTs (default 0.95, "the p95").
        floor_s: never hedge sooner than this many seconds after the first attempt began
            (a fast server's p95 of 20 ms would otherwise hedge on noise).
        ceiling_s: always hedge by this many seconds (also the delay while fewer than
            ``min_samples`` TTFTs of the pair are known).
        budget: extra attempts per request the token bucket allows over time (0.05 = at
            most ~5 % more requests).
        burst: the bucket's size: hedges allowed at once before the rate applies (it
            starts full).
        min_samples: TTFTs needed before the quantile is trusted.
        windows: the TTFT windows to read (default: this process's :data:`TTFT_WINDOWS`).

    One policy object is one budget: a client's ``hedge=True`` makes one policy for the
    client; pass the same object to several clients to share a budget. Thread-safe.

    Raises:
        ConfigError: a quantile outside (0, 1], a negative delay, ``floor_s > ceiling_s``,
            a negative budget, or ``burst < 1``.
    """

    def __init__(
        self,
        *,
        quantile: float = 0.95,
        floor_s: float = 0.1,
        ceiling_s: float = 2.0,
        budget: float = 0.05,
        burst: float = 10.0,
        min_samples: int = 20,
        windows: TTFTWindows | None = None,
    ) -> None:
        if not 0.0 < quantile <= 1.0:
            raise ConfigError(f"hedge quantile={quantile!r}: pass a number in (0, 1], e.g. 0.95")
        if floor_s < 0 or ceiling_s < 0 or floor_s > ceiling_s:
            raise ConfigError(f"hedge floor_s={floor_s!r}, ceiling_s={ceiling_s!r}: need 0 <= floor_s <= ceiling_s (seconds)")
        if budget < 0:
            raise ConfigError(f"hedge budget={budget!r}: pass the share of extra attempts allowed, e.g. 0.05")
        if burst < 1:
            raise ConfigError(f"hedge burst={burst!r}: the bucket must hold at least one hedge")
        self.quantile = quantile
        self.floor_s = floor_s
        self.ceiling_s = ceiling_s
        self.budget = budget
        self.burst = burst
        self.min_samples = min_samples
        self.windows = windows if windows is not None else TTFT_WINDOWS
        self._lock = threading.Lock()
        self._tokens = float(burst)
        #: Requests seen and hedges sent under this policy.
        self.requests = 0
        self.hedges = 0

    def __repr__(self) -> str:
        return (
            f"HedgePolicy(quantile={self.quantile}, floor_s={self.floor_s}, ceiling_s={self.ceiling_s}, "
            f"budget={self.budget}, burst={self.burst})"
        )

    def delay_s(self, server: str, model: str) -> float:
        """Seconds to wait for the first token of an attempt on (server, model key) before
        hedging: its recent TTFT quantile clamped to ``[floor_s, ceiling_s]``."""
        q = self.windows.quantile(server, model, self.quantile, min_samples=self.min_samples)
        if q is None:
            return self.ceiling_s
        return min(self.ceiling_s, max(self.floor_s, q))

    def request(self) -> None:
        """A request under this policy began: it adds ``budget`` tokens (up to ``burst``)."""
        with self._lock:
            self.requests += 1
            self._tokens = min(self.burst, self._tokens + self.budget)

    def try_spend(self) -> bool:
        """Take one token for a hedge; ``False`` when the bucket is empty (no hedge)."""
        with self._lock:
            if self._tokens < 1.0:
                return False
            self._tokens -= 1.0
            self.hedges += 1
            return True

    @property
    def tokens(self) -> float:
        """Hedges the bucket allows right now (fractional)."""
        return self._tokens


def resolve_hedge(value: Any, default: "HedgePolicy | None") -> "HedgePolicy | None":
    """The policy of one request: ``None`` (the client's), ``False`` (none), ``True`` (the
    client's policy, or a default one), or a :class:`HedgePolicy`.

    Raises:
        ConfigError: anything else.
    """
    if value is None:
        return default
    if value is False:
        return None
    if value is True:
        return default if default is not None else _default_policy()
    if isinstance(value, HedgePolicy):
        return value
    raise ConfigError(f"hedge={value!r}: pass True, False, None or an aicortex.HedgePolicy(...)")


_DEFAULT: HedgePolicy | None = None
_DEFAULT_LOCK = threading.Lock()


def _default_policy() -> HedgePolicy:
    """The process's shared policy for ``hedge=True`` on a request of a client without one."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = HedgePolicy()
        return _DEFAULT


def hedge_meta(**kw: Any) -> Mapping[str, Any]:
    """The ``meta`` of a hedge event: ``{"hedge": {...}}``."""
    return {"hedge": kw}
