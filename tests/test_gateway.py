"""The gateway driven by real clients (the official ``ollama`` client, sync and async; the
``openai`` client; raw httpx and sockets) over a fleet of loopback FakeOllama servers, with
servers dying mid-reply."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import httpx
import ollama
import openai
import pytest

from aicortex import Registry
from aicortex.gateway import ServerThread, create_app
from aicortex.testing import FakeOllama, Script

pytestmark = pytest.mark.timeout(60)

MODEL = "llama3.2"
WORDS = tuple(f"word{i} " for i in range(30))
FULL = "".join(WORDS)
KEY = "k" * 20 + "-gateway-test-key"


class Fleet:
    """Three FakeOllama servers in a fixed routing order (priorities 30, 20, 10) behind a
    gateway served by uvicorn on a free loopback port."""

    def __init__(self, tmp_path, n=3, models=(MODEL,), token_delay=0.002, prepare=None, **config):
        self.fakes = [FakeOllama(models=list(models)).start() for _ in range(n)]
        for f in self.fakes:
            f.default_script = Script(tokens=WORDS, token_delay=token_delay)
        if prepare is not None:
            prepare(self.fakes)
        self.registry = Registry.memory()
        for i, f in enumerate(self.fakes):
            self.registry.add(f.url, name=f"fake{i}", priority=30 - 10 * i)
        config.setdefault("refresh_interval_s", None)
        headers_timeout_s = config.pop("headers_timeout_s", 10.0)
        self.app = create_app(self.registry, **config)
        self.server = ServerThread(self.app, headers_timeout_s=headers_timeout_s).start()
        self.url = self.server.url
        self._clients = []

    def ollama(self, **kw):
        """An official ollama.Client on the gateway (closed with the fleet)."""
        self._clients.append(ollama.Client(host=self.url, **kw))
        return self._clients[-1]

    def openai(self, api_key="unused", **kw):
        """An openai.OpenAI client on the gateway's /v1 (closed with the fleet)."""
        self._clients.append(openai.OpenAI(base_url=self.url + "/v1", api_key=api_key, **kw))
        return self._clients[-1]

    def close(self):
        for c in self._clients:
            c.close()
        self.server.stop()
        for f in self.fakes:
            f.stop()
        self.registry.close()

    def serving(self):
        """The fake with a chat request still in flight."""
        for f in self.fakes:
            if any(not r.completed and not r.disconnected for r in f.chat_requests):
                return f
        return None


@pytest.fixture
def fleet(tmp_path):
    made = []

    def make(**kw):
        made.append(Fleet(tmp_path, **kw))
        return made[-1]

    yield make
    for f in made:
        f.close()


def ask(content="Tell me a story"):
    return [{"role": "user", "content": content}]


# -- the official ollama client ------------------------------------------------------------------
def test_ollama_client_stream_survives_a_server_killed_mid_reply(fleet):
    fl = fleet(token_delay=0.01)
    client = fl.ollama()
    parts, killed = [], None
    for part in client.chat(model=MODEL, messages=ask(), stream=True):
        parts.append(part.message.content)
        if len(parts) == 5:
            killed = fl.serving()
            killed.kill()
    assert killed is fl.fakes[0]
    assert "".join(parts) == FULL  # once, in order, nothing lost or repeated
    assert part.done and part.done_reason == "stop"
    # the next server was asked to continue the partial reply (a prefill), not to start over
    cont = fl.fakes[1].chat_requests[-1].body
    assert cont["messages"][-1]["role"] == "assistant" and FULL.startswith(cont["messages"][-1]["content"])
    assert cont["stream"] is True


def test_ollama_client_not_streamed_fails_over_mid_reply(fleet):
    fl = fleet()
    fl.fakes[0].push(Script(tokens=WORDS, drop_after=7))
    reply = fl.ollama().chat(model=MODEL, messages=ask(), stream=False)
    assert reply.message.content == FULL and reply.done
    fl.fakes[1].push(Script(tokens=WORDS, drop_after=7))  # fakes[0]'s breaker is open now: fakes[1] serves first
    body = httpx.post(fl.url + "/api/chat", json={"model": MODEL, "messages": ask(), "stream": False}).json()
    assert body["message"]["content"] == FULL and body["aicortex"]["failovers"] == ["continue"]
    # upstream is always streamed, whatever the client asked
    assert fl.fakes[0].chat_requests[0].body["stream"] is True


