"""The gateway's pure parts without sockets: the relay (events -> client bytes), admission
limits, OpenAI shapes, API keys; and `aicortex serve`'s refusals."""

from __future__ import annotations

import asyncio
import base64
import json
import struct

import pytest
from click.testing import CliRunner

from aicortex import Attempt, ConfigError, StreamEvent, Usage
from aicortex.cli import cli
from aicortex.gateway import _openai
from aicortex.gateway._limits import BUSY_ERROR, Busy, Limiter
from aicortex.gateway._metrics import breaker_state
from aicortex.gateway._relay import Relay
from aicortex.gateway._security import KeyRing, is_loopback, load_keys


def tok(text):
    return StreamEvent("token", text)


def meta(mode):
    return StreamEvent("meta", meta={"failover": mode, "from": "a", "to": "b"})


def lines(data):
    return [json.loads(x) for x in data.splitlines() if x]


# -- relay -------------------------------------------------------------------------------------------
def test_relay_hides_a_continuation():
    r = Relay("ollama", model="m", request_id="rid")
    out = r.event(tok("Hel")) + r.event(StreamEvent("error", "boom")) + r.event(meta("continue")) + r.event(tok("lo"))
    assert [c["message"]["content"] for c in lines(out)] == ["Hel", "lo"]
    assert r.broken is None and r.failovers == ["continue"]
    attempts = (Attempt("http://a", 1, error=ConfigError("x")), Attempt("http://b", 2, mode="continue"))
    final = lines(r.finish(usage=Usage(eval_count=2, done_reason="stop"), server="http://b", attempts=attempts))[0]
    assert final["done"] is True and final["eval_count"] == 2
    assert final["aicortex"] == {"request_id": "rid", "server": "http://b", "attempts": 2, "failovers": ["continue"]}


def test_relay_restart_before_output_is_invisible():
    r = Relay("ollama", model="m", request_id="rid")
    assert r.event(meta("restart")) + r.event(StreamEvent("reset")) == b""
    assert r.event(tok("A")) and r.broken is None


def test_relay_restart_after_output_writes_one_error_line_and_nothing_more():
    r = Relay("ollama", model="m", request_id="rid", structured=True)
    r.event(tok("{\"a\""))
    out = r.event(meta("restart")) + r.event(StreamEvent("reset"))
    assert lines(out) == [{"error": r.broken}] and "structured output" in r.broken
    assert r.event(tok("{\"a\"")) == b""  # the restarted reply is never appended


def test_relay_tool_call_then_restart_names_the_tool_call():
    r = Relay("openai", model="m", request_id="chatcmpl-1")
    r.event(StreamEvent("tool_call", tool_name="f", tool_args={"x": 1}, meta={"id": "call_1", "index": 0}))
    out = r.event(meta("restart")) + r.event(StreamEvent("reset"))
    assert out.endswith(b"data: [DONE]\n\n")
    err = json.loads(out.split(b"\n\n")[0][len(b"data: "):])
    assert err["error"]["type"] == "server_error" and "tool call" in err["error"]["message"]


