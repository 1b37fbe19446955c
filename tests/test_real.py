"""The main job on real local inference servers (scripts/realstack.py): real tokens, real
crashes. Marked ``real``; skipped with the reason where the stack cannot be installed,
failed instead when AICORTEX_REQUIRE_REAL=1 (CI)."""

from __future__ import annotations

import pytest

from aicortex import Client, Registry, Timeouts

pytestmark = [pytest.mark.real, pytest.mark.timeout(300)]

MODEL = "local/smollm2"
STORY = "Write a short story about a lighthouse keeper who finds a message in a bottle."
OPTIONS = {"temperature": 0, "num_predict": 80}


@pytest.fixture
def fleet(real_stacks, tmp_path):
    """``fleet(n)`` -> (stacks, client) on a temporary registry file holding n real stacks."""
    opened = []

    def make(n=2, **client_kw):
        stacks = real_stacks(n)
        reg = Registry(tmp_path / f"fleet{len(opened)}.db", seed=False)
        for i, s in enumerate(stacks):
            reg.add(s.url, name=f"stack{i}")
        client = Client(reg, **client_kw)
        opened.append((client, reg))
        return stacks, client

    yield make
    for client, reg in opened:
        client.close()
        reg.close()


def test_refresh_finds_the_model_on_each_stack(fleet):
    stacks, client = fleet(2)
    report = client.refresh()
    assert (report.up, report.down) == (2, 0)
    assert all(MODEL in r.models and r.version for r in client.registry.servers())
    assert [s.url for s in client.list_model_servers(MODEL)] == [s.url for s in stacks]
    assert MODEL in client.models()


def test_streamed_chat(fleet):
    stacks, client = fleet(1)
    stream = client.chat("What is the capital of France? Answer in one sentence.", model=MODEL,
                         stream=True, options={"temperature": 0})
    events = list(stream)
    assert events[0].type == "start" and events[-1].type == "end"
    assert "Paris" in stream.text()
    assert stream.server == stacks[0].url and stream.ttft_s > 0 and stream.tokens_per_second > 0
    assert stream.usage.done_reason == "stop"


def _chat_and_break(client, stacks, break_stack, after=10, **kw):
    """Stream STORY; after ``after`` tokens call ``break_stack(stack)`` on the serving stack."""
    by_url = {s.url: s for s in stacks}
    stream = client.chat(STORY, model=MODEL, stream=True, options=OPTIONS, **kw)
    partial = None
    for event in stream:
        if event.type == "token" and event.index + 1 == after and partial is None:
            partial = stream.text.__self__._session.text  # the text delivered so far
            break_stack(by_url[event.server])
    return stream, partial


def _reference(stacks):
    """The same request, unbroken, on a healthy stack: what the model says at temperature 0."""
    with Client(Registry.memory()) as c:
        c.registry.add(stacks[-1].url)
        return c.chat(STORY, model=MODEL, options=OPTIONS).text


def test_sigkill_of_the_front_end_mid_reply_continues_on_another_stack(fleet):
    stacks, client = fleet(2)
    stream, partial = _chat_and_break(client, stacks, lambda s: s.kill_front())
    text = stream.text()
    types = [e.type for e in stream.events]
    assert types.count("error") == 1 and "reset" not in types
    meta = next(e for e in stream.events if e.type == "meta")
    assert meta.meta["failover"] == "continue" and meta.meta["to"] == stacks[1].url
    assert stream.server == stacks[1].url and [a.ok for a in stream.attempts] == [False, True]
    # Nothing lost, nothing repeated: the reply starts with what was sent before the kill,
    # its opening appears once, and the token indexes run on without a gap.
    assert partial and text.startswith(partial) and len(text) > len(partial)
    assert text.count(partial[:25]) == 1
    tokens = [e for e in stream.events if e.type == "token"]
    assert [e.index for e in tokens] == list(range(len(tokens)))
    assert "".join(e.content for e in tokens) == text
    # Greedy decoding continued from the prefill says what an unbroken run says.
    reference = _reference(stacks)
    assert text[:60] == reference[:60]


def test_killed_backend_is_an_in_stream_error_and_the_reply_continues(fleet):
    stacks, client = fleet(2)
    stream, partial = _chat_and_break(client, stacks, lambda s: s.kill_backend())
    text = stream.text()
    err = next(e for e in stream.events if e.type == "error")
    assert err.server == stacks[0].url and "Connection error." in err.content
    assert stream.server == stacks[1].url
    assert text.startswith(partial) and text.count(partial[:25]) == 1


def test_killed_front_end_with_restart_policy(fleet):
    stacks, client = fleet(2, on_midstream="restart")
    stream, partial = _chat_and_break(client, stacks, lambda s: s.kill_front())
    types = [e.type for e in stream.events]
    assert "reset" in types and stream.server == stacks[1].url
    assert stream.text() == _reference(stacks)  # only the final attempt, whole


def test_stalled_backend_is_detected_and_the_reply_continues(fleet):
    stacks, client = fleet(2, timeout=Timeouts(connect=2, first_token=20, first_token_cold=20, stall=1.5))
    stream, partial = _chat_and_break(client, stacks, lambda s: s.pause_backend())
    text = stream.text()
    err = next(e for e in stream.events if e.type == "error")
    assert err.server == stacks[0].url and "stall" in err.content
    assert stream.server == stacks[1].url and text.startswith(partial)
    stacks[0].resume_backend()