def test_ollama_async_client_streamed_and_not(fleet):
    fl = fleet()
    fl.fakes[0].push(Script(tokens=WORDS, token_delay=0.002, drop_after=4), Script(tokens=WORDS, drop_after=9))

    async def run():
        async with ollama.AsyncClient(host=fl.url) as client:
            text = ""
            async for part in await client.chat(model=MODEL, messages=ask(), stream=True):
                text += part.message.content
            whole = await client.chat(model=MODEL, messages=ask())
            return text, whole.message.content

    streamed, whole = asyncio.run(run())
    assert streamed == FULL and whole == FULL


def test_ollama_generate_raw_continues_and_embed_listing(fleet):
    fl = fleet()
    fl.fakes[0].push(Script(tokens=WORDS, token_delay=0.002, drop_after=6))
    client = fl.ollama()
    text = "".join(p.response for p in client.generate(model=MODEL, prompt="Once", raw=True, stream=True))
    assert text == FULL
    assert fl.fakes[1].generate_requests[-1].body["prompt"].startswith("Once" + "".join(WORDS[:6]))
    vectors = client.embed(model=MODEL, input=["a", "b"]).embeddings
    direct = httpx.post(fl.fakes[2].url + "/api/embed", json={"model": MODEL, "input": ["a", "b"]}).json()["embeddings"]
    assert vectors == direct  # the same floats, passed through
    assert [m.model for m in client.list().models] == ["llama3.2:latest"]
    assert client.show(MODEL).modelfile is not None


def test_a_restart_after_output_ends_with_an_error_line_never_a_silent_truncation(fleet):
    # A templated /api/generate prompt cannot be continued: the engine restarts the reply
    # on the next server; the client already has part of it, so it gets an error.
    fl = fleet()
    fl.fakes[0].push(Script(tokens=WORDS, token_delay=0.002, drop_after=6))
    client = fl.ollama()
    got = []
    with pytest.raises(ollama.ResponseError) as info:
        for part in client.generate(model=MODEL, prompt="Once", stream=True):
            got.append(part.response)
    assert "cannot be continued" in info.value.error
    assert "".join(got) == "".join(WORDS[:6])  # what was sent stays as sent: no duplicate text


def test_structured_output_restart_after_output_is_an_error_event(fleet):
    fl = fleet()
    fl.fakes[0].push(Script(tokens=WORDS, token_delay=0.002, drop_after=10))
    lines = _ndjson(fl.url + "/api/chat", {"model": MODEL, "messages": ask(), "format": "json"})
    assert lines[-1] == {"error": lines[-1]["error"]} and "structured output" in lines[-1]["error"]
    assert not any(line.get("done") for line in lines)


def test_a_failure_before_the_first_token_is_invisible(fleet):
    fl = fleet()
    fl.fakes[0].push(Script(status=500))
    fl.fakes[1].push(Script(drop_after=0))
    lines = _ndjson(fl.url + "/api/chat", {"model": MODEL, "messages": ask(), "format": "json"})
    assert "".join(l["message"]["content"] for l in lines) == FULL
    assert lines[-1]["done"] is True and lines[-1]["aicortex"]["server"] == fl.fakes[2].url
    assert lines[-1]["aicortex"]["attempts"] == 3 and lines[-1]["aicortex"]["failovers"] == ["retry", "retry"]


# -- raw HTTP --------------------------------------------------------------------------------------
def _ndjson(url, body, **kw):
    with httpx.stream("POST", url, json=body, timeout=30, **kw) as r:
        assert r.status_code == 200
        return [json.loads(line) for line in r.iter_lines()]


def test_raw_http_stream_shape_headers_and_trailer(fleet):
    fl = fleet()
    fl.fakes[0].push(Script(tokens=WORDS, token_delay=0.002, drop_after=3))
    with httpx.stream("POST", fl.url + "/api/chat", json={"model": MODEL, "messages": ask()}) as r:
        assert r.headers["content-type"] == "application/x-ndjson"
        request_id = r.headers["x-aicortex-request-id"]
        raw = r.read()
    lines = raw.split(b"\n")
    assert lines[-1] == b"" and all(lines[:-1])  # one object per line, no blank line
    chunks = [json.loads(line) for line in lines[:-1]]
    assert all(c["model"] == MODEL and c["message"]["role"] == "assistant" for c in chunks)
    assert all(c["done"] is False for c in chunks[:-1])
    final = chunks[-1]
    assert final["done"] is True and final["done_reason"] == "stop" and final["eval_count"] > 0
    assert final["aicortex"] == {
        "request_id": request_id, "server": fl.fakes[1].url, "attempts": 2, "failovers": ["continue"],
    }


