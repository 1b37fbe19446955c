"""chat() against real loopback FakeOllama servers: every failure kind, before the first
token and after a few tokens, under each mid-stream policy."""

from __future__ import annotations

import threading

import pytest

from aicortex import (
    AllServersFailed,
    BadRequest,
    Client,
    ConfigError,
    ModelEntry,
    ModelNotFound,
    Registry,
    Reply,
    Stream,
    Timeouts,
)
from aicortex.testing import FakeOllama, Script, blackhole_listener, closed_port_url
from conftest import make_client

pytestmark = pytest.mark.timeout(30)

TOKENS = ("The", " sky", " is", " blue", " because", " of", " Rayleigh", " scattering", ".")
FULL = "".join(TOKENS)
FAST = Timeouts(connect=0.5, first_token=0.8, first_token_cold=0.8, stall=0.8)
MODEL = "llama3.2"


class Fleet:
    """N fake servers registered (in order) in an in-memory registry, already refreshed."""

    def __init__(self, n: int, kind: str = "sync", **client_kw):
        self.fakes = [FakeOllama(models=[MODEL], script=Script(tokens=TOKENS)).start() for _ in range(n)]
        self.registry = Registry.memory()
        for i, f in enumerate(self.fakes):
            self.registry.add(f.url, name=f"s{i}")
        client_kw.setdefault("timeout", FAST)
        self.client = make_client(kind, self.registry, **client_kw)
        self.client.refresh()

    @property
    def urls(self):
        return [f.url for f in self.fakes]

    def add_dead(self, url: str, name: str, first: bool = True) -> None:
        """Register a server that cannot be probed as if an earlier refresh had seen the model."""
        self.registry.add(url, name=name, priority=1 if first else -1)
        self.registry.record_refresh(url, version="0.12.6", models=[ModelEntry(f"{MODEL}:latest")], loaded=[MODEL])

    def close(self):
        self.client.close()
        self.registry.close()
        for f in self.fakes:
            f.stop()


@pytest.fixture
def fleet(client_kind):
    """Fleets whose client is the sync ``Client`` or the ``AsyncClient`` (every test runs with both)."""
    fleets = []

    def make(n=2, **kw):
        fl = Fleet(n, client_kind, **kw)
        fleets.append(fl)
        return fl

    yield make
    for fl in fleets:
        fl.close()


def types(stream):
    return [e.type for e in stream.events]


# -- the failure kinds of issue 2 point 3, as scripts for the first server --------------------------
BEFORE = {
    "reset": Script(drop_after=0, reset=True),
    "http_500": Script(status=500),
    "http_429": Script(status=429),
    "http_503": Script(status=503),
    "http_404": Script(status=404),
    "error_line": Script(error_after=0),
    "malformed_line": Script(malformed_after=0),
    "no_done": Script(end_without_done_after=0),
    "read_timeout": Script(blackhole=True),
    "slow_first_token": Script(tokens=TOKENS, first_token_delay=3.0),
}
AFTER = {
    "reset": Script(tokens=TOKENS, drop_after=3, reset=True),
    "dropped": Script(tokens=TOKENS, drop_after=3),
    "error_line": Script(tokens=TOKENS, error_after=3),
    "malformed_line": Script(tokens=TOKENS, malformed_after=3),
    "no_done": Script(tokens=TOKENS, end_without_done_after=3),
    "stall": Script(tokens=TOKENS, stall_after=3),
}
REASON = {  # a word the error event must contain
    "reset": "connection", "dropped": "connection", "http_500": "HTTP 500", "http_429": "HTTP 429",
    "http_503": "HTTP 503", "http_404": "not found", "error_line": "server error", "malformed_line": "malformed",
    "no_done": "without a done", "read_timeout": "first-token timeout", "stall": "stall",
    "slow_first_token": "first-token timeout",
}


