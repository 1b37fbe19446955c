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


def get_weather(city: str, unit: str = "C") -> dict:
    """The current weather of a city.

    Args:
        city: the city's name, e.g. Paris.
        unit: C or F.
    """
    return {"city": city, "temp": 18, "unit": unit}


def test_python_functions_are_sent_as_tool_schemas(one):
    client, fake = one
    client.chat("weather in Paris?", model=M, tools=[get_weather])
    (tool,) = fake.chat_requests[-1].body["tools"]
    fn = tool["function"]
    assert fn["name"] == "get_weather" and fn["description"] == "The current weather of a city."
    assert fn["parameters"]["required"] == ["city"]
    assert fn["parameters"]["properties"]["city"] == {"type": "string", "description": "the city's name, e.g. Paris."}


def test_run_tools_runs_the_calls_and_returns_the_final_answer(one):
    client, fake = one
    call = {"id": "call_7", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    fake.push(Script(tool_calls=(call,)))
    fake.push(Script(tokens=("It is", " 18 C", " in Paris.")))
    reply = client.chat("weather in Paris?", model=M, tools=[get_weather], run_tools=True)
    assert reply.text == "It is 18 C in Paris."
    assert reply.tool_results == ({"name": "get_weather", "arguments": {"city": "Paris"}, "id": "call_7",
                                   "result": {"city": "Paris", "temp": 18, "unit": "C"}},)
    sent = fake.chat_requests[-1].body["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
    assert sent[2] == {"role": "tool", "tool_name": "get_weather", "tool_call_id": "call_7",
                       "content": json.dumps({"city": "Paris", "temp": 18, "unit": "C"})}


def test_run_tools_tells_the_model_about_a_failing_or_unknown_tool_and_stops_after_max_rounds(one):
    client, fake = one

    def broken(x: int) -> int:
        """Fails."""
        raise ValueError("no")

    calls = ({"function": {"name": "broken", "arguments": {"x": 1}}}, {"function": {"name": "nope", "arguments": {}}})
    for _ in range(3):
        fake.push(Script(tool_calls=calls))
    reply = client.chat("go", model=M, tools=[broken], run_tools=True, max_tool_rounds=2)
    assert reply.tool_calls  # still asking for tools after 2 rounds: returned as it is
    assert [r["result"] for r in reply.tool_results] == ["error: ValueError: no", "error: no tool named 'nope'"] * 2
    with pytest.raises(ConfigError, match="max_tool_rounds"):
        client.chat("go", model=M, tools=[broken], run_tools=True, max_tool_rounds=-1)


def test_async_client_awaits_coroutine_tools(one, client_kind):
    client, fake = one

    async def lookup(city: str) -> str:
        """Look a city up."""
        return f"{city}: 18 C"

    call = {"function": {"name": "lookup", "arguments": {"city": "Oslo"}}}
    fake.push(Script(tool_calls=(call,)))
    if client_kind == "sync":
        with pytest.raises(ConfigError, match="AsyncClient"):
            client.chat("weather?", model=M, tools=[lookup], run_tools=True)
        return
    reply = client.chat("weather?", model=M, tools=[lookup], run_tools=True)
    assert reply.tool_results[0]["result"] == "Oslo: 18 C"
    assert fake.chat_requests[-1].body["messages"][-1]["content"] == "Oslo: 18 C"
