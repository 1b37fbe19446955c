"""Delayed hedged requests: the policy and the race in the flow without sockets, then both
clients against loopback FakeOllama servers (the loser's server sees the disconnect)."""

from __future__ import annotations

import json

import pytest

from aicortex import ConfigError, ConnectError, HedgePolicy, Server, Timeouts
from aicortex._flow import TIMED_OUT, Adopt, Close, Drop, Open, Race, Read, Record, Start, chat_flow
from aicortex._hedge import TTFTWindows, resolve_hedge
from aicortex._session import Candidate, ChatSession
from aicortex.testing import FakeOllama, Script

from conftest import FLEET_MODEL, FLEET_TOKENS, OrderedFleet

A, B, C, D = "http://a:11434", "http://b:11434", "http://c:11434", "http://d:11434"


def line(content: str = "", done: bool = False, **extra: object) -> bytes:
    obj = {"model": "m", "message": {"role": "assistant", "content": content}, "done": done, **extra}
    return (json.dumps(obj) + "\n").encode()


DONE = line(done=True, done_reason="stop")


def cand(url, *, warm=True, state="closed"):
    return Candidate(server=Server(url=url, name=url[7:8]), warm=warm, state=state)


def policy(**kw):
    kw.setdefault("windows", TTFTWindows())
    return HedgePolicy(**kw)


def session(candidates, hedge, **kw):
    return ChatSession(
        model="m", messages=[{"role": "user", "content": "hi"}], candidates=candidates, timeouts=Timeouts(),
        hedge=hedge, **kw,
    )


def run(s, answers):
    """Drive the flow of ``s``; ``answers[kind]`` lists what each effect kind returns, in
    order. Returns (trace of effects and event types, error)."""
    flow = chat_flow(s)
    trace: list[str] = []
    send = None
    queues = {k: list(v) for k, v in answers.items()}
    while True:
        try:
            item = flow.send(send)
        except StopIteration:
            return trace, None
        except Exception as exc:
            return trace, exc
        send = None
        if isinstance(item, list):
            trace += [e.type for e in item]
            continue
        if isinstance(item, Read):
            trace += [e.type for e in item.events]
        name = type(item).__name__
        if isinstance(item, Start):
            trace.append(f"Start({item.plan.server[7:8]}#{item.plan.number})")
        elif isinstance(item, Drop):  # Adopt is a Drop too
            trace.append(f"{name}(#{item.number})")
        elif isinstance(item, Open):
            trace.append(f"Open({item.plan.server[7:8]})")
        elif isinstance(item, Record):
            trace.append(f"Record({item.outcome.kind})")
        elif isinstance(item, Close):
            trace.append("Close")
        else:
            trace.append(name)
        if isinstance(item, (Open, Read, Race)):
            send = queues[name].pop(0)


# -- the policy ---------------------------------------------------------------------------------
def test_the_delay_is_the_pairs_p95_clamped_by_floor_and_ceiling():
    w = TTFTWindows()
    p = HedgePolicy(windows=w, floor_s=0.05, ceiling_s=1.0, min_samples=20)
    assert p.delay_s(A, "m") == 1.0  # unknown: the ceiling
    for i in range(100):
        w.add(A, "m", 0.1 + i * 0.001)  # 0.100 .. 0.199
    assert p.delay_s(A, "m") == pytest.approx(0.194)  # nearest-rank p95
    for _ in range(200):
        w.add(B, "m", 0.01)
    assert p.delay_s(B, "m") == 0.05  # the floor
    for _ in range(200):
        w.add(C, "m", 9.0)
    assert p.delay_s(C, "m") == 1.0  # the ceiling


def test_the_window_slides():
    w = TTFTWindows(size=10)
    for _ in range(10):
        w.add(A, "m", 5.0)
    for _ in range(10):
        w.add(A, "m", 0.1)
    assert w.count(A, "m") == 10 and w.quantile(A, "m", 0.95) == 0.1


