"""Tests of aicortex.testing.FakeOllama and the dead-address helpers, driven by a real httpx client."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import threading
import time

import httpx
import pytest

from aicortex.testing import (
    QUEUE_FULL_ERROR,
    RUNNER_STOPPED_ERROR,
    FakeOllama,
    RequestRecord,
    Script,
    blackhole_listener,
    closed_port_url,
)

pytestmark = pytest.mark.timeout(10)

RFC3339_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")
CALL_ID = re.compile(r"^call_[a-z0-9]{8}$")
METRICS = ["total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_count", "eval_duration"]


def body(**extra):
    return {"model": "llama3.2", "messages": [{"role": "user", "content": "Why is the sky blue?"}], **extra}


def stream_chat(client: httpx.Client, url: str, payload=None, path="/api/chat"):
    """POST and return (response, raw lines, parsed lines)."""
    with client.stream("POST", url + path, json=payload if payload is not None else body()) as r:
        raw = list(r.iter_lines())
    return r, raw, [json.loads(line) for line in raw]


@pytest.fixture(autouse=True)
def no_leaked_threads():
    before = threading.active_count()
    yield
    deadline = time.monotonic() + 2
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() == before


@pytest.fixture
def fake():
    with FakeOllama(models=["llama3.2", "qwen3:8b"]) as f:
        yield f


@pytest.fixture
def client():
    with httpx.Client(timeout=5) as c:
        yield c


# -- probes --------------------------------------------------------------------------------


def test_root_version_tags_ps(fake, client):
    r = client.get(fake.url + "/")
    assert (r.status_code, r.text) == (200, "Ollama is running")
    assert r.headers["content-type"] == "text/plain; charset=utf-8"
    r = client.head(fake.url + "/")
    assert r.status_code == 200 and r.content == b""

    r = client.get(fake.url + "/api/version")
    assert r.json() == {"version": "0.12.6"}
    assert r.headers["content-type"] == "application/json; charset=utf-8"

    tags = client.get(fake.url + "/api/tags").json()
    names = [m["name"] for m in tags["models"]]
    assert names == ["llama3.2:latest", "qwen3:8b"]
    m = tags["models"][0]
    assert list(m) == ["name", "model", "modified_at", "size", "digest", "details"]
    assert m["model"] == "llama3.2:latest"
    assert m["digest"] == hashlib.sha256(b"llama3.2:latest").hexdigest()
    assert isinstance(m["size"], int) and m["size"] > 0
    assert RFC3339_Z.match(m["modified_at"])
    assert set(m["details"]) == {"parent_model", "format", "family", "families", "parameter_size", "quantization_level"}
    assert tags["models"][1]["details"]["parameter_size"] == "8.0B"
    assert client.get(fake.url + "/api/tags").json() == tags  # stable

    ps = client.get(fake.url + "/api/ps").json()
    assert [p["name"] for p in ps["models"]] == names
    p = ps["models"][0]
    assert list(p) == ["name", "model", "size", "digest", "details", "expires_at", "size_vram", "context_length"]
    assert p["size_vram"] == p["size"] == m["size"] and p["context_length"] > 0
    assert RFC3339_Z.match(p["expires_at"])


def test_runtime_changes_and_loaded(client):
    with FakeOllama(models=["a", "b/c"], loaded=[], version="0.11.0") as fake:
        assert client.get(fake.url + "/api/ps").json() == {"models": []}
        assert [m["name"] for m in client.get(fake.url + "/api/tags").json()["models"]] == ["a:latest", "b/c"]
        fake.version, fake.models, fake.loaded = "0.13.1", [], ["a"]
        assert client.get(fake.url + "/api/version").json() == {"version": "0.13.1"}
        assert client.get(fake.url + "/api/tags").json() == {"models": []}
        assert [m["name"] for m in client.get(fake.url + "/api/ps").json()["models"]] == ["a:latest"]
        r = client.post(fake.url + "/api/chat", json=body(model="a"))
        assert r.status_code == 404 and r.json() == {"error": "model 'a' not found"}


def test_unknown_path_and_wrong_method(fake, client):
    r = client.get(fake.url + "/api/nope")
    assert (r.status_code, r.text) == (404, "404 page not found")
    assert r.headers["content-type"].startswith("text/plain")
    r = client.get(fake.url + "/api/chat")
    assert (r.status_code, r.text) == (405, "405 method not allowed")
    assert [(q.method, q.path, q.status, q.completed) for q in fake.requests] == [
        ("GET", "/api/nope", 404, True),
        ("GET", "/api/chat", 405, True),
    ]


def test_show(fake, client):
    r = client.post(fake.url + "/api/show", json={"model": "llama3.2:latest"})
    assert r.status_code == 200
    assert {"details", "model_info", "template"} <= set(r.json())
    r = client.post(fake.url + "/api/show", json={"model": "missing"})
    assert r.status_code == 404 and r.json() == {"error": "model 'missing' not found"}
    r = client.post(fake.url + "/api/show", content=b"")
    assert r.status_code == 400 and r.json() == {"error": "missing request body"}


# -- chat happy paths ----------------------------------------------------------------------


def test_streamed_chat(fake, client):
    r, raw, lines = stream_chat(client, fake.url)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/x-ndjson"
    assert r.headers["transfer-encoding"] == "chunked"
    assert len(lines) == 5 and all(line for line in raw)
    assert raw[0].startswith('{"model":"llama3.2","created_at":"')  # model echoed as sent, compact JSON
    for line in lines[:-1]:
        assert list(line) == ["model", "created_at", "message", "done"]
        assert line["done"] is False and line["message"]["role"] == "assistant"
        assert RFC3339_Z.match(line["created_at"])
    assert "".join(line["message"]["content"] for line in lines) == "Hello, world!"
    last = lines[-1]
    assert list(last) == ["model", "created_at", "message", "done", "done_reason", *METRICS]
    assert last["done"] is True and last["done_reason"] == "stop" and last["message"] == {"role": "assistant", "content": ""}
    assert last["eval_count"] == 4
    assert all(isinstance(last[k], int) and last[k] > 0 for k in METRICS)
    assert last["total_duration"] >= last["eval_duration"]

    (rec,) = fake.chat_requests
    assert isinstance(rec, RequestRecord)
    assert (rec.method, rec.status, rec.tokens_sent, rec.completed, rec.disconnected) == ("POST", 200, 4, True, False)
    assert rec.body == body() and rec.model == "llama3.2"
    assert rec.headers["content-type"] == "application/json"
    assert rec.script == Script()
    with pytest.raises(dataclasses.FrozenInstanceError):
        rec.status = 500  # type: ignore[misc]


def test_go_style_json_escaping(fake, client):
    fake.push(Script(tokens=("<b>", " & ", "é")))
    _, raw, lines = stream_chat(client, fake.url)
    assert '"content":"\\u003cb\\u003e"' in raw[0]
    assert '"content":" \\u0026 "' in raw[1]
    assert '"content":"é"' in raw[2]
    assert "".join(line["message"]["content"] for line in lines) == "<b> & é"


def test_thinking_tool_calls_and_final_content(fake, client):
    call = {"name": "get_weather", "arguments": {"city": "Tokyo"}}
    fake.push(
        Script(tokens=("Let me check.",), thinking=("Hmm", ", weather"), tool_calls=(call,), final_content="!"),
        Script(tokens=(), tool_calls=[call, {"function": {"name": "f2", "arguments": "{}"}}], tool_calls_on_done=True),
    )
    _, _, lines = stream_chat(client, fake.url)
    assert [line["message"].get("thinking") for line in lines[:2]] == ["Hmm", ", weather"]
    assert [line["message"]["content"] for line in lines[:2]] == ["", ""]
    assert lines[2]["message"] == {"role": "assistant", "content": "Let me check."}
    (tc,) = lines[3]["message"]["tool_calls"]
    assert lines[3]["done"] is False and lines[3]["message"]["content"] == ""
    assert CALL_ID.match(tc["id"])
    assert tc["function"] == {"index": 0, "name": "get_weather", "arguments": {"city": "Tokyo"}}
    assert lines[4]["done"] is True and lines[4]["message"] == {"role": "assistant", "content": "!"}
    assert lines[4]["eval_count"] == 3  # thinking pieces count as generated tokens
    assert fake.chat_requests[0].tokens_sent == 1

    _, _, lines = stream_chat(client, fake.url)
    assert len(lines) == 1 and lines[0]["done"] is True
    calls = lines[0]["message"]["tool_calls"]
    assert [(c["function"]["index"], c["function"]["name"], c["function"]["arguments"]) for c in calls] == [
        (0, "get_weather", {"city": "Tokyo"}),
        (1, "f2", {}),
    ]
    assert "eval_count" not in lines[0]  # zero metrics are omitted like Go's omitempty


def test_stream_false_aggregates(fake, client):
    fake.push(Script(tokens=("a", "b"), thinking=("x", "y"), tool_calls=({"name": "t", "arguments": {}},), final_content="c"))
    r = client.post(fake.url + "/api/chat", json=body(stream=False))
    assert r.headers["content-type"] == "application/json; charset=utf-8"
    assert "content-length" in r.headers
    obj = r.json()
    assert list(obj) == ["model", "created_at", "message", "done", "done_reason", *METRICS]
    assert obj["message"]["content"] == "abc" and obj["message"]["thinking"] == "xy"
    assert obj["message"]["tool_calls"][0]["function"]["name"] == "t"
    assert obj["done"] is True and obj["eval_count"] == 4


def test_load_and_unload_replies_take_no_script(fake, client):
    fake.push(Script(status=500))
    r = client.post(fake.url + "/api/chat", json={"model": "llama3.2", "messages": []})
    assert r.headers["content-type"] == "application/json; charset=utf-8"
    obj = r.json()
    assert list(obj) == ["model", "created_at", "message", "done", "done_reason"]
    assert (obj["done"], obj["done_reason"], obj["message"]) == (True, "load", {"role": "assistant", "content": ""})
    r = client.post(fake.url + "/api/chat", json={"model": "llama3.2", "keep_alive": 0})
    assert r.json()["done_reason"] == "unload"
    assert fake.pending_scripts == 1
    assert client.post(fake.url + "/api/chat", json=body()).status_code == 500


def test_validation_errors_and_model_matching(client):
    with FakeOllama(models=["llama3.2", "qwen3:latest"]) as fake:
        url = fake.url + "/api/chat"
        r = client.post(url, json={"messages": []})
        assert (r.status_code, r.json()) == (400, {"error": "model is required"})
        r = client.post(url, content=b"")
        assert (r.status_code, r.json()) == (400, {"error": "model is required"})
        r = client.post(url, content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 400 and isinstance(r.json()["error"], str)
        r = client.post(url, json=body(model="mistral:7b"))
        assert r.status_code == 404
        assert r.headers["content-type"].startswith("application/json")
        assert r.text == '{"error":"model \'mistral:7b\' not found"}'
        assert client.post(url, json=body(model="llama3.2:latest", stream=False)).status_code == 200
        obj = client.post(url, json=body(model="qwen3", stream=False)).json()
        assert obj["model"] == "qwen3" and obj["done"] is True
        assert fake.chat_requests[-1].status == 200


def test_script_queue_then_default(fake, client):
    fake.default_script = Script(tokens=("d",))
    fake.push(Script(tokens=("1",)), Script(tokens=("2",)))
    got = ["".join(line["message"]["content"] for line in stream_chat(client, fake.url)[2]) for _ in range(3)]
    assert got == ["1", "2", "d"]
    assert [r.script.tokens for r in fake.chat_requests] == [("1",), ("2",), ("d",)]
    with pytest.raises(TypeError):
        fake.push("not a script")  # type: ignore[arg-type]


def test_generate_endpoint(fake, client):
    fake.push(Script(tokens=("The", " sky")))
    _, _, lines = stream_chat(client, fake.url, {"model": "llama3.2", "prompt": "Why?"}, path="/api/generate")
    assert [line["response"] for line in lines] == ["The", " sky", ""]
    assert list(lines[0]) == ["model", "created_at", "response", "done"]
    assert lines[-1]["done"] is True and isinstance(lines[-1]["context"], list)
    r = client.post(fake.url + "/api/generate", json={"model": "llama3.2"})
    assert r.json()["done_reason"] == "load" and r.json()["response"] == ""
    r = client.post(fake.url + "/api/generate", json={"prompt": "x"})
    assert (r.status_code, r.json()) == (404, {"error": "model '' not found"})


# -- faults ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "status, error, expected",
    [
        (400, None, "invalid request"),
        (404, None, "model 'llama3.2' not found"),
        (429, None, "rate limit exceeded"),
        (500, None, RUNNER_STOPPED_ERROR),
        (503, None, QUEUE_FULL_ERROR),
        (500, "llama runner process has terminated: exit status 2", "llama runner process has terminated: exit status 2"),
    ],
)
def test_status_faults(fake, client, status, error, expected):
    fake.push(Script(status=status, error=error))
    r, _, lines = stream_chat(client, fake.url)
    assert r.status_code == status
    assert r.headers["content-type"].startswith("application/json")
    assert lines == [{"error": expected}]
    assert fake.chat_requests[0].status == status and fake.chat_requests[0].tokens_sent == 0


def test_error_after_mid_stream_and_legacy(fake, client):
    fake.push(Script(error_after=2), Script(error_after=0, error="boom"))
    r, _, lines = stream_chat(client, fake.url)
    assert r.status_code == 200
    assert [line.get("message", {}).get("content") for line in lines[:2]] == ["Hello", ","]
    assert lines[2] == {"error": RUNNER_STOPPED_ERROR} and len(lines) == 3
    rec = fake.chat_requests[0]
    assert (rec.tokens_sent, rec.completed, rec.disconnected) == (2, True, False)

    r, _, lines = stream_chat(client, fake.url)  # pre-0.12.6 style: HTTP 200 + an error line
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
    assert lines == [{"error": "boom"}]

    fake.push(Script(error_after=1))
    r = client.post(fake.url + "/api/chat", json=body(stream=False))
    assert r.status_code == 500 and r.json() == {"error": RUNNER_STOPPED_ERROR}


def test_drop_after_incomplete_chunked_body(fake, client):
    fake.push(Script(drop_after=2))
    got = []
    with pytest.raises(httpx.RemoteProtocolError):
        with client.stream("POST", fake.url + "/api/chat", json=body()) as r:
            for line in r.iter_lines():
                got.append(json.loads(line))
    assert [g["message"]["content"] for g in got] == ["Hello", ","]
    rec = fake.chat_requests[0]
    assert (rec.status, rec.tokens_sent, rec.completed) == (200, 2, False)
    # the client recovers on a fresh connection
    assert stream_chat(client, fake.url)[2][-1]["done"] is True


def test_reset_mid_stream_and_before_any_byte(fake, client):
    fake.push(Script(drop_after=1, reset=True), Script(drop_after=0, reset=True))
    with pytest.raises(httpx.ReadError):
        stream_chat(client, fake.url)
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        stream_chat(client, fake.url)
    assert [(r.status, r.tokens_sent) for r in fake.chat_requests] == [(200, 1), (None, 0)]


def test_drop_before_any_byte_and_stream_false(fake, client):
    fake.push(Script(drop_after=0), Script(drop_after=2))
    with pytest.raises(httpx.RemoteProtocolError):
        stream_chat(client, fake.url)
    with pytest.raises(httpx.RemoteProtocolError):
        client.post(fake.url + "/api/chat", json=body(stream=False))


def test_end_without_done(fake, client):
    fake.push(Script(end_without_done_after=2), Script(end_without_done_after=3))
    r, _, lines = stream_chat(client, fake.url)
    assert r.status_code == 200 and len(lines) == 2 and not any(line["done"] for line in lines)
    assert fake.chat_requests[0].completed
    obj = client.post(fake.url + "/api/chat", json=body(stream=False)).json()
    assert obj["done"] is False and obj["message"]["content"] == "Hello, world" and "done_reason" not in obj


def test_malformed_line(fake, client):
    fake.push(Script(malformed_after=1))
    r, raw, _ = (None, None, None)
    with client.stream("POST", fake.url + "/api/chat", json=body()) as r:
        raw = list(r.iter_lines())
    assert len(raw) == 2 and json.loads(raw[0])["message"]["content"] == "Hello"
    with pytest.raises(json.JSONDecodeError):
        json.loads(raw[1])


def test_fault_beyond_reply_length_fires_at_end(fake, client):
    fake.push(Script(tokens=("a", "b"), error_after=99))
    _, _, lines = stream_chat(client, fake.url)
    assert [line.get("error") for line in lines] == [None, None, RUNNER_STOPPED_ERROR]


def test_delays_and_metrics(fake, client):
    fake.push(Script(tokens=("a", "b", "c", "d"), first_token_delay=0.15, token_delay=0.03))
    t = time.monotonic()
    with client.stream("POST", fake.url + "/api/chat", json=body()) as r:
        headers_after = time.monotonic() - t
        lines = [json.loads(line) for line in r.iter_lines()]
    assert headers_after >= 0.14  # no status line or headers before the first chunk
    last = lines[-1]
    assert last["prompt_eval_duration"] >= 0.14e9
    assert last["eval_duration"] >= 0.09e9
    assert last["total_duration"] >= last["prompt_eval_duration"] + last["eval_duration"]


def test_first_token_delay_sends_nothing_and_sees_disconnect(fake):
    fake.push(Script(first_token_delay=30))
    with httpx.Client(timeout=httpx.Timeout(5, read=0.2)) as c:
        with pytest.raises(httpx.ReadTimeout):
            c.post(fake.url + "/api/chat", json=body())
    t = time.monotonic()
    assert fake.wait_for_disconnect(timeout=1.0)
    assert time.monotonic() - t < 1.0
    rec = fake.chat_requests[0]
    assert (rec.status, rec.disconnected, rec.completed) == (None, True, False)


def test_stall_returns_early_on_client_disconnect(fake):
    fake.push(Script(stall_after=1))  # stall defaults to an hour
    got = []
    with httpx.Client(timeout=httpx.Timeout(5, read=0.3)) as c:
        with pytest.raises(httpx.ReadTimeout):
            with c.stream("POST", fake.url + "/api/chat", json=body()) as r:
                for line in r.iter_lines():
                    got.append(line)
    assert len(got) == 1
    assert fake.wait_for_disconnect(timeout=1.0)
    rec = fake.chat_requests[0]
    assert (rec.status, rec.tokens_sent, rec.disconnected, rec.completed) == (200, 1, True, False)


def test_short_stall_carries_on(fake, client):
    fake.push(Script(stall_after=2, stall=0.2))
    t = time.monotonic()
    _, _, lines = stream_chat(client, fake.url)
    assert time.monotonic() - t >= 0.19 and lines[-1]["done"] is True and len(lines) == 5


def test_blackhole_request(fake):
    fake.push(Script(blackhole=True))
    with httpx.Client(timeout=httpx.Timeout(5, read=0.3)) as c:
        with pytest.raises(httpx.ReadTimeout):
            c.post(fake.url + "/api/chat", json=body())
    assert fake.wait_for_disconnect(timeout=1.0)
    rec = fake.chat_requests[0]
    assert (rec.status, rec.disconnected, rec.completed, rec.body) == (None, True, False, body())


def test_blackhole_all_for_probes():
    with FakeOllama(blackhole_all=True) as fake:
        with httpx.Client(timeout=httpx.Timeout(5, read=0.3)) as c:
            with pytest.raises(httpx.ReadTimeout):
                c.get(fake.url + "/api/tags")
        assert fake.wait_for_disconnect(timeout=1.0, path="/api/tags")
        fake.blackhole_all = False
        with httpx.Client(timeout=2) as c:
            assert c.get(fake.url + "/api/version").status_code == 200


def test_client_breaking_out_is_seen_as_disconnect(fake, client):
    fake.push(Script(tokens=tuple(f"t{i}" for i in range(40)), token_delay=0.05))
    with client.stream("POST", fake.url + "/api/chat", json=body()) as r:
        for n, _ in enumerate(r.iter_lines(), 1):
            if n == 3:
                break
    assert fake.wait_for_disconnect(timeout=2.0)
    rec = fake.chat_requests[0]
    assert rec.disconnected and not rec.completed and 3 <= rec.tokens_sent <= 6


# -- prefill -----------------------------------------------------------------------------------


def prefill_body(content, thinking=None):
    msg = {"role": "assistant", "content": content}
    if thinking is not None:
        msg["thinking"] = thinking
    return body(messages=[{"role": "user", "content": "Why?"}, msg])


@pytest.mark.parametrize(
    "prefix, expected",
    [
        ("The sky", [" is", " blue", "."]),
        ("The sk", ["y", " is", " blue", "."]),  # ends mid-token: the rest of that token first
        ("Nope", ["The", " sky", " is", " blue", "."]),  # no match: the tokens as usual
        ("The sky is blue.", []),
    ],
)
def test_prefill_continuation(fake, client, prefix, expected):
    fake.default_script = Script(tokens=("The", " sky", " is", " blue", "."), thinking=("hmm",))
    _, _, lines = stream_chat(client, fake.url, prefill_body(prefix))
    contents = [line["message"]["content"] for line in lines if not line["done"] and not line["message"].get("thinking")]
    assert contents == expected
    assert any(line["message"].get("thinking") for line in lines) == (prefix == "Nope")
    assert lines[-1]["done"] is True


def test_prefill_counts_faults_in_this_reply(fake, client):
    fake.push(Script(tokens=("The", " sky", " is", " blue", "."), drop_after=1))
    got = []
    with pytest.raises(httpx.RemoteProtocolError):
        with client.stream("POST", fake.url + "/api/chat", json=prefill_body("The sky")) as r:
            got = [json.loads(line)["message"]["content"] for line in r.iter_lines()]
    assert fake.chat_requests[0].tokens_sent == 1


def test_prefill_thinking_and_disabled(fake, client):
    fake.push(Script(tokens=("ok",), thinking=("a", "b", "c")), Script(tokens=("x", "y"), continue_prefill=False))
    _, _, lines = stream_chat(client, fake.url, prefill_body("", thinking="ab"))
    assert [line["message"].get("thinking") for line in lines[:-1]] == ["c", None]
    _, _, lines = stream_chat(client, fake.url, prefill_body("x"))
    assert [line["message"]["content"] for line in lines[:-1]] == ["x", "y"]


# -- lifecycle and dead addresses ----------------------------------------------------------------


def test_kill_resets_open_streams_and_refuses_connects(client):
    fake = FakeOllama().start()
    try:
        url = fake.url
        fake.push(Script(tokens=tuple("abcdefghij"), token_delay=0.05))
        with pytest.raises(httpx.ReadError):  # RST, not FIN
            with client.stream("POST", url + "/api/chat", json=body()) as r:
                for n, _ in enumerate(r.iter_lines()):
                    if n == 1:
                        fake.kill()
        with pytest.raises(httpx.ConnectError):
            client.get(url + "/api/version")
        assert not fake.running
        fake.start()  # comes back on the same port
        assert fake.url == url and client.get(url + "/api/version").status_code == 200
    finally:
        fake.stop()


def test_stop_is_prompt_with_stalled_request():
    fake = FakeOllama(script=Script(stall_after=1)).start()
    errors = []

    def consume():
        try:
            with httpx.Client(timeout=10) as c, c.stream("POST", fake.url + "/api/chat", json=body()) as r:
                for _ in r.iter_lines():
                    pass
        except httpx.HTTPError as exc:
            errors.append(exc)

    t = threading.Thread(target=consume)
    t.start()
    assert fake.wait_for_requests(1, path="/api/chat")
    deadline = time.monotonic() + 2
    while fake.chat_requests[0].tokens_sent < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    start = time.monotonic()
    fake.stop()
    assert time.monotonic() - start < 1.0
    t.join(2)
    assert not t.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], httpx.RemoteProtocolError)
    fake.stop()  # idempotent


def test_closed_port_url_refuses():
    url = closed_port_url()
    assert re.match(r"^http://127\.0\.0\.1:\d+$", url)
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/api/version", timeout=2)


def test_blackhole_listener_connect_times_out():
    with blackhole_listener() as url:
        start = time.monotonic()
        with pytest.raises(httpx.ConnectTimeout):
            httpx.get(url + "/api/version", timeout=httpx.Timeout(5, connect=0.5))
        assert 0.4 < time.monotonic() - start < 2.0


def test_script_validation():
    assert Script(tokens="one").tokens == ("one",)
    assert Script(tokens=["a", "b"]).text == "ab"
    with pytest.raises(ValueError):
        Script(token_delay=-1)
    with pytest.raises(ValueError):
        Script(drop_after=-1)