def test_openai_relay_chunks_usage_and_done():
    r = Relay("openai", model="m", request_id="chatcmpl-x", created=7, include_usage=True)
    first = r.event(tok("Hi"))
    second = r.event(StreamEvent("thinking", "hmm"))
    assert first.startswith(b"data: ") and first.endswith(b"\n\n")
    c1 = json.loads(first[6:])
    assert c1["choices"][0]["delta"] == {"role": "assistant", "content": "Hi"} and c1["created"] == 7
    assert json.loads(second[6:])["choices"][0]["delta"] == {"reasoning": "hmm"}
    tail = r.finish(usage=Usage(prompt_eval_count=3, eval_count=5, done_reason="length"), server="s", attempts=(Attempt("s", 1),))
    events = [e for e in tail.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    finish, usage = json.loads(events[0][6:]), json.loads(events[1][6:])
    assert finish["choices"][0]["finish_reason"] == "length"
    assert usage["choices"] == [] and usage["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}


# -- limits ------------------------------------------------------------------------------------------
def test_limiter_queue_is_fifo_bounded_and_per_client():
    async def run():
        lim = Limiter(max_active=1, max_queue=1, per_client=2, queue_timeout_s=5)
        order = []
        release = asyncio.Event()

        async def holder():
            async with lim.slot("a"):
                order.append("a1")
                await release.wait()

        async def waiter():
            async with lim.slot("b"):
                order.append("b1")

        t1 = asyncio.ensure_future(holder())
        await asyncio.sleep(0)
        t2 = asyncio.ensure_future(waiter())
        await asyncio.sleep(0)
        assert (lim.active, lim.queued) == (1, 1)
        with pytest.raises(Busy, match="maximum pending requests exceeded"):
            async with lim.slot("c"):
                pass
        release.set()
        await asyncio.gather(t1, t2)
        assert order == ["a1", "b1"] and (lim.active, lim.queued) == (0, 0)

        # per client: the third concurrent request of one client is refused
        gate = asyncio.Event()

        async def hold(c):
            async with lim.slot(c):
                await gate.wait()

        lim2 = Limiter(max_active=5, max_queue=5, per_client=2)
        lim = lim2
        tasks = [asyncio.ensure_future(hold("x")) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(Busy, match="too many concurrent requests from this client"):
            async with lim2.slot("x"):
                pass
        async with lim2.slot("y"):
            pass
        gate.set()
        await asyncio.gather(*tasks)
        assert lim2.active == 0 and lim2._per == {}

    asyncio.run(run())


def test_limiter_queue_timeout_and_cancel_give_the_slot_back():
    async def run():
        lim = Limiter(max_active=1, max_queue=5, queue_timeout_s=0.05)
        gate = asyncio.Event()

        async def hold():
            async with lim.slot("a"):
                await gate.wait()

        t = asyncio.ensure_future(hold())
        await asyncio.sleep(0)
        with pytest.raises(Busy) as info:
            async with lim.slot("b"):
                pass
        assert str(info.value) == BUSY_ERROR
        lim.queue_timeout_s = None
        waiting = asyncio.ensure_future(lim.slot("c").__aenter__())
        await asyncio.sleep(0)
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        gate.set()
        await t
        assert (lim.active, lim.queued, lim._per) == (0, 0, {})
        async with lim.slot("d"):
            assert lim.active == 1

    asyncio.run(run())


# -- OpenAI shapes -----------------------------------------------------------------------------------
def test_chat_request_maps_openai_fields_to_ollama():
    body = {
        "model": "m", "stream": True, "stream_options": {"include_usage": True}, "max_tokens": 10, "temperature": 0.1,
        "stop": "END", "seed": 3, "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}},
        "reasoning_effort": "low",
        "messages": [
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "what is "}, {"type": "text", "text": "this?"},
                                         {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\": 1}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "42"},
        ],
    }
    out, stream, usage = _openai.chat_request(body)
    assert stream and usage and out["stream"] is True
    assert out["options"] == {"temperature": 0.1, "seed": 3, "num_predict": 10, "stop": ["END"]}
    assert out["format"] == {"type": "object"} and out["think"] == "low"
    assert out["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "what is this?", "images": ["AAAA"]},
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"index": 0, "name": "f", "arguments": {"a": 1}}, "id": "call_1"}]},
        {"role": "tool", "content": "42", "tool_call_id": "call_1", "tool_name": "f"},
    ]


@pytest.mark.parametrize("body, words", [
    ({"messages": [{"role": "user", "content": "x"}]}, "model parameter"),
    ({"model": "m", "messages": []}, "non-empty list"),
    ({"model": "m", "n": 2, "messages": [{"role": "user", "content": "x"}]}, "n must be 1"),
    ({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]}, "data URLs"),
    ({"model": "m", "messages": [{"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": "{"}}]}]}, "not JSON"),
])
def test_chat_request_rejects_what_it_cannot_send(body, words):
    with pytest.raises(ConfigError, match=words):
        _openai.chat_request(body)