def test_the_budget_holds_under_1000_requests_where_every_first_attempt_is_slow():
    """Every request's first attempt misses the hedge delay; the token bucket (5 %, burst
    2) lets at most 2 + 0.05 * 1000 of them hedge, driven through the real flow."""
    p = policy(budget=0.05, burst=2.0)
    hedged = 0
    for _ in range(1000):
        s = session([cand(A), cand(B)], p)
        trace, error = run(s, {"Race": [TIMED_OUT, (1, line("Hi") + DONE)], "Read": []})
        assert error is None and s.text == "Hi"
        hedged += trace.count("Start(b#2)")
        assert trace.count("Start(a#1)") == 1
    assert hedged == p.hedges
    assert 45 <= hedged <= 2 + 0.05 * 1000  # the bucket refills at 5 %: close to the cap, never over it


def test_bad_policies_are_config_errors():
    for kw in ({"quantile": 0}, {"floor_s": 2, "ceiling_s": 1}, {"budget": -1}, {"burst": 0.5}):
        with pytest.raises(ConfigError):
            HedgePolicy(**kw)
    with pytest.raises(ConfigError, match="hedge="):
        resolve_hedge("yes", None)
    p = HedgePolicy()
    assert resolve_hedge(None, p) is p and resolve_hedge(False, p) is None and resolve_hedge(True, p) is p


# -- the race in the flow ---------------------------------------------------------------------------
def test_the_hedge_wins_and_the_first_attempt_is_dropped():
    s = session([cand(A), cand(B)], policy())
    trace, error = run(s, {"Race": [TIMED_OUT, (2, line("Hi"))], "Read": [DONE]})
    assert error is None and s.text == "Hi" and s.server == B
    assert trace == [
        "start", "Start(a#1)", "Race", "Start(b#2)", "meta", "Race", "Drop(#1)", "Adopt(#2)",
        "meta", "token", "Read", "Record(success)", "end", "Close",
    ]
    first, second = s.attempts
    assert (first.server, first.number, first.cancelled, first.ok, first.error) == (A, 1, True, False, None)
    assert (second.server, second.number, second.hedge, second.ok) == (B, 2, True, True)


def test_the_first_attempt_wins_and_the_hedge_is_dropped():
    s = session([cand(A), cand(B)], policy())
    trace, error = run(s, {"Race": [TIMED_OUT, (1, line("Hi") + DONE)], "Read": []})
    assert error is None and s.server == A
    assert "Drop(#2)" in trace and "Adopt(#1)" in trace
    assert [(a.number, a.cancelled, a.hedge) for a in s.attempts] == [(2, True, True), (1, False, False)]


def test_the_hedge_events_say_who_started_and_who_won():
    s = session([cand(A), cand(B)], policy())
    flow_events = []
    flow = chat_flow(s)
    send = None
    answers = [TIMED_OUT, (2, line("Hi") + DONE)]
    while True:
        try:
            item = flow.send(send)
        except StopIteration:
            break
        send = None
        if isinstance(item, list):
            flow_events += item
        elif isinstance(item, Race):
            send = answers.pop(0)
    hedges = [e.meta["hedge"] for e in flow_events if e.type == "meta"]
    assert hedges[0]["action"] == "start" and hedges[0]["primary"] == A and hedges[0]["primary_attempt"] == 1
    assert hedges[1] == {"action": "won", "winner": B, "attempt": 2, "cancelled": [A], "cancelled_attempts": [1]}


def test_a_racing_attempt_that_fails_ends_and_the_other_goes_on():
    s = session([cand(A), cand(B), cand(C)], policy())
    error_a = ConnectError("connection refused", server=A)
    trace, error = run(s, {"Race": [TIMED_OUT, (1, error_a), (2, line("ok") + DONE)], "Read": []})
    assert error is None and s.text == "ok" and s.server == B
    assert trace[:8] == ["start", "Start(a#1)", "Race", "Start(b#2)", "meta", "Race", "Record(failure)", "error"]
    assert "Drop(#1)" in trace and "Adopt(#2)" in trace and "Start(c#3)" not in trace
    assert [(a.number, a.ok) for a in s.attempts] == [(1, False), (2, True)]


