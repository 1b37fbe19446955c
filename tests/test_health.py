"""Circuit breaker and EWMA rules (pure), and routing order over them."""

import random

import pytest

from aicortex import ModelEntry, Server
from aicortex._health import (
    BUSY_BACKOFF_S,
    MAX_COOLDOWN_S,
    TRIAL_WINDOW_S,
    Health,
    after_backoff,
    after_failure,
    after_probe,
    after_success,
    breaker_state,
    claim_trial,
    cooldown_s,
    ewma,
)
from aicortex._routing import order_candidates


def test_cooldown_grows_with_consecutive_failures_up_to_a_cap():
    assert [cooldown_s(n) for n in range(1, 5)] == [5.0, 10.0, 20.0, 40.0]
    assert cooldown_s(30) == MAX_COOLDOWN_S and cooldown_s(0) == 0


def test_breaker_closed_open_half_open_closed():
    h = Health()
    assert breaker_state(h, 100) == "closed"
    h = after_failure(h, 100, "refused")
    assert breaker_state(h, 104.9) == "open" and breaker_state(h, 105.1) == "half_open"
    assert claim_trial(h, 104) is None  # still cooling down
    trial = claim_trial(h, 106)
    assert trial.open_until == 106 + TRIAL_WINDOW_S and breaker_state(trial, 107) == "open"
    assert claim_trial(trial, 107) is None  # one trial only
    again = after_failure(trial, 107, "refused")
    assert again.failures == 2 and again.open_until == 117  # longer cooldown
    closed = after_success(again, 120, ttft_s=0.5)
    assert breaker_state(closed, 120) == "closed" and closed.failures == 0 and closed.successes == 1


def test_busy_is_a_backoff_not_a_trip():
    h = after_backoff(Health(), 100, "server busy")
    assert h.failures == 0 and h.open_until == 100 + BUSY_BACKOFF_S
    assert breaker_state(h, 101) == "open" and breaker_state(h, 103) == "closed"


def test_probe_results_trip_and_close_the_server_breaker():
    assert after_probe(Health(), 1, None) is None  # nothing to change
    down = after_probe(Health(), 1, "refused")
    assert down.failures == 1
    assert after_probe(down, 2, None).failures == 0


def test_ewma():
    assert ewma(None, 2.0) == 2.0 and ewma(2.0, None) == 2.0
    assert ewma(1.0, 2.0, alpha=0.5) == 1.5
    h = after_success(after_success(Health(), 1, ttft_s=1.0, tps=10), 2, ttft_s=2.0, tps=20, server_tps=30)
    assert h.ewma_ttft_s == pytest.approx(1.3) and h.ewma_tps == pytest.approx(13) and h.ewma_server_tps == 30


def _entries(*specs):
    out = []
    for i, (priority, loaded) in enumerate(specs):
        out.append((Server(url=f"http://s{i}:1", name=f"s{i}", priority=priority), ModelEntry("m", loaded=loaded)))
    return out


def _names(route):
    return [c.server.name for c in route.candidates]


def test_routing_warm_then_priority_then_measured_ttft():
    entries = _entries((0, False), (5, False), (0, True), (0, True), (0, True))
    health = {
        "http://s3:1": (Health(), Health(ewma_ttft_s=2.0)),
        "http://s4:1": (Health(), Health(ewma_ttft_s=0.1)),
    }
    route = order_candidates(entries, health, now=0)
    # warm first (s2 unmeasured, then s4 faster than s3), then cold by priority.
    assert _names(route) == ["s2", "s4", "s3", "s1", "s0"]


def test_routing_skips_open_breakers_and_forces_the_soonest_when_all_are_open():
    entries = _entries((0, True), (0, True), (0, True))
    open_a = after_failure(Health(), 100, "x")  # until 105
    open_b = after_failure(after_failure(Health(), 100, "x"), 100, "x")  # until 110
    route = order_candidates(entries, {"http://s0:1": (open_a, Health()), "http://s1:1": (Health(), open_b)}, now=101)
    assert _names(route) == ["s2"] and [c.server.name for c in route.skipped] == ["s0", "s1"]
    all_open = {"http://s0:1": (open_b, Health()), "http://s1:1": (open_a, Health()), "http://s2:1": (Health(), open_b)}
    route = order_candidates(entries, all_open, now=101)
    assert _names(route) == ["s1"] and route.candidates[0].state == "forced"
    # After the cooldown the server is half-open: a candidate again, flagged for its trial.
    route = order_candidates(entries, {"http://s0:1": (open_a, Health())}, now=106)
    assert route.candidates[0].server.name == "s0" and route.candidates[0].state == "half_open"


def test_randomness_only_among_measured_equals():
    entries = _entries((0, True), (0, True), (0, True))
    health = {f"http://s{i}:1": (Health(), Health(ewma_ttft_s=1.0 + i * 0.01)) for i in range(3)}
    orders = {tuple(_names(order_candidates(entries, health, rng=random.Random(seed)))) for seed in range(30)}
    assert len(orders) > 1  # equals are shuffled
    assert {tuple(_names(order_candidates(entries, {}, rng=random.Random(s)))) for s in range(10)} == {("s0", "s1", "s2")}


def test_failures_of_requests_already_in_flight_count_as_one_outage():
    """8 streams cut by one crash: the first failure opens the breaker for 5 s; the other 7
    began before it was counted, so they add to the lifetime count only."""
    from aicortex._health import after_failure

    t0 = 1000.0
    h = Health()
    for i in range(8):
        h = after_failure(h, t0 + 0.001 * i, "connection lost", started_at=t0 - 1.0)
    assert h.failures == 1 and h.total_failures == 8
    assert h.open_until == t0 + 5.0
    # A request that started after the outage was counted is a new failure: longer cooldown.
    h = after_failure(h, t0 + 6.0, "connection refused", started_at=t0 + 5.5)
    assert h.failures == 2 and h.open_until == t0 + 6.0 + 10.0


def test_equal_servers_are_ordered_by_requests_in_flight():
    from aicortex import ModelEntry, Server
    from aicortex._routing import order_candidates

    entries = [(Server(url=f"http://s{i}:11434", name=f"s{i}"), ModelEntry("m", loaded=True)) for i in range(4)]
    route = order_candidates(entries, {}, now=0.0, inflight={"http://s0:11434": 3, "http://s1:11434": 1, "http://s3:11434": 2})
    assert [c.server.name for c in route.candidates] == ["s2", "s1", "s3", "s0"]
    # Warmth and priority still come first.
    entries[0] = (Server(url="http://s0:11434", name="s0", priority=5), ModelEntry("m", loaded=True))
    route = order_candidates(entries, {}, now=0.0, inflight={"http://s0:11434": 3})
    assert route.candidates[0].server.name == "s0"


def test_a_released_trial_is_half_open_again_at_once():
    from aicortex._health import Outcome, claim_trial, outcome_changes

    now = 1000.0
    h = Health(failures=2, open_until=now - 1)
    claimed = claim_trial(h, now)
    assert claimed is not None and breaker_state(claimed, now + 1) == "open"
    (record, release), _ = outcome_changes(Outcome(server="u", model="m", kind="release", at=now + 1, trial=True))
    released = release(claimed)
    assert record == "" and released is not None and breaker_state(released, now + 1) == "half_open"
