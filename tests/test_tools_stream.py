"""The tool loop streamed (``run_tools=True, stream=True``) on both clients, against
FakeOllama: the events of every round, the round bound, tools that fail, failover in a
round, closing early, ``include=``; and the loop's sans-IO flow without sockets."""

from __future__ import annotations

import asyncio
import json

import pydantic
import pytest

from aicortex import AllServersFailed, AsyncClient, ConfigError, IncompleteStream, Registry, Reply, Stream, Timeouts
from aicortex._models import Attempt
from aicortex._tools import AskRound, RunTool, ToolLoop, tool_loop_flow
from aicortex.testing import FakeOllama, Script
from conftest import FLEET_MODEL, FLEET_TOKENS, OrderedFleet, make_client

pytestmark = pytest.mark.timeout(60)

M = "llama3.2"
FAST = Timeouts(connect=0.5, first_token=1.0, first_token_cold=1.0, stall=1.0)
ANSWER = ("It is", " 18 C", " in", " Paris", ".")
PARIS = {"id": "call_7", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}


def get_weather(city: str) -> dict:
    """The current weather of a city.

    Args:
        city: the city's name.
    """
    return {"city": city, "temp": 18}


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


def _two_rounds(fake, answer=ANSWER):
    fake.push(Script(thinking=("Need", " weather"), tokens=(), tool_calls=(PARIS,)))
    fake.push(Script(tokens=answer))


