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
failure count does not grow. A caller who stops reading a stream is no penalty, and a
half-open trial it held is released (so is one that ended in HTTP 400, the caller's
mistake).

One outage, one failure: a failure of a request that was already in flight when the
previous failure of the same record was counted (``started_at < last_failure_at``) does
not lengthen the cooldown, so 8 streams broken by one outage open the breaker for 5 s,
not for the 300 s maximum.

:class:`Outcome` is what one finished attempt (or probe, or released trial) means for
health; :func:`outcome_changes` turns it into record changes. The in-memory fleet view
and the store apply the *same* changes, so the two never disagree about the rules.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Literal

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
    "release_trial",
    "try_claim",
    "ewma",
    "Outcome",
    "outcome_changes",
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
    return float(min(MAX_COOLDOWN_S, BASE_COOLDOWN_S * 2 ** min(failures - 1, 16)))


def breaker_state(h: Health, now: float) -> BreakerState:
    """``"open"`` while ``now < open_until``; else ``"half_open"`` after failures; else ``"closed"``."""
    if h.open_until is not None and now < h.open_until:
        return "open"
    return "half_open" if h.failures > 0 else "closed"


def after_failure(h: Health, now: float, error: str, started_at: float | None = None) -> Health:
    """A breaker-tripping failure: one more consecutive failure, a longer cooldown.

    ``started_at`` (Unix seconds) is when the failed request began: if it was already in
    flight when the previous failure was counted, it is the same outage, so only the
    lifetime count grows (the cooldown already running stays as it is).
    """
    if started_at is not None and h.failures and h.last_failure_at is not None and started_at < h.last_failure_at:
        return replace(h, last_error=error, total_failures=h.total_failures + 1)
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


def release_trial(h: Health, now: float) -> Health | None:
    """Give back a claimed half-open trial that ended without a verdict (the caller stopped
    reading, or HTTP 400): the breaker is half-open again at once."""
    if h.failures and h.open_until is not None and h.open_until > now:
        return replace(h, open_until=now)
    return None


def try_claim(pair: tuple[Health, Health], now: float) -> tuple[bool, tuple[Health | None, Health | None]]:
    """Admission of a (server health, (server, model) health) pair.

    Returns ``(admitted, (new server health, new model health))``: refused while either
    breaker is open (so the server-level trial is not claimed when the model-level
    breaker is open); else every half-open record is claimed for ``TRIAL_WINDOW_S``
    (``None`` = unchanged).
    """
    states = [breaker_state(h, now) for h in pair]
    if "open" in states:
        return False, (None, None)
    return True, (claim_trial(pair[0], now), claim_trial(pair[1], now))


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


@dataclass(frozen=True)
class Outcome:
    """What one finished attempt means for health (applied in memory, then to the store).

    Fields:
        server: the server's URL.
        model: the model key (``model_key``), ``""`` for a server-level event (a probe).
        kind: ``"success"``, ``"failure"`` (trips the breaker of ``scope``), ``"backoff"``
            (503/429), ``"release"`` (give back a half-open trial), ``"probe_ok"``,
            ``"probe_failed"``, or ``"none"`` (nothing to record).
        scope: for a failure, ``"server"`` or ``"model"``.
        at: Unix seconds of the outcome; ``started_at``: when the attempt began.
        error: the failure's text (already shortened).
        ttft_s, tps, server_tps: figures of a success (seconds, tokens/s), ``None`` if
            unknown or not to be trusted (e.g. the consumer, not the server, set the pace).
        trial: the attempt held a half-open trial (released when it ends without a verdict).
    """

    server: str
    model: str
    kind: str
    scope: str = ""
    at: float = 0.0
    started_at: float | None = None
    error: str | None = None
    ttft_s: float | None = None
    tps: float | None = None
    server_tps: float | None = None
    trial: bool = False


Change = Callable[[Health], "Health | None"]


def outcome_changes(o: Outcome) -> list[tuple[str, Change]]:
    """``[(record, change)]`` for an outcome: ``record`` is ``""`` (the server) or the model
    key; ``change(health) -> new health`` or ``None`` for no change."""
    now, model = o.at, o.model
    if o.kind == "success":
        return [
            ("", lambda h: after_success(h, now) if h.failures or h.open_until else None),
            (model, lambda h: after_success(h, now, ttft_s=o.ttft_s, tps=o.tps, server_tps=o.server_tps)),
        ]
    release: list[tuple[str, Change]] = []
    if o.trial:  # a trial that ends in a failure of one record gives the other record back
        release = [("", lambda h: release_trial(h, now)), (model, lambda h: release_trial(h, now))]
    if o.kind == "failure":
        record = "" if o.scope == "server" else model
        return release + [(record, lambda h: after_failure(h, now, o.error or "", o.started_at))]
    if o.kind == "backoff":
        return release + [("", lambda h: after_backoff(h, now, o.error or ""))]
    if o.kind == "probe_ok":
        return [("", lambda h: after_probe(h, now, None))]
    if o.kind == "probe_failed":
        return [("", lambda h: after_probe(h, now, o.error or "probe failed"))]
    return release
