"""chat()/generate() options of the whole Ollama surface: include=, output_type=,
logprobs, truncate/shift, tool-call ids, think levels; both clients, against FakeOllama."""

from __future__ import annotations

import json

import pydantic
import pytest

from aicortex import ConfigError, InvalidOutput, Registry, Timeouts
from aicortex.testing import FakeOllama, Script
from conftest import make_client

pytestmark = pytest.mark.timeout(60)

M = "llama3.2"
FAST = Timeouts(connect=0.5, first_token=1.0, first_token_cold=1.0, stall=1.0)


class City(pydantic.BaseModel):
    name: str
    population: int


@pytest.fixture
def one(client_kind):
    fake = FakeOllama(models=[M]).start()
    reg = Registry.memory()
    reg.add(fake.url, name="s0")
    client = make_client(client_kind, reg, timeout=FAST)
    client.refresh()
    yield client, fake
    client.close()
    reg.close()
    fake.stop()


def _lines(*objs) -> bytes:
    return b"".join((json.dumps(o) + "\n").encode() for o in objs)


def test_include_hands_out_only_the_asked_types_and_keeps_every_event(one):
    client, fake = one
    fake.push(Script(thinking=("hmm",), tokens=("Hi", " there")))
    stream = client.chat("hi", model=M, stream=True, include=["generating"])
    kinds = [e.type for e in stream]
    assert kinds == ["token", "token"]
    assert [e.type for e in stream.events][0] == "start" and "thinking" in [e.type for e in stream.events]
    assert all(e.is_text() for e in stream.events if e.type == "token")
    assert stream.message == {"role": "assistant", "content": "Hi there", "thinking": "hmm"}
    with pytest.raises(ConfigError, match="include='bogus'"):
        client.chat("hi", model=M, stream=True, include="bogus")


def test_output_type_sends_the_schema_and_validates_the_reply(one):
    client, fake = one
    fake.push(Script(tokens=('{"name": "Paris", ', '"population": 2100000}')))
    reply = client.chat("biggest city in France?", model=M, output_type=City)
    assert reply.output == City(name="Paris", population=2100000)
    assert fake.chat_requests[-1].body["format"] == City.model_json_schema()
    fake.push(Script(tokens=('{"name": "Paris"}',)))
    with pytest.raises(InvalidOutput) as info:
        client.chat("again", model=M, output_type=City)
    assert info.value.server == fake.url and "City" in str(info.value)
    with pytest.raises(ConfigError):
        client.chat("x", model=M, output_type=dict)


def test_logprobs_ride_on_the_token_events_and_the_reply(one):
    client, fake = one
    entry = {"token": "Hi", "logprob": -0.1, "top_logprobs": [{"token": "Hi", "logprob": -0.1}, {"token": "Hey", "logprob": -2.5}]}
    raw = _lines(
        {"model": M, "created_at": "x", "message": {"role": "assistant", "content": "Hi"}, "done": False, "logprobs": [entry]},
        {"model": M, "created_at": "x", "message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "stop"},
    )
    fake.push(Script(raw=raw))
    stream = client.chat("hi", model=M, stream=True, logprobs=True, top_logprobs=2)
    tokens = [e for e in stream if e.type == "token"]
    assert tokens[0].logprobs == (entry,)
    body = fake.chat_requests[-1].body
    assert body["logprobs"] is True and body["top_logprobs"] == 2
    fake.push(Script(raw=raw))
    assert client.chat("hi", model=M, logprobs=True).logprobs == (entry,)


def test_truncate_shift_and_think_levels_reach_the_server(one):
    client, fake = one
    client.chat("hi", model=M, truncate=False, shift=False, think="high")
    body = fake.chat_requests[-1].body
    assert body["truncate"] is False and body["shift"] is False and body["think"] == "high"
    client.generate("hi", model=M, truncate=True, think=False)
    body = fake.requests[-1].body
    assert body["truncate"] is True and body["think"] is False


def test_tool_calls_keep_their_id_and_index_and_tool_messages_go_as_they_are(one):
    client, fake = one
    call = {"id": "call_1", "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}}
    fake.push(Script(tool_calls=(call,)))
    stream = client.chat("weather?", model=M, stream=True)
    calls = [e for e in stream if e.is_tool_call()]
    assert calls[0].tool_name == "get_weather" and calls[0].meta == {"id": "call_1", "index": 0}
    history = [
        {"role": "user", "content": "weather?"},
        stream.message,
        {"role": "tool", "tool_call_id": "call_1", "tool_name": "get_weather", "content": "18 C"},
    ]
    client.chat(history, model=M)
    assert fake.chat_requests[-1].body["messages"][2] == history[2]
