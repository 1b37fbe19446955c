"""Circuit breakers and EWMA metrics: pure functions over frozen values, no I/O.

There is one :class:`Health` record per server (``model == ""``: connection-level
failures) and one per (server, model) (model-level failures such as a 404 or a runner
crash, plus the measured figures). The registry stores them so that several processes
and later runs share them; the functions here decide the new state.

Circuit breaker:

* **closed**: ``failures == 0``; the server is used normally.
* **open**: after a failure, for a cooldown of ``BASE_COOLDOWN_S * 2**(failures-1)``
  seconds, at most ``MAX_COOLDOWN_S``: the server is not contacted.
* **half-open**: the cooldown is over but the last outcome was a failure: exactly one
  request (claimed atomically in the registry, for ``TRIAL_WINDOW_S``) may try it. A
  success closes the breaker; a failure opens it again with a longer cooldown.

A 503 "server busy" or 429 is a short backoff (``BUSY_BACKOFF_S``), not a trip: the
failure count does not grow. A caller who stops reading a stream is no penalty.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

__all__ = [
    "BASE_COOLDOWN_S",
    "MAX_COOLDOWN_S",
    "BUSY_BACKOFF_S",
    "TRIAL_WINDOW_S",
    "EWMA_ALPHA",
    "Health",
    "BreakerState",
    "cooldown_s",
    "breaker_state",
    "after_failure",
    "after_backoff",
    "after_success",
    "after_probe",
    "claim_trial",
    "ewma",
]

#: First cooldown after a failure, seconds; doubles with each consecutive failure.
BASE_COOLDOWN_S = 5.0
#: Longest cooldown, seconds.
MAX_COOLDOWN_S = 300.0
#: Pause after a 503 "server busy" or a 429, seconds (not a breaker trip).
BUSY_BACKOFF_S = 2.0
#: How long a claimed half-open trial keeps other requests away, seconds.
TRIAL_WINDOW_S = 30.0
#: Weight of the newest sample in the exponentially weighted moving averages.
EWMA_ALPHA = 0.3

BreakerState = Literal["closed", "open", "half_open"]


@dataclass(frozen=True)
class Health:
    """Breaker state and measured figures of one server (``model == ""``) or (server, model).

    Fields:
        failures: consecutive failures (0 = breaker closed).
        open_until: Unix seconds until which the server is not contacted (cooldown,
            backoff or a claimed trial), or ``None``.
        last_error: text of the last failure.
        successes, total_failures: counts over the record's lifetime.
        ewma_ttft_s: EWMA of TTFT, seconds.
        ewma_tps: EWMA of client-measured tokens/s.
        ewma_server_tps: EWMA of server-reported tokens/s (``eval_count / eval_duration``).
        last_success_at, last_failure_at: Unix seconds.
    """

    failures: int = 0
    open_until: float | None = None
    last_error: str | None = None
    successes: int = 0
    total_failures: int = 0
    ewma_ttft_s: float | None = None
    ewma_tps: float | None = None
    ewma_server_tps: float | None = None
    last_success_at: float | None = None
    last_failure_at: float | None = None


def cooldown_s(failures: int) -> float:
    """Cooldown after the ``failures``-th consecutive failure: 5, 10, 20 ... up to 300 s."""
    if failures <= 0:
        return 0.0
    return min(MAX_COOLDOWN_S, BASE_COOLDOWN_S * 2 ** min(failures - 1, 16))


def breaker_state(h: Health, now: float) -> BreakerState:
    """``"open"`` while ``now < open_until``; else ``"half_open"`` after failures; else ``"closed"``."""
    if h.open_until is not None and now < h.open_until:
        return "open"
    return "half_open" if h.failures > 0 else "closed"


def after_failure(h: Health, now: float, error: str) -> Health:
    """A breaker-tripping failure: one more consecutive failure, a longer cooldown."""
    failures = h.failures + 1
    return replace(
        h,
        failures=failures,
        open_until=now + cooldown_s(failures),
        last_error=error,
        total_failures=h.total_failures + 1,
        last_failure_at=now,
    )


def after_backoff(h: Health, now: float, error: str) -> Health:
    """A 503/429: stay away for ``BUSY_BACKOFF_S`` without counting a failure."""
    until = now + BUSY_BACKOFF_S
    return replace(h, open_until=max(until, h.open_until or 0.0), last_error=error, last_failure_at=now)


def after_probe(h: Health, now: float, error: str | None) -> Health | None:
    """A discovery probe (Ollama /api/version, /api/tags) of the server: a failure trips
    the server-level breaker, a success closes it. ``None`` when nothing changes."""
    if error is not None:
        return after_failure(h, now, error)
    if h.failures or h.open_until:
        return replace(h, failures=0, open_until=None)
    return None


def claim_trial(h: Health, now: float) -> Health | None:
    """Claim the half-open trial: the new state, or ``None`` if not half-open now."""
    if breaker_state(h, now) != "half_open":
        return None
    return replace(h, open_until=now + TRIAL_WINDOW_S)


def ewma(old: float | None, sample: float | None, alpha: float = EWMA_ALPHA) -> float | None:
    """Exponentially weighted moving average; a ``None`` sample leaves it unchanged."""
    if sample is None:
        return old
    if old is None:
        return sample
    return alpha * sample + (1 - alpha) * old


def after_success(
    h: Health,
    now: float,
    *,
    ttft_s: float | None = None,
    tps: float | None = None,
    server_tps: float | None = None,
) -> Health:
    """A completed reply: close the breaker and fold the figures into the EWMAs."""
    return replace(
        h,
        failures=0,
        open_until=None,
        successes=h.successes + 1,
        ewma_ttft_s=ewma(h.ewma_ttft_s, ttft_s),
        ewma_tps=ewma(h.ewma_tps, tps),
        ewma_server_tps=ewma(h.ewma_server_tps, server_tps),
        last_success_at=now,
    )