def test_no_hedge_goes_to_a_cold_or_cooling_server():
    cold, cooling, trial = cand(B, warm=False), cand(C, state="forced"), cand(D, state="half_open")
    s = session([cand(A), cold, cooling, trial], policy())
    assert s.start() and s.next_candidate()
    s.plan_attempt(s.candidates[0])
    assert s.hedge_at() is None
    # a warm, closed server further down the list takes the hedge; the others stay for failover
    s = session([cand(A), cold, cooling, cand("http://e:11434")], policy())
    trace, error = run(s, {"Race": [TIMED_OUT, (2, line("ok") + DONE)], "Read": []})
    assert error is None and s.server == "http://e:11434" and "Start(e#2)" in trace
    assert [c.server.url for c in s.candidates[s._next_candidate:]] == [B, C]


def test_no_hedge_with_on_midstream_raise_or_without_a_policy():
    for s in (session([cand(A), cand(B)], policy(), policy="raise"), session([cand(A), cand(B)], None)):
        trace, error = run(s, {"Open": [None], "Read": [line("Hi") + DONE]})
        assert error is None and trace[1] == "Open(a)"


def test_no_hedge_after_output_reached_the_caller():
    """A failover after output (a continuation) is not raced: its first attempt is."""
    s = session([cand(A), cand(B), cand(C)], policy())
    trace, error = run(
        s,
        {
            "Race": [(1, line("Knock knock"))],
            "Read": [ConnectError("reset", server=A), line("Knock knock, who") + DONE],
            "Open": [None],
        },
    )
    assert error is None and "Open(b)" in trace and trace.count("Start(a#1)") == 1


# -- both clients over sockets -----------------------------------------------------------------------
SLOW = Script(tokens=FLEET_TOKENS, first_token_delay=5.0)
LIMITS = Timeouts(connect=2, first_token=10, first_token_cold=10, stall=5)


def test_the_loser_is_cancelled_and_its_server_sees_the_disconnect(client_kind):
    hedge = policy(floor_s=0.05, ceiling_s=0.2)
    fleet = OrderedFleet(client_kind, 2, scripts=[SLOW, Script(tokens=FLEET_TOKENS)], hedge=hedge, timeout=LIMITS)
    try:
        reply = fleet.client.chat("Why is the sky blue?", model=FLEET_MODEL)
        assert reply.text == "".join(FLEET_TOKENS) and reply.server == fleet.urls[1]
        first, second = reply.attempts
        assert first.server == fleet.urls[0] and first.cancelled and not first.ok
        assert second.server == fleet.urls[1] and second.hedge and second.ok
        assert fleet.fakes[0].wait_for_disconnect(timeout=3.0)
        assert fleet.client.fleet.inflight(fleet.urls[0]) == 0 and fleet.client.fleet.inflight(fleet.urls[1]) == 0
        assert hedge.hedges == 1
    finally:
        fleet.close()


def test_the_first_attempt_wins_and_the_hedges_server_sees_the_disconnect(client_kind):
    hedge = policy(floor_s=0.05, ceiling_s=0.1)
    scripts = [Script(tokens=FLEET_TOKENS, first_token_delay=0.4), SLOW]
    fleet = OrderedFleet(client_kind, 2, scripts=scripts, hedge=hedge, timeout=LIMITS)
    try:
        with fleet.client.chat("Why?", model=FLEET_MODEL, stream=True) as stream:
            events = list(stream)
        assert stream.server == fleet.urls[0]
        hedges = [e.meta["hedge"]["action"] for e in events if e.type == "meta" and e.meta and "hedge" in e.meta]
        assert hedges == ["start", "won"]
        assert [(a.server, a.cancelled) for a in stream.attempts] == [(fleet.urls[1], True), (fleet.urls[0], False)]
        assert fleet.fakes[1].wait_for_disconnect(timeout=3.0)
    finally:
        fleet.close()