def test_embeddings_base64_is_little_endian_float32():
    out = _openai.embeddings_reply("m", [[0.5, -1.0]], "base64")
    packed = base64.b64decode(out["data"][0]["embedding"])
    assert struct.unpack("<2f", packed) == (0.5, -1.0)
    assert _openai.embeddings_reply("m", [[0.5]], "float")["data"][0] == {"object": "embedding", "embedding": [0.5], "index": 0}
    with pytest.raises(ConfigError, match="token arrays"):
        _openai.embeddings_request({"model": "m", "input": [[1, 2]]})


def test_model_object_created_from_ollama_timestamp():
    obj = _openai.model_object("qwen/qwen3:8b", "2026-11-22T06:15:19.81489963Z")
    assert obj["owned_by"] == "qwen" and obj["created"] == 1795328119
    assert _openai.model_object("llama3.2:latest", "")["owned_by"] == "library"


# -- keys --------------------------------------------------------------------------------------------
def test_keyring_checks_bearer_tokens():
    ring = KeyRing(["a" * 20, "b" * 24])
    assert ring.check({"authorization": "Bearer " + "b" * 24}) == (True, "")
    assert ring.check({"authorization": "bearer " + "a" * 20})[0]
    assert ring.check({})[1].startswith("missing API key")
    assert ring.check({"authorization": "Basic xyz"})[1].startswith("malformed")
    assert ring.check({"authorization": "Bearer " + "a" * 19}) == (False, "invalid API key")
    assert KeyRing([]).check({}) == (True, "")
    assert ring.client_id({"authorization": "Bearer " + "a" * 20}).startswith("key:")


def test_load_keys_from_env_and_file(tmp_path, monkeypatch):
    f = tmp_path / "keys"
    f.write_text("# ops\n" + "f" * 20 + "\n\n")
    monkeypatch.setenv("AICORTEX_GATEWAY_KEYS", "e" * 20 + ", " + "g" * 20)
    assert load_keys(["h" * 20], f) == ("h" * 20, "e" * 20, "g" * 20, "f" * 20)
    with pytest.raises(ConfigError, match="at least 16"):
        load_keys(["short"], environ=False)
    with pytest.raises(ConfigError, match="cannot read"):
        load_keys(keys_file=tmp_path / "missing", environ=False)


def test_is_loopback():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2")


def test_breaker_state():
    assert breaker_state(0, None, 10) == 0
    assert breaker_state(2, 20, 10) == 2
    assert breaker_state(2, 5, 10) == 1


# -- aicortex serve -----------------------------------------------------------------------------------
def test_serve_refuses_a_public_bind_without_keys(tmp_path):
    from aicortex import Registry

    db = tmp_path / "r.db"
    Registry(db, seed=False).close()
    result = CliRunner().invoke(cli, ["serve", "--host", "0.0.0.0", "--db", str(db)])
    assert result.exit_code == 1 and "without API keys" in result.output


def test_serve_rejects_a_short_key(tmp_path, monkeypatch):
    monkeypatch.setenv("AICORTEX_GATEWAY_KEYS", "short")
    result = CliRunner().invoke(cli, ["serve", "--db", str(tmp_path / "r.db")])
    assert result.exit_code == 1 and "at least 16 characters" in result.output


def test_create_app_rejects_unknown_settings(registry):
    from aicortex.gateway import create_app

    with pytest.raises(ConfigError, match="max_actve"):
        create_app(registry, max_actve=3)