def test_curl_style_non_stream_and_generate_context(fleet):
    fl = fleet()
    r = httpx.post(fl.url + "/api/generate", json={"model": MODEL, "prompt": "hi", "stream": False})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json; charset=utf-8"
    body = r.json()
    assert body["response"] == FULL and body["done"] is True and body["context"]


def test_root_version_tags_ps_union(fleet):
    def prepare(fakes):
        fakes[1].models = [MODEL, "qwen3:8b"]
        fakes[1].version = "0.11.0"

    fl = fleet(prepare=prepare)
    assert httpx.get(fl.url + "/").text == "Ollama is running"
    assert httpx.head(fl.url + "/").status_code == 200
    assert httpx.get(fl.url + "/api/version").json() == {"version": "0.11.0"}
    names = [m["name"] for m in httpx.get(fl.url + "/api/tags").json()["models"]]
    assert names == ["llama3.2:latest", "qwen3:8b"]
    ps = [m["name"] for m in httpx.get(fl.url + "/api/ps").json()["models"]]
    assert sorted(ps) == ["llama3.2:latest", "qwen3:8b"]
    assert httpx.get(fl.url + "/api/nope").text == "404 page not found"


def test_client_disconnect_cancels_the_upstream_request(fleet):
    fl = fleet(token_delay=0.05)
    with httpx.stream("POST", fl.url + "/api/chat", json={"model": MODEL, "messages": ask()}) as r:
        next(r.iter_lines())
    assert fl.fakes[0].wait_for_disconnect(timeout=5)
    assert fl.fakes[0].chat_requests[0].tokens_sent < len(WORDS)


def test_disconnect_while_waiting_for_the_first_token_cancels_too(fleet):
    fl = fleet()
    fl.fakes[0].push(Script(first_token_delay=30))
    sock = socket.create_connection(("127.0.0.1", fl.server.port))
    body = json.dumps({"model": MODEL, "messages": ask()}).encode()
    sock.sendall(b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    assert fl.fakes[0].wait_for_requests(1, path="/api/chat", timeout=5)
    sock.close()
    assert fl.fakes[0].wait_for_disconnect(timeout=5)


# -- the openai client on /v1 -----------------------------------------------------------------------
def test_openai_stream_with_usage_survives_a_kill_mid_reply(fleet):
    fl = fleet(token_delay=0.01)
    client = fl.openai()
    text, usage, killed = "", None, None
    stream = client.chat.completions.create(
        model=MODEL, messages=ask(), stream=True, stream_options={"include_usage": True},
    )
    finish = None
    for n, chunk in enumerate(stream):
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
        if n == 4:
            killed = fl.serving()
            killed.kill()
    assert killed is fl.fakes[0]
    assert text == FULL and finish == "stop"
    assert usage is not None and usage.completion_tokens > 0 and usage.total_tokens >= usage.completion_tokens


def test_openai_non_stream_models_and_embeddings(fleet):
    fl = fleet()
    fl.fakes[0].push(Script(tokens=WORDS, drop_after=5))
    client = fl.openai()
    done = client.chat.completions.create(model=MODEL, messages=ask(), max_tokens=100, temperature=0)
    assert done.choices[0].message.content == FULL and done.choices[0].finish_reason == "stop"
    sent = fl.fakes[0].chat_requests[0].body
    assert sent["options"] == {"temperature": 0, "num_predict": 100}
    assert [m.id for m in client.models.list().data] == ["llama3.2:latest"]
    assert client.models.retrieve("llama3.2").id == "llama3.2:latest"
    emb = client.embeddings.create(model=MODEL, input=["a", "b"])  # the SDK asks for base64
    direct = httpx.post(fl.fakes[0].url + "/api/embed", json={"model": MODEL, "input": ["a", "b"]}).json()["embeddings"]
    assert [d.embedding for d in emb.data] == [pytest.approx(v, rel=1e-6) for v in direct]


def test_openai_errors_have_openai_shape(fleet):
    fl = fleet()
    client = fl.openai(max_retries=0)
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="nope", messages=ask())
    assert info.value.body["code"] == "model_not_found" and info.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[])


