"""RouteCache: the incremental candidate order the fleet view routes with is exactly
order_candidates' order, after any sequence of health and in-flight changes."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from aicortex._health import Health
from aicortex._models import ModelEntry, Server
from aicortex._routing import RouteCache, order_candidates

KEY = "m:latest"
NOW = 1_000_000.0


def _fleet(rng, n):
    return [(Server(url=f"http://h{i}:1", name=f"h{i}", priority=rng.choice((0, 0, 1, 2))), ModelEntry(KEY, loaded=rng.random() < 0.3))
            for i in range(n)]


def _random_health(rng):
    roll = rng.random()
    if roll < 0.3:
        return None
    if roll < 0.5:  # open, or half-open (cooldown over)
        return Health(failures=1, open_until=NOW + rng.choice((-5, 5, 50)))
    return Health(ewma_ttft_s=rng.choice((0.1, 0.11, 0.3, 1.0, 2.5)), open_until=rng.choice((None, None, NOW + 2)))


def _expected(entries, health, inflight, now):
    pairs = {}
    for server, _ in entries:
        srv, mod = health.get((server.url, "")), health.get((server.url, KEY))
        if srv is not None or mod is not None:
            pairs[server.url] = (srv, mod)
    return order_candidates(entries, pairs, now=now, inflight=inflight)


def _shape(route):
    return [(c.server.url, c.state) for c in route.candidates], [(c.server.url, c.state) for c in route.skipped]


@pytest.mark.parametrize("seed", range(12))
def test_the_cached_order_is_order_candidates_after_random_changes(seed):
    rng = random.Random(seed)
    entries = _fleet(rng, rng.choice((1, 5, 40)))
    health, inflight = {}, {}
    cache = RouteCache()
    now = NOW
    for step in range(60):
        server = rng.choice(entries)[0]
        what = rng.random()
        if what < 0.4:
            record = rng.choice(("", KEY))
            h = _random_health(rng)
            if h is None:
                health.pop((server.url, record), None)
            else:
                health[(server.url, record)] = h
            cache.touch(server.url, record)
        elif what < 0.7:
            inflight[server.url] = max(0, inflight.get(server.url, 0) + rng.choice((1, 1, -1)))
            cache.touch(server.url)
        else:
            now += rng.choice((0.0, 1.0, 6.0))  # cooldowns run out by themselves
        got = cache.route(KEY, entries, health, now=now, inflight=inflight)
        assert _shape(got) == _shape(_expected(entries, health, inflight, now)), step


def test_a_server_level_change_reorders_every_model():
    entries = [(Server(url=f"http://h{i}:1", name=f"h{i}"), ModelEntry(KEY)) for i in range(3)]
    other = [(s, ModelEntry("n:latest")) for s, _ in entries]
    health: dict = {}
    cache = RouteCache()
    for key, e in ((KEY, entries), ("n:latest", other)):
        assert [c.server.name for c in cache.route(key, e, health, now=NOW).candidates] == ["h0", "h1", "h2"]
    health[("http://h0:1", "")] = Health(failures=1, open_until=NOW + 5)
    cache.touch("http://h0:1", "")
    for key, e in ((KEY, entries), ("n:latest", other)):
        route = cache.route(key, e, health, now=NOW)
        assert [c.server.name for c in route.candidates] == ["h1", "h2"] and [c.server.name for c in route.skipped] == ["h0"]
    assert [c.state for c in cache.route(KEY, entries, health, now=NOW + 6).candidates] == ["half_open", "closed", "closed"]


def test_with_an_rng_the_first_choice_is_spread_among_equal_servers_only():
    entries = [(Server(url=f"http://h{i}:1", name=f"h{i}"), ModelEntry(KEY)) for i in range(5)]
    health = {(f"http://h{i}:1", KEY): Health(ewma_ttft_s=0.10 if i < 4 else 0.5) for i in range(5)}
    cache = RouteCache()
    rng = random.Random(7)
    firsts = Counter()
    for _ in range(400):
        order = [c.server.name for c in cache.route(KEY, entries, health, now=NOW, rng=rng).candidates]
        assert sorted(order) == ["h0", "h1", "h2", "h3", "h4"] and order[-1] == "h4"  # the slow one stays last
        firsts[order[0]] += 1
    assert set(firsts) == {"h0", "h1", "h2", "h3"} and min(firsts.values()) > 50