def test_no_hedge_to_a_cold_server_over_sockets(client_kind):
    hedge = policy(floor_s=0.05, ceiling_s=0.1)
    scripts = [Script(tokens=FLEET_TOKENS, first_token_delay=0.4), Script(tokens=FLEET_TOKENS)]
    fleet = OrderedFleet(client_kind, 2, scripts=scripts, fakes_kw=[{}, {"loaded": []}], hedge=hedge, timeout=LIMITS)
    try:
        reply = fleet.client.chat("Why?", model=FLEET_MODEL)
        assert reply.server == fleet.urls[0] and len(reply.attempts) == 1
        assert fleet.fakes[1].chat_requests == [] and hedge.hedges == 0
    finally:
        fleet.close()


def test_no_hedge_to_a_server_in_cooldown_over_sockets(client_kind):
    """s1's breaker is open (it just failed): the hedge skips it and goes to s2."""
    hedge = policy(floor_s=0.05, ceiling_s=0.1)
    scripts = [SLOW, Script(status=500), Script(tokens=FLEET_TOKENS)]
    fleet = OrderedFleet(client_kind, 3, scripts=scripts, hedge=hedge, timeout=LIMITS)
    try:
        with pytest.raises(Exception):
            fleet.client.chat("Why?", model=FLEET_MODEL, servers=["s1"], hedge=False)  # opens s1's breaker
        assert len(fleet.fakes[1].chat_requests) == 1
        reply = fleet.client.chat("Why?", model=FLEET_MODEL)
        assert reply.server == fleet.urls[2] and [a.server for a in reply.attempts] == [fleet.urls[0], fleet.urls[2]]
        assert len(fleet.fakes[1].chat_requests) == 1 and hedge.hedges == 1
    finally:
        fleet.close()


def test_a_request_can_turn_hedging_on_or_off(client_kind):
    hedge = policy(floor_s=0.05, ceiling_s=0.1)
    scripts = [Script(tokens=FLEET_TOKENS, first_token_delay=0.4), Script(tokens=FLEET_TOKENS)]
    fleet = OrderedFleet(client_kind, 2, scripts=scripts, timeout=LIMITS)
    try:
        assert len(fleet.client.chat("Why?", model=FLEET_MODEL).attempts) == 1  # the client does not hedge
        fleet.fakes[0].default_script = SLOW  # so that the hedge wins, however loaded the machine
        reply = fleet.client.generate("Why?", model=FLEET_MODEL, hedge=hedge)
        assert reply.server == fleet.urls[1] and [a.cancelled for a in reply.attempts] == [True, False]
        assert fleet.fakes[0].wait_for_disconnect(timeout=3.0, path="/api/generate")
    finally:
        fleet.close()


def test_a_request_can_turn_off_the_clients_hedging(client_kind):
    hedge = policy(floor_s=0.05, ceiling_s=0.1)
    scripts = [Script(tokens=FLEET_TOKENS, first_token_delay=0.3), Script(tokens=FLEET_TOKENS)]
    fleet = OrderedFleet(client_kind, 2, scripts=scripts, hedge=hedge, timeout=LIMITS)
    try:
        reply = fleet.client.chat("Why?", model=FLEET_MODEL, hedge=False)
        assert reply.server == fleet.urls[0] and len(reply.attempts) == 1 and hedge.hedges == 0
    finally:
        fleet.close()


def test_closing_the_stream_mid_race_closes_both_attempts(client_kind):
    hedge = policy(floor_s=0.05, ceiling_s=0.1)
    fleet = OrderedFleet(client_kind, 2, scripts=[SLOW, SLOW], hedge=hedge, timeout=LIMITS)
    try:
        stream = fleet.client.chat("Why?", model=FLEET_MODEL, stream=True)
        events = iter(stream)  # held, so that leaving the loop does not close the stream
        for event in events:
            if event.type == "meta" and event.meta and event.meta.get("hedge", {}).get("action") == "start":
                break
        assert fleet.fakes[1].wait_for_requests(1, "/api/chat")  # the hedge reached its server
        events.close()  # closes the stream
        assert stream.closed_early
        assert fleet.fakes[0].wait_for_disconnect(timeout=3.0)
        assert fleet.fakes[1].wait_for_disconnect(timeout=3.0)
        assert fleet.client.fleet.inflight(fleet.urls[0]) == 0 and fleet.client.fleet.inflight(fleet.urls[1]) == 0
    finally:
        fleet.close()