def test_a_two_round_loop_streams_each_round_then_the_tool_result_then_the_answer(one):
    client, fake = one
    _two_rounds(fake)
    requests_at_call = []

    def weather(city: str) -> dict:
        """Weather."""
        requests_at_call.append(len(fake.chat_requests))
        return {"city": city, "temp": 18}

    weather.__name__ = "get_weather"
    stream = client.chat("weather in Paris?", model=M, tools=[weather], run_tools=True, stream=True)
    events = list(stream)
    assert [e.type for e in events] == [
        "start", "thinking", "thinking", "tool_call", "tool_result", "meta", *["token"] * len(ANSWER), "end",
    ]
    call, result, round2, end = events[3], events[4], events[5], events[-1]
    assert (call.tool_name, call.tool_args, call.meta) == ("get_weather", {"city": "Paris"}, {"id": "call_7", "index": 0})
    assert result.tool_name == "get_weather" and result.tool_args == {"city": "Paris"}
    assert result.tool_result == {"city": "Paris", "temp": 18}
    assert result.content == json.dumps({"city": "Paris", "temp": 18})
    assert result.meta == {"id": "call_7", "index": 0, "round": 1}
    assert result.server == fake.url
    assert requests_at_call == [1]  # the tool ran between the rounds: round 2 was not sent yet
    assert round2.meta["tool_round"] == 2 and round2.meta["candidates"] == [fake.url]
    assert end.meta["tool_rounds"] == 1 and end.meta["attempts"] == 2 and end.meta["ttft_s"] == stream.ttft_s
    assert [e.index for e in events if e.type == "token"] == list(range(len(ANSWER)))
    assert stream.text() == "".join(ANSWER)
    assert stream.complete and not stream.closed_early
    assert stream.message == {"role": "assistant", "content": "".join(ANSWER)}
    assert stream.server == fake.url and stream.usage is not None and stream.usage.done_reason == "stop"
    assert [a.server for a in stream.attempts] == [fake.url, fake.url] and all(a.ok for a in stream.attempts)
    assert stream.ttft_s is not None and stream.tokens_per_second is not None
    assert stream.events == events and stream.tool_results == (
        {"name": "get_weather", "arguments": {"city": "Paris"}, "id": "call_7", "result": {"city": "Paris", "temp": 18}},
    )
    reply = stream.reply()
    assert reply.tool_results == stream.tool_results and reply.text == "".join(ANSWER)
    sent = fake.chat_requests[-1].body["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
    assert sent[1]["thinking"] == "Need weather" and sent[1]["tool_calls"][0]["id"] == "call_7"
    assert sent[2] == {"role": "tool", "tool_name": "get_weather", "tool_call_id": "call_7",
                       "content": json.dumps({"city": "Paris", "temp": 18})}


def test_the_streamed_reply_equals_the_stream_false_reply(one):
    client, fake = one

    def compare(r: Reply):
        return (r.text, r.message, r.tool_results, r.server, r.model, r.output, [(a.server, a.ok, a.mode) for a in r.attempts],
                r.usage.done_reason, r.usage.eval_count, r.ttft_s is not None)

    _two_rounds(fake)
    plain = client.chat("weather in Paris?", model=M, tools=[get_weather], run_tools=True)
    requests_plain = [r.body for r in fake.chat_requests]
    _two_rounds(fake)
    streamed = client.chat("weather in Paris?", model=M, tools=[get_weather], run_tools=True, stream=True).reply()
    assert isinstance(plain, Reply) and compare(streamed) == compare(plain)
    assert [r.body for r in fake.chat_requests][2:] == requests_plain  # the same rounds were sent
    assert len(plain.attempts) == 2  # every round's attempts, as the stream has them


def test_the_round_bound_returns_the_last_reply_with_its_calls_unrun(one):
    client, fake = one
    runs = []

    def ping(n: int) -> int:
        """Echo."""
        runs.append(n)
        return n

    calls = ({"function": {"name": "ping", "arguments": {"n": 1}}}, {"function": {"name": "ping", "arguments": {"n": 2}}})
    fake.default_script = Script(tokens=(), tool_calls=calls)
    stream = client.chat("go", model=M, tools=[ping], run_tools=True, max_tool_rounds=1, stream=True)
    kinds = [e.type for e in stream]
    assert kinds == ["start", "tool_call", "tool_call", "tool_result", "tool_result", "meta", "tool_call", "tool_call", "end"]
    assert runs == [1, 2] and len(fake.chat_requests) == 2
    reply = stream.reply()
    assert len(reply.tool_calls) == 2 and [r["result"] for r in reply.tool_results] == [1, 2]
    assert stream.events[-1].meta["tool_rounds"] == 1
    # max_tool_rounds=0: one request, no tool run
    zero = client.chat("go", model=M, tools=[ping], run_tools=True, max_tool_rounds=0, stream=True)
    assert [e.type for e in zero] == ["start", "tool_call", "tool_call", "end"]
    assert runs == [1, 2] and zero.reply().tool_results == ()


def test_a_tool_that_raises_and_an_unknown_tool_are_answered_with_the_error(one):
    client, fake = one

    def broken(x: int) -> int:
        """Fails."""
        raise ValueError("no")

    calls = ({"function": {"name": "broken", "arguments": {"x": 1}}}, {"function": {"name": "nope", "arguments": {}}})
    fake.push(Script(tokens=(), tool_calls=calls), Script(tokens=("Sorry", ".")))
    stream = client.chat("go", model=M, tools=[broken], run_tools=True, stream=True)
    results = [e for e in stream if e.type == "tool_result"]
    assert [(e.tool_name, e.tool_result, e.meta["index"], e.meta["error"]) for e in results] == [
        ("broken", "error: ValueError: no", 0, True),
        ("nope", "error: no tool named 'nope'", 1, True),
    ]
    assert stream.text() == "Sorry."
    sent = fake.chat_requests[-1].body["messages"]
    assert [m["content"] for m in sent if m["role"] == "tool"] == ["error: ValueError: no", "error: no tool named 'nope'"]


def test_a_server_killed_in_the_final_answer_fails_over_and_the_loop_goes_on(client_kind):
    fl = OrderedFleet(client_kind, 2)
    try:
        s0, s1 = fl.fakes
        s0.push(Script(tokens=(), tool_calls=(PARIS,)), Script(tokens=FLEET_TOKENS, drop_after=3))
        stream = fl.client.chat("weather?", model=FLEET_MODEL, tools=[get_weather], run_tools=True, stream=True)
        events = list(stream)
        kinds = [e.type for e in events]
        assert kinds.count("start") == 1 and kinds.count("end") == 1 and kinds[-1] == "end"
        assert kinds.index("tool_result") < kinds.index("error")
        failover = [e.meta for e in events if e.type == "meta" and "failover" in e.meta]
        assert failover and failover[0]["failover"] == "continue" and failover[0]["to"] == s1.url
        assert stream.text() == "".join(FLEET_TOKENS)
        assert [(a.server, a.ok) for a in stream.attempts] == [(s0.url, True), (s0.url, False), (s1.url, True)]
        assert events[-1].meta["attempts"] == 3 and events[-1].server == s1.url
        reply = stream.reply()
        assert reply.server == s1.url and len(reply.attempts) == 3 and len(reply.tool_results) == 1
        continued = s1.chat_requests[-1].body["messages"]
        assert [m["role"] for m in continued] == ["user", "assistant", "tool", "assistant"]
        assert continued[-1]["content"] == "".join(FLEET_TOKENS[:3])  # the prefill of the answer so far
    finally:
        fl.close()


def test_a_server_killed_in_a_tool_call_round_fails_over_and_the_call_runs_once(client_kind):
    fl = OrderedFleet(client_kind, 2)
    try:
        s0, s1 = fl.fakes
        words = ("Let me", " check", " the weather.")
        s0.push(Script(tokens=words, tool_calls=(PARIS,), drop_after=2))
        s1.push(Script(tokens=words, tool_calls=(PARIS,)))
        runs = []

        def weather(city: str) -> dict:
            """Weather."""
            runs.append(city)
            return {"city": city, "temp": 18}

        weather.__name__ = "get_weather"
        stream = fl.client.chat("weather?", model=FLEET_MODEL, tools=[weather], run_tools=True, stream=True)
        kinds = [e.type for e in stream]
        assert kinds.count("start") == 1 and kinds.count("end") == 1
        assert kinds.index("error") < kinds.index("tool_call") < kinds.index("tool_result")
        assert runs == ["Paris"] and stream.text() == "".join(FLEET_TOKENS)
        assert [(a.server, a.ok) for a in stream.attempts][:2] == [(s0.url, False), (s1.url, True)]
        history = max((r.body["messages"] for f in fl.fakes for r in f.chat_requests), key=len)  # round 2's
        assert history[1]["content"] == "".join(words) and history[1]["tool_calls"][0]["function"]["name"] == "get_weather"
        assert [m["role"] for m in history] == ["user", "assistant", "tool"]
    finally:
        fl.close()


def test_a_round_that_fails_everywhere_raises_from_iteration(one):
    client, fake = one
    fake.push(Script(tokens=(), tool_calls=(PARIS,)), Script(status=500))
    stream = client.chat("weather?", model=M, tools=[get_weather], run_tools=True, stream=True)
    seen = []
    with pytest.raises(AllServersFailed):
        for event in stream:
            seen.append(event.type)
    assert seen[:2] == ["start", "tool_call"] and "tool_result" in seen and "end" not in seen
    with pytest.raises(AllServersFailed):
        stream.text()
    assert not stream.closed_early and not stream.complete


def test_breaking_out_in_a_round_closes_its_connection(one):
    client, fake = one
    fake.push(Script(tokens=(), tool_calls=(PARIS,)), Script(tokens=("word ",) * 200, token_delay=0.02))
    with client.chat("weather?", model=M, tools=[get_weather], run_tools=True, stream=True) as stream:
        for event in stream:
            if event.type == "token" and event.index == 2:
                break
    assert fake.wait_for_disconnect(timeout=3.0)
    rec = fake.chat_requests[-1]
    assert rec.disconnected and not rec.completed and rec.tokens_sent < 200
    assert stream.closed_early and not stream.complete and len(stream.tool_results) == 1
    with pytest.raises(IncompleteStream):
        stream.text()
    # Breaking out of a bare for loop (no with) and dropping the stream does the same.
    fake.push(Script(tokens=(), tool_calls=(PARIS,)), Script(tokens=("word ",) * 200, token_delay=0.02))
    for event in client.chat("weather?", model=M, tools=[get_weather], run_tools=True, stream=True):
        if event.type == "token" and event.index == 2:
            break
    del event  # the stream is dropped with the loop: no gc.collect() needed
    assert fake.wait_for_disconnect(timeout=3.0)
    assert fake.chat_requests[-1].disconnected and len(fake.chat_requests) == 4


def test_closing_between_the_tools_runs_no_more_tools_and_no_next_round(one):
    client, fake = one
    runs = []

    def ping(n: int) -> int:
        """Echo."""
        runs.append(n)
        return n

    calls = ({"function": {"name": "ping", "arguments": {"n": 1}}}, {"function": {"name": "ping", "arguments": {"n": 2}}})
    fake.push(Script(tokens=(), tool_calls=calls))
    stream = client.chat("go", model=M, tools=[ping], run_tools=True, stream=True)
    for event in stream:
        if event.type == "tool_result":
            stream.close()
    assert runs == [1] and len(fake.chat_requests) == 1
    assert stream.closed_early and [(r["name"], r["arguments"], r["result"]) for r in stream.tool_results] == [("ping", {"n": 1}, 1)]


def test_include_tool_calling_hands_out_only_the_calls(one):
    client, fake = one
    _two_rounds(fake)
    stream = client.chat("weather?", model=M, tools=[get_weather], run_tools=True, stream=True, include=["tool_calling"])
    assert [(e.type, e.tool_name) for e in stream] == [("tool_call", "get_weather")]
    kept = [e.type for e in stream.events]
    assert kept[0] == "start" and "tool_result" in kept and kept[-1] == "end"
    assert stream.text() == "".join(ANSWER)
    _two_rounds(fake)
    both = client.chat("weather?", model=M, tools=[get_weather], run_tools=True, stream=True, include=["tool_call", "tool_result"])
    assert [e.type for e in both] == ["tool_call", "tool_result"]


def test_only_the_final_answer_is_validated_as_the_output_type(one):
    class Weather(pydantic.BaseModel):
        city: str
        temp: int

    client, fake = one
    answer = ('{"city": "Paris", ', '"temp": 18}')
    _two_rounds(fake, answer)
    reply = client.chat("weather?", model=M, tools=[get_weather], run_tools=True, output_type=Weather)
    assert reply.output == Weather(city="Paris", temp=18) and len(reply.tool_results) == 1
    _two_rounds(fake, answer)
    stream = client.chat("weather?", model=M, tools=[get_weather], run_tools=True, output_type=Weather, stream=True)
    assert stream.output is None
    assert stream.reply().output == Weather(city="Paris", temp=18) == stream.output


def test_sync_client_refuses_an_async_tool_even_streamed():
    async def lookup(city: str) -> str:
        """Look a city up."""
        return city

    from aicortex import Client

    with Client(Registry.memory()) as client:
        with pytest.raises(ConfigError, match="AsyncClient"):
            client.chat("x", model=M, tools=[lookup], run_tools=True, stream=True)


def test_async_client_streams_the_loop_in_both_forms_and_awaits_async_tools():
    async def lookup(city: str) -> str:
        """Look a city up."""
        await asyncio.sleep(0)
        return f"{city}: 18 C"

    async def main(fake: FakeOllama) -> None:
        reg = Registry.memory()
        reg.add(fake.url)
        async with AsyncClient(reg, timeout=FAST) as client:
            call = {"function": {"name": "lookup", "arguments": {"city": "Oslo"}}}
            fake.push(Script(tokens=(), tool_calls=(call,)), Script(tokens=("Mild",)))
            async with client.chat("w?", model=M, tools=[lookup], run_tools=True, stream=True) as s:
                kinds = [e.type async for e in s]
                assert kinds == ["start", "tool_call", "tool_result", "meta", "token", "end"]
                assert s.events[2].tool_result == "Oslo: 18 C"
                assert await s.text() == "Mild"
            assert s._closed
            fake.push(Script(tokens=(), tool_calls=(call,)), Script(tokens=("Mild",)))
            stream = await client.chat("w?", model=M, tools=[lookup], run_tools=True, stream=True)
            assert [e.type async for e in stream][-1] == "end"
            reply = await stream.reply()
            assert reply.tool_results[0]["result"] == "Oslo: 18 C" and reply.text == "Mild"
            assert fake.chat_requests[-1].body["messages"][-1]["content"] == "Oslo: 18 C"
        reg.close()

    with FakeOllama(models=[M]) as fake:
        asyncio.run(main(fake))


def test_cancelling_an_async_stream_while_a_tool_runs_stops_the_loop():
    started = asyncio.Event

    async def main(fake: FakeOllama) -> None:
        running = started()

        async def slow(x: int) -> int:
            """Never returns by itself."""
            running.set()
            await asyncio.Event().wait()
            return x

        reg = Registry.memory()
        reg.add(fake.url)
        async with AsyncClient(reg, timeout=FAST) as client:
            fake.push(Script(tokens=(), tool_calls=({"function": {"name": "slow", "arguments": {"x": 1}}},)))
            stream = await client.chat("go", model=M, tools=[slow], run_tools=True, stream=True)

            async def consume() -> None:
                async for _ in stream:
                    pass

            task = asyncio.create_task(consume())
            await running.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert stream._closed and stream.closed_early and stream.tool_results == ()
            assert len(fake.chat_requests) == 1
        reg.close()

    with FakeOllama(models=[M]) as fake:
        asyncio.run(main(fake))


# -- the flow, without sockets ---------------------------------------------------------------------
def _reply(message, attempts=1, ttft=0.5):
    return Reply(text=message.get("content", ""), message=message, usage=None, server="http://a",
                 attempts=tuple(Attempt(server="http://a", number=i + 1) for i in range(attempts)), ttft_s=ttft)


def test_the_flow_asks_runs_and_stops_at_a_reply_without_calls():
    loop = ToolLoop([{"role": "user", "content": "hi"}], {"f": lambda x: x * 2}, max_rounds=3, wall=lambda: 42.0)
    flow = tool_loop_flow(loop)
    ask = next(flow)
    assert isinstance(ask, AskRound) and ask.number == 1 and ask.messages == [{"role": "user", "content": "hi"}]
    calls = [{"function": {"name": "f", "arguments": {"x": 2}}}, {"id": "c2", "function": {"name": "f", "arguments": {"x": "bad"}}}]
    run = flow.send(_reply({"role": "assistant", "content": "", "tool_calls": calls}))
    assert isinstance(run, RunTool) and run.name == "f" and run.args == {"x": 2}
    [ok] = flow.send((True, 4))
    assert (ok.type, ok.tool_result, ok.content, ok.meta, ok.timestamp) == ("tool_result", 4, "4", {"index": 0, "round": 1}, 42.0)
    assert isinstance(flow.send(None), RunTool)
    [bad] = flow.send((False, TypeError("boom")))
    assert bad.tool_result == "error: TypeError: boom" and bad.meta == {"index": 1, "round": 1, "id": "c2", "error": True}
    ask = flow.send(None)
    assert isinstance(ask, AskRound) and ask.number == 2
    assert [m["role"] for m in ask.messages] == ["user", "assistant", "tool", "tool"]
    assert ask.messages[3] == {"role": "tool", "tool_name": "f", "content": "error: TypeError: boom", "tool_call_id": "c2"}
    with pytest.raises(StopIteration) as stop:
        flow.send(_reply({"role": "assistant", "content": "done"}, attempts=2, ttft=0.1))
    final = stop.value.value
    assert final is loop.final and final.text == "done" and len(final.tool_results) == 2 and len(final.attempts) == 2