@pytest.mark.parametrize("kind", sorted(BEFORE))
def test_failure_before_first_token_goes_on_to_the_next_server(fleet, kind):
    fl = fleet(2)
    fl.fakes[0].push(BEFORE[kind])
    stream = fl.client.chat("why?", model=MODEL, stream=True)
    events = list(stream)
    assert types(stream) == ["start", "error"] + ["token"] * len(TOKENS) + ["end"]
    err = events[1]
    assert err.server == fl.urls[0] and err.attempt == 1 and REASON[kind] in err.content
    assert [e.index for e in events if e.type == "token"] == list(range(len(TOKENS)))
    assert {e.server for e in events if e.type == "token"} == {fl.urls[1]}
    assert stream.text() == FULL and stream.server == fl.urls[1]
    a1, a2 = stream.attempts
    assert (a1.server, a1.ok, a1.tokens, a2.server, a2.ok, a2.tokens) == (fl.urls[0], False, 0, fl.urls[1], True, len(TOKENS))
    assert stream.usage.eval_count == len(TOKENS) and stream.usage.done_reason == "stop"


def test_connection_refused_before_first_token(fleet):
    fl = fleet(2)
    fl.fakes[0].kill()  # was up at refresh time, now refuses connections
    reply = fl.client.chat("why?", model=MODEL)
    assert reply.text == FULL and reply.server == fl.urls[1]
    assert "connection refused" in str(reply.attempts[0].error)


def test_connect_timeout_before_first_token(fleet):
    fl = fleet(1)
    with blackhole_listener() as dead:
        fl.add_dead(dead, "blackhole")
        stream = fl.client.chat("why?", model=MODEL, stream=True)
        assert stream.text() == FULL
    assert stream.attempts[0].server == dead
    assert "connect timeout" in stream.events[1].content


@pytest.mark.parametrize("kind", sorted(AFTER))
def test_failure_after_tokens_restarts_on_the_next_server(fleet, kind):
    fl = fleet(2, on_midstream="restart")
    fl.fakes[0].push(AFTER[kind])
    stream = fl.client.chat("why?", model=MODEL, stream=True)
    events = list(stream)
    n = len(TOKENS)
    assert types(stream) == ["start", "token", "token", "token", "error", "meta", "reset"] + ["token"] * n + ["end"]
    assert REASON[kind] in events[4].content and events[4].server == fl.urls[0]
    assert events[5].meta["failover"] == "restart" and events[5].meta["to"] == fl.urls[1]
    # The restarted reply is numbered from 0 again and text() holds only the final attempt.
    assert [e.index for e in events[7:-1]] == list(range(n))
    assert stream.text() == FULL
    assert [a.tokens for a in stream.attempts] == [3, n]
    assert [a.mode for a in stream.attempts] == ["fresh", "restart"]
    # The second server got the plain conversation, no prefill.
    assert fl.fakes[1].chat_requests[-1].body["messages"] == [{"role": "user", "content": "why?"}]


@pytest.mark.parametrize("kind", sorted(AFTER))
def test_failure_after_tokens_continues_without_losing_or_repeating_a_word(fleet, kind):
    fl = fleet(2)  # on_midstream="continue" is the default
    fl.fakes[0].push(AFTER[kind])
    stream = fl.client.chat("why?", model=MODEL, stream=True)
    events = list(stream)
    assert types(stream) == ["start", "token", "token", "token", "error", "meta"] + ["token"] * (len(TOKENS) - 3) + ["end"]
    assert events[5].meta["failover"] == "continue" and events[5].meta["kept_tokens"] == 3
    tokens = [e for e in events if e.type == "token"]
    assert [e.index for e in tokens] == list(range(len(TOKENS)))
    assert "".join(e.content for e in tokens) == stream.text() == FULL
    sent = fl.fakes[1].chat_requests[-1].body["messages"]
    assert sent[-1] == {"role": "assistant", "content": "The sky is"}
    assert stream.usage.eval_count == len(TOKENS) - 3  # the continuation's own figures