def test_openai_restart_after_output_is_an_error_event(fleet):
    fl = fleet()
    fl.fakes[0].push(Script(tokens=WORDS, token_delay=0.002, drop_after=10))
    client = fl.openai(max_retries=0)
    got = ""
    with pytest.raises(openai.APIError) as info:
        for chunk in client.chat.completions.create(
            model=MODEL, messages=ask(), stream=True, response_format={"type": "json_object"},
        ):
            got += "".join(c.delta.content or "" for c in chunk.choices)
    assert "cannot be continued" in str(info.value) and got == "".join(WORDS[:10])


def test_openai_tool_calls_round_trip(fleet):
    fl = fleet()
    fl.fakes[0].push(Script(tokens=(), tool_calls=({"name": "get_weather", "arguments": {"city": "Paris"}},)))
    client = fl.openai()
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    done = client.chat.completions.create(model=MODEL, messages=ask("weather?"), tools=tools)
    call = done.choices[0].message.tool_calls[0]
    assert done.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    follow = [*ask("weather?"), done.choices[0].message.model_dump(exclude_none=True),
              {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
    client.chat.completions.create(model=MODEL, messages=follow, tools=tools)
    sent = fl.fakes[0].chat_requests[-1].body["messages"]
    assert sent[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert sent[2] == {"role": "tool", "content": "sunny", "tool_call_id": call.id, "tool_name": "get_weather"}


# -- bad input, limits and keys -----------------------------------------------------------------------
def test_malformed_json_is_400_with_ollama_error_body(fleet):
    fl = fleet()
    r = httpx.post(fl.url + "/api/chat", content=b'{"model": "llama3.2", "messages": [', headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"].startswith("invalid JSON")
    r = httpx.post(fl.url + "/api/chat", content=b"")
    assert (r.status_code, r.json()) == (400, {"error": "model is required"})
    r = httpx.post(fl.url + "/v1/chat/completions", content=b"[1,")
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_unknown_model_is_404_in_ollama_words(fleet):
    fl = fleet()
    r = httpx.post(fl.url + "/api/chat", json={"model": "nope", "messages": ask()})
    assert (r.status_code, r.json()) == (404, {"error": "model 'nope' not found"})
    r = httpx.post(fl.url + "/api/embed", json={"model": "nope", "input": "x"})
    assert (r.status_code, r.json()) == (404, {"error": 'model "nope" not found, try pulling it first'})
    with pytest.raises(ollama.ResponseError) as info:
        fl.ollama().chat(model="nope", messages=ask(), stream=True).__next__()
    assert info.value.status_code == 404


def test_oversized_body_is_413(fleet):
    fl = fleet(max_body_bytes=1000)
    r = httpx.post(fl.url + "/api/chat", json={"model": MODEL, "messages": ask("x" * 2000)})
    assert r.status_code == 413 and "too large" in r.json()["error"]
    assert not fl.fakes[0].chat_requests


def test_missing_and_wrong_key_are_401_and_the_key_is_not_forwarded(fleet):
    fl = fleet(api_keys=[KEY])
    r = httpx.post(fl.url + "/api/chat", json={"model": MODEL, "messages": ask()})
    assert r.status_code == 401 and r.json() == {"error": "missing API key: send it as 'Authorization: Bearer KEY'"}
    assert r.headers["www-authenticate"] == "Bearer"
    r = httpx.post(fl.url + "/api/chat", json={"model": MODEL, "messages": ask()}, headers={"Authorization": "Bearer " + "x" * 37})
    assert (r.status_code, r.json()) == (401, {"error": "invalid API key"})
    with pytest.raises(openai.AuthenticationError):
        fl.openai(api_key="wrong-key-wrong-key", max_retries=0).models.list()
    assert httpx.get(fl.url + "/").status_code == 200  # liveness needs no key
    good = fl.ollama(headers={"Authorization": f"Bearer {KEY}"})
    assert good.chat(model=MODEL, messages=ask()).message.content == FULL
    assert "authorization" not in {k.lower() for k in fl.fakes[0].chat_requests[-1].headers}
    assert fl.openai(api_key=KEY).models.list().data


def test_slow_loris_body_gets_408(fleet):
    fl = fleet(body_timeout_s=0.3)
    sock = socket.create_connection(("127.0.0.1", fl.server.port))
    sock.settimeout(10)
    sock.sendall(b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"mo")
    reply = b""
    while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
        data = sock.recv(4096)
        if not data:
            break
        reply += data
    sock.close()
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408")
    assert json.loads(body)["error"] == "the request body did not arrive within 0.3 s"


def test_queue_full_is_503_in_ollama_busy_shape(fleet):
    fl = fleet(max_active=1, max_queue=0)
    fl.fakes[0].push(Script(first_token_delay=30))
    holder = threading.Thread(target=lambda: httpx.post(fl.url + "/api/chat", json={"model": MODEL, "messages": ask()}, timeout=60))
    holder.start()
    assert fl.fakes[0].wait_for_requests(1, path="/api/chat", timeout=5)
    r = httpx.post(fl.url + "/api/chat", json={"model": MODEL, "messages": ask()})
    assert (r.status_code, r.json()) == (503, {"error": "server busy, please try again.  maximum pending requests exceeded"})
    fl.fakes[0].kill()  # the held request fails over and finishes
    holder.join(30)
    assert not holder.is_alive()


def test_per_client_limit(fleet):
    fl = fleet(per_client=1)
    fl.fakes[0].push(Script(first_token_delay=30))
    holder = threading.Thread(target=lambda: httpx.post(fl.url + "/api/chat", json={"model": MODEL, "messages": ask()}, timeout=60))
    holder.start()
    assert fl.fakes[0].wait_for_requests(1, path="/api/chat", timeout=5)
    r = httpx.post(fl.url + "/api/chat", json={"model": MODEL, "messages": ask()})
    assert r.status_code == 503 and "too many concurrent requests from this client" in r.json()["error"]
    fl.fakes[0].kill()
    holder.join(30)


# -- observability ---------------------------------------------------------------------------------
def test_metrics_and_health(fleet, caplog):
    fl = fleet()
    fl.fakes[0].push(Script(tokens=WORDS, drop_after=3))
    with caplog.at_level("INFO", logger="aicortex.gateway.access"):
        assert fl.ollama().chat(model=MODEL, messages=ask()).message.content == FULL
        text = httpx.get(fl.url + "/metrics").text
    assert 'aicortex_gateway_failovers_total{kind="continue"} 1.0' in text
    assert 'aicortex_gateway_requests_total{route="/api/chat",status="200"} 1.0' in text
    assert f'aicortex_gateway_ttft_seconds_count{{model="{MODEL}",server="{fl.fakes[1].url}"}} 1.0' in text
    assert f'aicortex_server_breaker_state{{server="{fl.fakes[0].url}"}}' in text
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "aicortex.gateway.access"]
    chat = [line for line in lines if line["path"] == "/api/chat"][0]
    assert chat["status"] == 200 and chat["server"] == fl.fakes[1].url and chat["attempts"] == 2
    health = httpx.get(fl.url + "/health").json()
    assert health["servers"] == 3 and health["servers_up"] == 3


def test_many_concurrent_streams_each_survive_failover(fleet):
    fl = fleet(token_delay=0.001)
    for _ in range(10):
        fl.fakes[0].push(Script(tokens=WORDS, token_delay=0.001, drop_after=5))

    async def one(client):
        return "".join([p.message.content async for p in await client.chat(model=MODEL, messages=ask(), stream=True)])

    async def run():
        async with ollama.AsyncClient(host=fl.url) as client:
            return await asyncio.gather(*(one(client) for _ in range(20)))

    assert asyncio.run(run()) == [FULL] * 20
    assert time.monotonic()  # (no wall-clock bound: see benchmarks/bench_gateway.py)


def test_load_and_unload_requests_are_one_json_object(fleet):
    fl = fleet()
    r = httpx.post(fl.url + "/api/chat", json={"model": MODEL})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json; charset=utf-8"
    assert r.json()["done_reason"] == "load" and r.json()["done"] is True
    r = httpx.post(fl.url + "/api/generate", json={"model": MODEL, "keep_alive": 0})
    assert r.json()["done_reason"] == "unload"


def test_thinking_and_tool_calls_pass_through_the_ollama_client(fleet):
    fl = fleet()
    call = {"name": "get_weather", "arguments": {"city": "Tokyo"}}
    fl.fakes[0].push(Script(thinking=("Let me ", "think"), tokens=("Sure",), tool_calls=(call,)))
    parts = list(fl.ollama().chat(model=MODEL, messages=ask(), think=True, stream=True,
                                  tools=[{"type": "function", "function": {"name": "get_weather"}}]))
    assert "".join(p.message.thinking or "" for p in parts) == "Let me think"
    assert "".join(p.message.content for p in parts) == "Sure"
    calls = [c for p in parts for c in (p.message.tool_calls or ())]
    assert [(c.function.name, dict(c.function.arguments)) for c in calls] == [("get_weather", {"city": "Tokyo"})]
    sent = fl.fakes[0].chat_requests[0].body
    assert sent["think"] is True and sent["tools"][0]["function"]["name"] == "get_weather"


def test_aicortex_serve_runs_the_gateway(tmp_path):
    """`aicortex serve` as a user runs it: a child process on a free loopback port, over a
    registry file; stopped by its own PID."""
    import subprocess
    import sys

    with FakeOllama(models=[MODEL], script=Script(tokens=WORDS)) as fake:
        db = tmp_path / "servers.db"
        reg = Registry(db, seed=False)
        reg.add(fake.url)
        reg.close()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        proc = subprocess.Popen(
            [sys.executable, "-m", "aicortex", "serve", "--db", str(db), "--port", str(port), "--refresh-interval", "0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(url + "/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert proc.poll() is None and time.monotonic() < deadline, "aicortex serve did not start"
                time.sleep(0.05)
            with ollama.Client(host=url) as client:
                assert client.chat(model=MODEL, messages=ask()).message.content == FULL
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=15)
        assert f"gateway on http://127.0.0.1:{port}" in err
        assert '"path":"/api/chat","status":200' in err  # the access log line


def test_a_finished_upstream_body_is_drained_not_cut(fleet, caplog):
    # A server that holds its body open after done: the client's answer ends at once, and
    # the gateway then drains the upstream body (so its connection goes back to the pool)
    # instead of taking the end of the client's side for a disconnect and cutting it.
    fl = fleet()
    fl.fakes[0].push(Script(tokens=WORDS, hold_after_done=0.1))  # within the drain limit (DRAIN_S)
    with caplog.at_level("INFO", logger="aicortex.gateway.access"):
        lines = _ndjson(fl.url + "/api/chat", {"model": MODEL, "messages": ask()})
        assert lines[-1]["done"] is True
        deadline = time.monotonic() + 5
        while not any(r.name == "aicortex.gateway.access" for r in caplog.records) and time.monotonic() < deadline:
            time.sleep(0.01)
    access = [json.loads(r.getMessage()) for r in caplog.records if r.name == "aicortex.gateway.access"]
    assert access[0]["status"] == 200 and access[0]["ms"] >= 100  # it waited for the drain
    assert "disconnected" not in access[0]


def test_every_server_dying_mid_reply_ends_with_an_error_not_a_truncation(fleet):
    fl = fleet()
    for f in fl.fakes:
        f.push(Script(tokens=WORDS, token_delay=0.002, drop_after=4))
    got = []
    with pytest.raises(ollama.ResponseError) as info:
        for part in fl.ollama().chat(model=MODEL, messages=ask(), stream=True):
            got.append(part.message.content)
    assert "no server could continue it" in info.value.error
    assert FULL.startswith("".join(got)) and len("".join(got)) < len(FULL)
    # the same on /v1: an error event, which the OpenAI SDK raises
    for f in fl.fakes:
        f.push(Script(tokens=WORDS, token_delay=0.002, drop_after=4))
    with pytest.raises(openai.APIError, match="no server could continue it"):
        for _ in fl.openai(max_retries=0).chat.completions.create(model=MODEL, messages=ask(), stream=True):
            pass


def test_slow_loris_headers_get_the_connection_closed(fleet):
    fl = fleet(headers_timeout_s=0.3)
    sock = socket.create_connection(("127.0.0.1", fl.server.port))
    sock.settimeout(10)
    t0 = time.monotonic()
    sock.sendall(b"POST /api/chat HTTP/1.1\r\nHost: x\r\n")  # ... and never the rest
    assert sock.recv(100) == b""  # closed by the gateway
    assert time.monotonic() - t0 < 5
    sock.close()
    # a request whose headers arrive in time is served as usual, also after a slow reply
    r = httpx.post(fl.url + "/api/chat", json={"model": MODEL, "messages": ask(), "stream": False}, timeout=30)
    assert r.json()["message"]["content"] == FULL


def test_a_restart_is_invisible_when_nothing_was_sent_yet(fleet):
    # stream: false, structured output: the engine restarts the reply on the next server
    # after a mid-reply failure; the client had received nothing, so it sees one answer.
    fl = fleet()
    fl.fakes[0].push(Script(tokens=WORDS, token_delay=0.001, drop_after=10))
    body = httpx.post(fl.url + "/api/chat", json={"model": MODEL, "messages": ask(), "format": "json", "stream": False}).json()
    assert body["message"]["content"] == FULL and body["aicortex"]["failovers"] == ["restart"]
    fl.fakes[1].push(Script(tokens=WORDS, token_delay=0.001, drop_after=10))  # fakes[0]'s breaker is open now
    done = fl.openai().chat.completions.create(model=MODEL, messages=ask(), response_format={"type": "json_object"})
    assert done.choices[0].message.content == FULL
    assert fl.fakes[1].chat_requests[-1].tokens_sent == 10 and fl.fakes[2].chat_requests[-1].completed


def test_keys_guard_metrics_but_not_liveness(fleet):
    fl = fleet(api_keys=[KEY])
    assert httpx.get(fl.url + "/metrics").status_code == 401
    assert httpx.get(fl.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert httpx.get(fl.url + "/health").status_code == 200
    assert httpx.head(fl.url + "/").status_code == 200
    r = httpx.get(fl.url + "/v1/models")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_openai_text_completions(fleet):
    fl = fleet()
    client = fl.openai(max_retries=0)
    fl.fakes[0].push(Script(status=503))  # before the first token: invisible
    text, finish, usage = "", None, None
    for chunk in client.completions.create(model=MODEL, prompt="Once", stream=True, max_tokens=50,
                                           stream_options={"include_usage": True}):
        text += "".join(c.text for c in chunk.choices)
        finish = next((c.finish_reason for c in chunk.choices if c.finish_reason), finish)
        usage = chunk.usage or usage
    assert text == FULL and finish == "stop" and usage.completion_tokens > 0
    sent = fl.fakes[1].generate_requests[-1].body
    assert sent["prompt"] == "Once" and sent["options"] == {"num_predict": 50} and sent["stream"] is True
    # not streamed: a mid-reply failure is restarted before anything reached the client
    fl.fakes[1].push(Script(tokens=WORDS, drop_after=5))  # fakes[0]'s breaker is open now
    done = client.completions.create(model=MODEL, prompt="Once", suffix="The end.")
    assert done.choices[0].text == FULL and done.object == "text_completion"
    assert fl.fakes[2].generate_requests[-1].body["suffix"] == "The end."
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL, prompt="Once", echo=True)


def test_openai_text_completion_restart_after_output_is_an_error_event(fleet):
    fl = fleet()
    fl.fakes[0].push(Script(tokens=WORDS, token_delay=0.002, drop_after=5))
    got = ""
    with pytest.raises(openai.APIError, match="cannot be continued"):
        for chunk in fl.openai(max_retries=0).completions.create(model=MODEL, prompt="Once", stream=True):
            got += "".join(c.text for c in chunk.choices)
    assert got == "".join(WORDS[:5])


def test_show_and_legacy_embeddings(fleet):
    fl = fleet()
    r = httpx.post(fl.url + "/api/show", json={"model": MODEL})
    assert r.status_code == 200 and "template" in r.json() and "model_info" in r.json()
    assert httpx.post(fl.url + "/api/show", json={}).json() == {"error": "model is required"}
    assert httpx.post(fl.url + "/api/show", content=b"").json() == {"error": "missing request body"}
    r = httpx.post(fl.url + "/api/show", json={"model": "nope"})
    assert (r.status_code, r.json()) == (404, {"error": "model 'nope' not found"})
    legacy = httpx.post(fl.url + "/api/embeddings", json={"model": MODEL, "prompt": "a"}).json()
    modern = httpx.post(fl.url + "/api/embed", json={"model": MODEL, "input": "a"}).json()
    assert legacy == {"embedding": modern["embeddings"][0]} and len(legacy["embedding"]) == 8
    assert httpx.post(fl.url + "/api/embed", json={"model": MODEL, "input": [1, 2]}).json() == {"error": "invalid input type"}