@pytest.mark.parametrize("protocol, endpoint", [("ollama", "chat"), ("ollama", "generate"), ("openai", "chat")])
def test_relay_fast_path_writes_what_the_shapes_write(protocol, endpoint):
    from aicortex._shapes import event_chunk

    r = Relay(protocol, endpoint=endpoint, model='m"ü', request_id="chatcmpl-1", created=5)
    r.event(tok("first"))
    text = 'a "quote", ü, \n and </think>'
    fast = r.event(tok(text))
    if protocol == "openai":
        assert fast.startswith(b"data: ") and fast.endswith(b"\n\n")
        assert json.loads(fast[6:]) == _openai.chunk("chatcmpl-1", 'm"ü', 5, {"content": text})
    else:
        obj = json.loads(fast)
        assert fast.endswith(b"\n") and fast.count(b"\n") == 1
        assert obj == event_chunk(tok(text), endpoint=endpoint, model='m"ü', stamp=obj["created_at"])
        assert obj["created_at"].endswith("Z") and len(obj["created_at"]) == 27


def test_module_level_app_for_uvicorn(tmp_path, monkeypatch):
    import aicortex.gateway as gateway
    from aicortex import Registry
    from aicortex.gateway import Gateway

    db = tmp_path / "r.db"
    Registry(db, seed=False).close()
    monkeypatch.setenv("AICORTEX_DB", str(db))
    monkeypatch.setenv("AICORTEX_GATEWAY_KEYS", "z" * 20)
    monkeypatch.setattr(gateway, "_default_app", None)
    app = gateway.app  # what `uvicorn aicortex.gateway:app` imports
    try:
        assert isinstance(app, Gateway) and app is gateway.app
        assert str(app.client.registry.path) == str(db) and app.keys.check({"authorization": "Bearer " + "z" * 20})[0]
    finally:
        asyncio.run(app.aclose())
        monkeypatch.setattr(gateway, "_default_app", None)
    with pytest.raises(AttributeError):
        gateway.nope  # noqa: B018


def test_http_protocol_sets_tcp_nodelay_on_sockets_asyncio_leaves_alone():
    # A listening socket made without IPPROTO_TCP (proto 0) gives accepted sockets that
    # asyncio does not set TCP_NODELAY on; Nagle then held every chunk after the first
    # for the client's delayed ACK (~40 ms a chunk, seen through ServerThread).
    import socket

    import uvicorn
    from uvicorn.server import ServerState

    from aicortex.gateway import http_protocol

    async def run():
        config = uvicorn.Config(lambda scope, receive, send: None, log_level="warning")
        config.load()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # proto 0
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        loop = asyncio.get_running_loop()
        try:
            for kind in ("h11", "auto"):
                cls = http_protocol(kind=kind)
                client = socket.create_connection(listener.getsockname())
                sock, _ = listener.accept()
                assert sock.proto == 0 and sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
                transport, _ = await loop.connect_accepted_socket(
                    lambda: cls(config=config, server_state=ServerState(), app_state={}), sock,
                )
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
                transport.close()
                client.close()
                await asyncio.sleep(0)
        finally:
            listener.close()

    asyncio.run(run())


def test_completion_fast_path_writes_what_the_shape_writes():
    r = Relay("openai", endpoint="generate", model="m", request_id="cmpl-1", created=5)
    first = r.event(tok("a"))
    assert r.event(StreamEvent("thinking", "hmm")) == b""  # no place for thinking in a text completion
    fast = r.event(tok('b "c"'))
    assert json.loads(first[6:]) == _openai.completion_chunk("cmpl-1", "m", 5, "a")
    assert json.loads(fast[6:]) == _openai.completion_chunk("cmpl-1", "m", 5, 'b "c"')
    tail = [e for e in r.finish(usage=Usage(done_reason="length"), server="s", attempts=(Attempt("s", 1),)).split(b"\n\n") if e]
    assert json.loads(tail[0][6:])["choices"][0] == {"text": "", "index": 0, "finish_reason": "length"}
    assert tail[-1] == b"data: [DONE]"