@pytest.mark.parametrize("kind", sorted(AFTER))
def test_failure_after_tokens_with_raise_policy_raises_it(fleet, kind):
    from aicortex import ServerError

    fl = fleet(2, on_midstream="raise")
    fl.fakes[0].push(AFTER[kind])
    stream = fl.client.chat("why?", model=MODEL, stream=True)
    with pytest.raises(ServerError) as info:
        list(stream)
    assert info.value.server == fl.urls[0] and REASON[kind] in info.value.reason
    assert types(stream) == ["start", "token", "token", "token", "error"]
    assert "".join(e.content for e in stream.events if e.type == "token") == "The sky is"
    with pytest.raises(ServerError):  # text() raises what iteration raised, every time
        stream.text()
    assert stream.usage is None and stream.server is None
    assert [a.tokens for a in stream.attempts] == [3] and not stream.attempts[0].ok
    assert fl.fakes[1].chat_requests == []


def test_http_400_is_raised_at_once_without_failover(fleet):
    fl = fleet(2)
    fl.fakes[0].push(Script(status=400, error='invalid think value: "x"'))
    stream = fl.client.chat("why?", model=MODEL, stream=True)
    with pytest.raises(BadRequest, match="invalid think value") as info:
        list(stream)
    assert info.value.server == fl.urls[0] and info.value.status_code == 400
    assert fl.fakes[1].chat_requests == []
    assert types(stream) == ["start", "error"]


def test_all_servers_failed_carries_every_attempt(fleet):
    fl = fleet(3)
    fl.fakes[0].push(Script(status=500))
    fl.fakes[1].push(Script(tokens=TOKENS, drop_after=2))
    fl.fakes[2].push(Script(error_after=0, error="out of memory"))
    stream = fl.client.chat("why?", model=MODEL, stream=True)
    with pytest.raises(AllServersFailed) as info:
        list(stream)
    err = info.value
    assert isinstance(err, RuntimeError) and err.model == MODEL
    assert [a.server for a in err.attempts] == fl.urls
    assert ["HTTP 500" in str(a.error) for a in err.attempts] == [True, False, False]
    assert "out of memory" in str(err.attempts[2].error)
    assert types(stream)[-1] == "error" and "end" not in types(stream)
    assert all(url in str(err) for url in fl.urls)


def test_non_streamed_reply(fleet):
    fl = fleet(1)
    fl.fakes[0].push(Script(tokens=TOKENS, thinking=("Hmm", ", light")))
    reply = fl.client.chat("why?", model=MODEL, think=True)
    assert isinstance(reply, Reply) and str(reply) == reply.text == FULL
    assert reply.message == {"role": "assistant", "content": FULL, "thinking": "Hmm, light"}
    assert reply.server == fl.urls[0] and reply.ttft_s > 0 and len(reply.attempts) == 1
    assert fl.fakes[0].chat_requests[0].body["think"] is True


def test_thinking_events_are_not_in_text_and_tool_calls_on_the_final_chunk_are_kept(fleet):
    fl = fleet(1)
    call = {"name": "get_weather", "arguments": {"city": "Tokyo"}}
    fl.fakes[0].push(Script(tokens=("Let me check.",), thinking=("plan",), tool_calls=(call,),
                            tool_calls_on_done=True, final_content=" Done."))
    stream = fl.client.chat("weather?", model=MODEL, stream=True, tools=[{"type": "function", "function": {"name": "get_weather"}}])
    events = list(stream)
    assert types(stream) == ["start", "thinking", "token", "token", "tool_call", "end"]
    assert stream.text() == "Let me check. Done." and stream.thinking == "plan"
    tc = events[4]
    assert (tc.tool_name, dict(tc.tool_args)) == ("get_weather", {"city": "Tokyo"})
    assert stream.tool_calls[0]["function"]["name"] == "get_weather"


def test_no_continuation_after_a_tool_call_or_with_format(fleet):
    fl = fleet(2)
    fl.fakes[0].push(Script(tokens=TOKENS, drop_after=3))
    stream = fl.client.chat("json please", model=MODEL, stream=True, format="json")
    list(stream)
    assert "reset" in types(stream) and stream.text() == FULL
    assert fl.fakes[1].chat_requests[-1].body["format"] == "json"
    assert fl.fakes[1].chat_requests[-1].body["messages"][-1]["role"] == "user"


def test_on_midstream_raise_raises_the_failure(fleet):
    fl = fleet(2, on_midstream="raise")
    fl.fakes[0].push(Script(tokens=TOKENS, error_after=2, error="boom"))
    stream = fl.client.chat("why?", model=MODEL, stream=True)
    from aicortex import OllamaError

    with pytest.raises(OllamaError, match="boom"):
        list(stream)
    assert fl.fakes[1].chat_requests == []


def test_bad_input_is_a_clear_error(fleet):
    fl = fleet(1)
    with pytest.raises(ConfigError, match="no model given.*AICORTEX_MODEL"):
        fl.client.chat("hi")
    with pytest.raises(ConfigError, match="empty prompt"):
        fl.client.chat("  ", model=MODEL)
    with pytest.raises(ModelNotFound, match="no registered server lists model 'nope'.*llama3.2") as info:
        fl.client.chat("hi", model="nope")
    assert info.value.model == "nope" and isinstance(info.value, LookupError)
    with pytest.raises(ConfigError, match="on_midstream"):
        fl.client.chat("hi", model=MODEL, on_midstream="retry")


def test_model_from_environment(fleet, monkeypatch):
    fl = fleet(1)
    monkeypatch.setenv("AICORTEX_MODEL", MODEL)
    assert fl.client.chat("hi").text == FULL


def test_breaking_out_closes_the_connection_and_leaves_no_thread_or_socket(fleet):
    fl = fleet(1)
    fake = fl.fakes[0]
    fake.push(Script(tokens=TOKENS * 20, token_delay=0.05))
    threads_before = threading.active_count()
    seen = 0
    with fl.client.chat("long story", model=MODEL, stream=True) as stream:
        for event in stream:
            if event.type == "token":
                seen += 1
                if seen == 3:
                    break
    assert fake.wait_for_disconnect(timeout=3.0)
    rec = fake.chat_requests[-1]
    assert rec.disconnected and not rec.completed and rec.tokens_sent < 20
    # Breaking out of a bare for loop (no with) and dropping the stream does the same.
    fake.push(Script(tokens=TOKENS * 20, token_delay=0.05))
    for event in fl.client.chat("long story", model=MODEL, stream=True):
        if event.type == "token" and event.index == 2:
            break
    del event  # the stream is dropped with the loop: no gc.collect() needed
    assert fake.wait_for_disconnect(timeout=3.0)
    assert fake.chat_requests[-1].disconnected
    assert threading.active_count() <= threads_before


def test_first_chat_refreshes_a_never_refreshed_registry():
    with FakeOllama(models=[MODEL], script=Script(tokens=TOKENS)) as fake:
        reg = Registry.memory()
        reg.add(fake.url)
        assert reg.last_refresh_at() is None
        with Client(reg, timeout=FAST) as client:
            assert client.chat("hi", model=MODEL).text == FULL
        assert [r.path for r in fake.requests][:3] == ["/api/version", "/api/tags", "/api/ps"]
        assert reg.last_refresh_at() is not None
        reg.close()


def test_list_model_servers_is_the_try_order(fleet):
    fl = fleet(3)
    fl.fakes[2].loaded = []  # cold on s2
    fl.registry.disable("s1")
    fl.client.refresh()
    fl.registry.add(closed_port_url(), name="never-probed")
    assert [s.name for s in fl.client.list_model_servers(MODEL)] == ["s0", "s2"]
    assert fl.client.models() == ["llama3.2:latest"]
    with pytest.raises(ModelNotFound):
        fl.client.list_model_servers("mistral")


def test_servers_pins_a_request_to_chosen_servers(fleet):
    fl = fleet(3)
    reply = fl.client.chat("q", model=MODEL, servers=["s2"])
    assert reply.server == fl.urls[2] and fl.fakes[0].chat_requests == []
    fl.fakes[1].push(Script(status=500))
    reply = fl.client.chat("q", model=MODEL, servers=[fl.urls[1], "s2"])
    assert [a.server for a in reply.attempts] == fl.urls[1:]
    with pytest.raises(ModelNotFound, match="none of the servers"):
        fl.registry.add(closed_port_url(), name="empty")
        fl.client.chat("q", model=MODEL, servers=["empty"])
