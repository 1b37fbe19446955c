"""FakeOllama beyond chat: embeddings, pull/delete/copy, generate's extra fields, load/unload.

Each route is driven with plain httpx (exact bytes, status, Content-Type) and,
where it proves shape compatibility, with the official ``ollama`` client.
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import threading
import time

import httpx
import ollama
import pytest

from aicortex.testing import RUNNER_STOPPED_ERROR, FakeOllama, Script

pytestmark = pytest.mark.timeout(20)

JSON = "application/json; charset=utf-8"
EMBED_KEYS = ["model", "embeddings", "total_duration", "load_duration", "prompt_eval_count"]


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
    with FakeOllama(models=["llama3.2", "all-minilm"]) as f:
        yield f
        assert f.server_errors == []


@pytest.fixture
def client():
    with httpx.Client(timeout=5) as c:
        yield c


@pytest.fixture
def official(fake):
    """The official ``ollama`` client pointed at ``fake`` (closed afterwards)."""
    with ollama.Client(host=fake.url) as c:
        yield c


def norm(v):
    return math.sqrt(sum(x * x for x in v))


# -- /api/embed --


def test_embed_shape_bytes_and_determinism(fake, client):
    r = client.post(fake.url + "/api/embed", json={"model": "all-minilm", "input": "why is the sky blue?"})
    assert (r.status_code, r.headers["content-type"]) == (200, JSON)
    obj = r.json()
    assert list(obj) == EMBED_KEYS
    assert obj["model"] == "all-minilm"  # echoed as sent
    assert len(obj["embeddings"]) == 1 and len(obj["embeddings"][0]) == 8
    assert abs(norm(obj["embeddings"][0]) - 1) < 1e-6  # L2-normalized like Ollama
    assert all(isinstance(obj[k], int) and obj[k] > 0 for k in EMBED_KEYS[2:])
    # floats printed like Go float32 (shortest text), compact JSON
    assert r.content.startswith(b'{"model":"all-minilm","embeddings":[[')
    for text in r.content.split(b"[[")[1].split(b"]]")[0].split(b","):
        assert len(text.lstrip(b"-")) <= 11 and b"e" not in text, text
    # the same text gives the same vector, on another server too
    with FakeOllama(models=["all-minilm"]) as other:
        again = client.post(other.url + "/api/embed", json={"model": "all-minilm", "input": ["why is the sky blue?"]})
    assert again.json()["embeddings"] == obj["embeddings"]


def test_embed_list_input_dimensions_and_embed_dim(client):
    with FakeOllama(models=["nomic-embed-text"], embed_dim=32) as fake:
        r = client.post(fake.url + "/api/embed", json={
            "model": "nomic-embed-text", "input": ["a", "b", "a"], "truncate": True,
            "options": {"num_ctx": 512}, "keep_alive": "5m",
        })
        vecs = r.json()["embeddings"]
        assert [len(v) for v in vecs] == [32, 32, 32] and vecs[0] == vecs[2] != vecs[1]
        assert r.json()["prompt_eval_count"] == 3
        cut = client.post(fake.url + "/api/embed", json={"model": "nomic-embed-text", "input": "a", "dimensions": 5})
        v5 = cut.json()["embeddings"][0]
        assert len(v5) == 5 and abs(norm(v5) - 1) < 1e-6
        # cut then re-normalized: same direction as the first 5 components
        scale = norm(vecs[0][:5])
        assert all(abs(a - b / scale) < 1e-6 for a, b in zip(v5, vecs[0][:5]))
        # dimensions larger than the vector, or 0, change nothing
        big = client.post(fake.url + "/api/embed", json={"model": "nomic-embed-text", "input": "a", "dimensions": 99})
        assert big.json()["embeddings"][0] == vecs[0]
        rec = fake.embed_requests[0]
        assert (rec.method, rec.path, rec.body["truncate"], rec.body["keep_alive"]) == ("POST", "/api/embed", True, "5m")
        assert rec.headers["content-type"] == "application/json" and rec.completed and rec.status == 200


def test_embed_errors_have_ollamas_texts(fake, client):
    url = fake.url + "/api/embed"
    cases = [
        ({"model": "nope", "input": "x"}, 404, 'model "nope" not found, try pulling it first'),
        ({"model": "", "input": "x"}, 404, "model '' not found"),
        ({"model": "all-minilm", "input": [1, 2]}, 400, "invalid input type"),
        ({"model": "all-minilm", "input": 5}, 400, "invalid input type"),
        ({"model": "all-minilm", "input": "x" * 20000, "truncate": False}, 400,
         "the input length exceeds the context length"),
    ]
    for payload, status, error in cases:
        r = client.post(url, json=payload)
        assert (r.status_code, r.headers["content-type"], r.json()) == (status, JSON, {"error": error}), payload
    r = client.post(url, content=b"")
    assert (r.status_code, r.json()) == (400, {"error": "missing request body"})
    # truncate (the default) cuts a long input to the context instead
    r = client.post(url, json={"model": "all-minilm", "input": "x" * 20000})
    assert r.status_code == 200 and r.json()["prompt_eval_count"] == 4096
    r = client.get(url)
    assert (r.status_code, r.text) == (405, "405 method not allowed")


def test_embed_empty_input_loads_and_unloads(client):
    with FakeOllama(models=["all-minilm", "llama3.2"], loaded=[]) as fake:
        r = client.post(fake.url + "/api/embed", json={"model": "all-minilm"})
        assert (r.status_code, r.content) == (200, b'{"model":"all-minilm","embeddings":[]}')
        assert fake.loaded == ["all-minilm"]
        r = client.post(fake.url + "/api/embed", json={"model": "all-minilm", "input": [], "keep_alive": 0})
        assert r.json() == {"model": "all-minilm", "embeddings": []} and fake.loaded == []
        assert fake.pending_scripts == 0 and fake.embed_requests[0].script is None


def test_embed_scripted_faults(fake, client):
    url, payload = fake.url + "/api/embed", {"model": "all-minilm", "input": "x"}
    fake.push(Script(status=503), Script(drop_after=0), Script(error_after=0), Script(malformed_after=0),
              Script(status=429, error="slow down"))
    r = client.post(url, json=payload)
    assert (r.status_code, r.headers["content-type"]) == (503, JSON)
    assert r.json() == {"error": "server busy, please try again.  maximum pending requests exceeded"}
    with pytest.raises(httpx.RemoteProtocolError):
        client.post(url, json=payload)
    r = client.post(url, json=payload)
    assert (r.status_code, r.json()) == (500, {"error": RUNNER_STOPPED_ERROR})
    with pytest.raises(json.JSONDecodeError):
        client.post(url, json=payload).json()
    assert client.post(url, json=payload).json() == {"error": "slow down"}
    assert client.post(url, json=payload).status_code == 200  # queue empty: default script
    recs = fake.embed_requests
    assert [r.status for r in recs] == [503, None, 500, 200, 429, 200]
    assert recs[1].script == Script(drop_after=0) and not recs[1].completed


def test_embed_delay_queues_per_server_and_scales_across_servers(client):
    delay, n = 0.1, 8
    with FakeOllama(models=["e"], embed_delay=delay) as a, FakeOllama(models=["e"], embed_delay=delay) as b:
        def run(urls):
            post = lambda i: client.post(urls[i % len(urls)] + "/api/embed", json={"model": "e", "input": f"t{i}"})
            t0 = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(n) as pool:
                rs = list(pool.map(post, range(n)))
            assert all(r.status_code == 200 for r in rs)
            return time.perf_counter() - t0

        one = run([a.url])  # 8 inputs one at a time on one server: >= 0.8 s
        two = run([a.url, b.url])  # 4 each on two servers in parallel: ~0.4 s
        assert one >= n * delay * 0.95
        assert n * delay / 2 * 0.95 <= two < one - 2 * delay  # generous slack for a loaded machine
        # several inputs in one request cost delay each
        t0 = time.perf_counter()
        client.post(a.url + "/api/embed", json={"model": "e", "input": ["1", "2", "3", "4"]})
        assert time.perf_counter() - t0 >= 4 * delay * 0.95


def test_legacy_embeddings(fake, client):
    r = client.post(fake.url + "/api/embeddings", json={"model": "all-minilm", "prompt": "why is the sky blue?"})
    assert (r.status_code, r.headers["content-type"]) == (200, JSON)
    raw = r.json()["embedding"]
    assert list(r.json()) == ["embedding"] and len(raw) == 8
    assert norm(raw) > 1.01  # not normalized, as Ollama's legacy route ...
    new = client.post(fake.url + "/api/embed", json={"model": "all-minilm", "input": "why is the sky blue?"})
    assert all(abs(x / norm(raw) - y) < 1e-6 for x, y in zip(raw, new.json()["embeddings"][0]))  # ... same direction
    assert client.post(fake.url + "/api/embeddings", json={"model": "all-minilm"}).content == b'{"embedding":[]}'
    r = client.post(fake.url + "/api/embeddings", json={"model": "x", "prompt": "p"})
    assert (r.status_code, r.json()) == (404, {"error": 'model "x" not found, try pulling it first'})
    r = client.post(fake.url + "/api/embeddings", json={"prompt": "p"})
    assert (r.status_code, r.json()) == (400, {"error": "model is required"})
    fake.push(Script(status=500))
    assert client.post(fake.url + "/api/embeddings", json={"model": "all-minilm", "prompt": "p"}).status_code == 500


def test_official_client_parses_embed_and_embeddings(fake, official):
    c = official
    resp = c.embed(model="all-minilm", input=["a", "b"], dimensions=4, truncate=True, keep_alive="1m")
    assert resp.model == "all-minilm" and [len(v) for v in resp.embeddings] == [4, 4]
    assert resp.prompt_eval_count == 2 and resp.total_duration > 0
    assert fake.embed_requests[-1].body == {"model": "all-minilm", "input": ["a", "b"], "truncate": True,
                                            "keep_alive": "1m", "dimensions": 4}
    assert len(c.embeddings(model="all-minilm", prompt="a").embedding) == 8
    fake.push(Script(status=503))
    with pytest.raises(ollama.ResponseError) as info:
        c.embed(model="all-minilm", input="a")
    assert info.value.status_code == 503
    with pytest.raises(ollama.ResponseError) as info:
        c.embed(model="nope", input="a")
    assert (info.value.status_code, info.value.error) == (404, 'model "nope" not found, try pulling it first')


# -- /api/pull --


def test_pull_streams_progress_and_adds_the_model(fake, client):
    with client.stream("POST", fake.url + "/api/pull", json={"model": "qwen3:8b"}) as r:
        lines = [json.loads(line) for line in r.iter_lines()]
    assert (r.status_code, r.headers["content-type"], r.headers["transfer-encoding"]) == (
        200, "application/x-ndjson", "chunked")
    statuses = [x["status"] for x in lines]
    assert statuses[0] == "pulling manifest" and statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    layers = [x for x in lines if "digest" in x]
    assert len({x["digest"] for x in layers}) == 4
    for x in layers:
        assert list(x)[:3] == ["status", "digest", "total"] and x["digest"].startswith("sha256:")
        assert x["status"] == "pulling " + x["digest"][7:19] and 0 < x.get("completed", 0) + 1 <= x["total"] + 1
    big = [x for x in layers if x["digest"] == layers[0]["digest"]]
    assert len(big) > 2 and "completed" not in big[0] and big[-1]["completed"] == big[-1]["total"]  # omitempty at 0
    assert [m["name"] for m in client.get(fake.url + "/api/tags").json()["models"]][-1] == "qwen3:8b"
    assert "qwen3:8b" not in [m["name"] for m in client.get(fake.url + "/api/ps").json()["models"]]  # not loaded
    # now chat works with it
    assert client.post(fake.url + "/api/chat", json={"model": "qwen3:8b", "messages": [], "stream": False}).status_code == 200
    # pulling it again: every layer is already there, reported once, complete
    with client.stream("POST", fake.url + "/api/pull", json={"model": "qwen3:8b"}) as r:
        again = [json.loads(line) for line in r.iter_lines()]
    assert all(x["completed"] == x["total"] for x in again if "digest" in x) and len(again) == 8


def test_pull_stream_false_and_errors(fake, client):
    r = client.post(fake.url + "/api/pull", json={"model": "phi3", "stream": False})
    assert (r.status_code, r.headers["content-type"], r.content) == (200, "application/json", b'{"status":"success"}')
    assert "phi3" in fake.models
    fake.pull_errors = {"nope": "pull model manifest: file does not exist"}
    with client.stream("POST", fake.url + "/api/pull", json={"model": "nope:latest"}) as r:
        raw = list(r.iter_lines())
    assert r.status_code == 200
    assert raw == ['{"status":"pulling manifest"}', '{"error":"pull model manifest: file does not exist"}']
    r = client.post(fake.url + "/api/pull", json={"model": "nope", "stream": False})
    assert (r.status_code, r.headers["content-type"]) == (500, "application/json")
    assert r.json() == {"error": "pull model manifest: file does not exist"}
    assert "nope" not in fake.models
    r = client.post(fake.url + "/api/pull", json={})
    assert (r.status_code, r.json()) == (400, {"error": "invalid model name"})
    r = client.post(fake.url + "/api/pull", json={"name": "legacy-field", "stream": False})  # deprecated "name"
    assert r.status_code == 200 and "legacy-field" in fake.models


def test_pull_delay_paces_the_progress(client):
    with FakeOllama(pull_delay=0.02) as fake:
        t0 = time.perf_counter()
        with client.stream("POST", fake.url + "/api/pull", json={"model": "m"}) as r:
            n = sum(1 for _ in r.iter_lines())
        assert time.perf_counter() - t0 >= (n - 1) * 0.02 * 0.9


def test_official_client_pull(fake, official):
    c = official
    progress = list(c.pull("gemma3", stream=True))
    assert progress[0].status == "pulling manifest" and progress[-1].status == "success"
    assert any(p.digest and p.total and p.completed for p in progress)
    assert c.pull("gemma3:1b").status == "success"
    fake.pull_errors["bad"] = "pull model manifest: file does not exist"
    with pytest.raises(ollama.ResponseError) as info:
        list(c.pull("bad", stream=True))
    assert info.value.error == "pull model manifest: file does not exist"
    with pytest.raises(ollama.ResponseError) as info:
        c.pull("bad")
    assert info.value.status_code == 500
    assert {m.model for m in c.list().models} >= {"gemma3:latest", "gemma3:1b"}


# -- /api/delete, /api/copy --


def test_delete(client):
    with FakeOllama(models=["llama3.2", "qwen3:8b"], loaded=["llama3.2", "qwen3:8b"]) as fake:
        r = client.request("DELETE", fake.url + "/api/delete", json={"model": "llama3.2:latest"})
        assert (r.status_code, r.content, r.headers.get("content-type"), r.headers["content-length"]) == (200, b"", None, "0")
        assert fake.models == ["qwen3:8b"] and fake.loaded == ["qwen3:8b"]
        r = client.request("DELETE", fake.url + "/api/delete", json={"model": "llama3.2"})
        assert (r.status_code, r.headers["content-type"], r.json()) == (404, JSON, {"error": "model 'llama3.2' not found"})
        r = client.request("DELETE", fake.url + "/api/delete", json={})
        assert (r.status_code, r.json()) == (400, {"error": "model is required"})
        r = client.post(fake.url + "/api/delete", json={"model": "qwen3:8b"})
        assert (r.status_code, r.text) == (405, "405 method not allowed")
        assert client.request("DELETE", fake.url + "/api/delete", json={"name": "qwen3:8b"}).status_code == 200
        assert fake.models == [] and client.get(fake.url + "/api/tags").json() == {"models": []}
        rec = fake.requests[0]
        assert (rec.method, rec.path, rec.body) == ("DELETE", "/api/delete", {"model": "llama3.2:latest"})


def test_copy(fake, client):
    r = client.post(fake.url + "/api/copy", json={"source": "llama3.2", "destination": "my-llama"})
    assert (r.status_code, r.content, r.headers.get("content-type")) == (200, b"", None)
    assert fake.models == ["llama3.2", "all-minilm", "my-llama"]
    assert "my-llama:latest" not in [m["name"] for m in client.get(fake.url + "/api/ps").json()["models"]]
    r = client.post(fake.url + "/api/copy", json={"source": "ghost", "destination": "x"})
    assert (r.status_code, r.headers["content-type"], r.json()) == (404, JSON, {"error": 'model "ghost" not found'})
    r = client.post(fake.url + "/api/copy", json={"source": "", "destination": "x"})
    assert (r.status_code, r.json()) == (400, {"error": 'source "" is invalid'})
    r = client.post(fake.url + "/api/copy", json={"source": "llama3.2"})
    assert (r.status_code, r.json()) == (400, {"error": 'destination "" is invalid'})
    assert "x" not in fake.models


def test_official_client_delete_copy(fake, official):
    c = official
    assert c.copy("llama3.2", "backup").status == "success"
    assert c.delete("llama3.2").status == "success"
    assert [m.model for m in c.list().models] == ["all-minilm:latest", "backup:latest"]
    with pytest.raises(ollama.ResponseError) as info:
        c.delete("llama3.2")
    assert (info.value.status_code, info.value.error) == (404, "model 'llama3.2' not found")
    with pytest.raises(ollama.ResponseError) as info:
        c.copy("ghost", "y")
    assert info.value.status_code == 404


# -- /api/generate fields, raw prefill, context --


def test_generate_accepts_and_records_every_field(fake, client):
    payload = {
        "model": "llama3.2", "prompt": "def add(a, b):", "suffix": "\n    return c", "system": "be brief",
        "template": "{{ .Prompt }}", "context": [1, 2, 3], "images": ["aGVsbG8="], "think": "low",
        "options": {"temperature": 0}, "keep_alive": "1m", "stream": False,
    }
    r = client.post(fake.url + "/api/generate", json=payload)
    obj = r.json()
    assert (r.status_code, obj["response"], obj["done"]) == (200, "Hello, world!", True)
    assert isinstance(obj["context"], list) and all(isinstance(t, int) for t in obj["context"])
    assert 0 < len(obj["context"]) < 64
    assert list(obj)[:6] == ["model", "created_at", "response", "done", "done_reason", "context"]
    assert fake.generate_requests[0].body == payload


def test_generate_raw_continues_a_prefill(fake, client):
    fake.push(Script(tokens=("Hello", ",", " world", "!")), Script(tokens=("Hello", ",", " world", "!")))
    prompt = "<|user|>hi<|assistant|>Hello, wo"
    with client.stream("POST", fake.url + "/api/generate", json={"model": "llama3.2", "prompt": prompt, "raw": True}) as r:
        chunks = [json.loads(line) for line in r.iter_lines()]
    assert [c["response"] for c in chunks] == ["rld", "!", ""]
    assert "context" not in chunks[-1] and chunks[-1]["done"] is True  # raw: no context
    assert fake.generate_requests[0].tokens_sent == 2
    # not raw: no continuation, and the final chunk carries context
    r = client.post(fake.url + "/api/generate", json={"model": "llama3.2", "prompt": prompt, "stream": False})
    assert r.json()["response"] == "Hello, world!" and r.json()["context"]


def test_generate_raw_prefill_edge_cases(fake, client):
    def gen(prompt, script, **extra):
        fake.push(script)
        body = {"model": "llama3.2", "prompt": prompt, "raw": True, "stream": False, **extra}
        return client.post(fake.url + "/api/generate", json=body).json()

    assert gen("x Hello, world!", Script())["response"] == ""  # the whole reply was prefilled
    assert gen("no overlap", Script())["response"] == "Hello, world!"
    assert gen("Hel", Script(continue_prefill=False))["response"] == "Hello, world!"
    out = gen("Hello", Script(thinking=("hmm",)))
    assert (out["response"], "thinking" in out) == (", world!", False)  # continuation skips thinking
    r = client.post(fake.url + "/api/generate", json={"model": "llama3.2", "prompt": "p", "raw": True, "system": "s"})
    assert (r.status_code, r.json()) == (400, {"error": "raw mode does not support template, system, or context"})


# -- /api/ps and load/unload --


def test_ps_entries_and_warm_unload_change_loaded(client):
    with FakeOllama(models=["llama3.2", "qwen3:8b"]) as fake:
        ps = client.get(fake.url + "/api/ps").json()["models"]
        assert [m["name"] for m in ps] == ["llama3.2:latest", "qwen3:8b"]
        for m in ps:
            assert {"expires_at", "size_vram", "context_length"} <= set(m) and m["context_length"] > 0
        r = client.post(fake.url + "/api/generate", json={"model": "llama3.2", "keep_alive": 0})
        assert r.json()["done_reason"] == "unload" and fake.loaded == ["qwen3:8b"]
        r = client.post(fake.url + "/api/chat", json={"model": "qwen3:8b", "messages": [], "keep_alive": "0s"})
        assert r.json()["done_reason"] == "unload" and fake.loaded == []
        assert client.get(fake.url + "/api/ps").json() == {"models": []}
        r = client.post(fake.url + "/api/chat", json={"model": "qwen3:8b", "messages": []})
        assert r.json()["done_reason"] == "load" and fake.loaded == ["qwen3:8b"]
        client.post(fake.url + "/api/generate", json={"model": "llama3.2"})
        client.post(fake.url + "/api/generate", json={"model": "llama3.2:latest", "prompt": ""})  # already loaded
        assert fake.loaded == ["qwen3:8b", "llama3.2"]
        assert [m["name"] for m in client.get(fake.url + "/api/ps").json()["models"]] == ["qwen3:8b", "llama3.2:latest"]
        # a generating request leaves loaded alone; so does an unknown model's load
        fake.loaded = []
        client.post(fake.url + "/api/generate", json={"model": "llama3.2", "prompt": "hi", "stream": False})
        assert client.post(fake.url + "/api/generate", json={"model": "nope"}).status_code == 404
        assert fake.loaded == []


def test_official_client_load_unload(fake, official):
    c = official
    assert c.generate(model="llama3.2", keep_alive=0).done_reason == "unload"
    assert [m.model for m in c.ps().models] == ["all-minilm:latest"]
    assert c.generate(model="llama3.2").done_reason == "load"
    ps = c.ps().models
    assert [m.model for m in ps] == ["all-minilm:latest", "llama3.2:latest"]
    assert ps[0].expires_at is not None and ps[0].size_vram and ps[0].context_length == 4096


def test_every_new_route_is_recorded(fake, client):
    client.post(fake.url + "/api/embed", json={"model": "all-minilm", "input": "a"}, headers={"X-Trace": "1"})
    client.post(fake.url + "/api/embeddings", json={"model": "all-minilm", "prompt": "a"})
    client.post(fake.url + "/api/pull", json={"model": "m", "stream": False})
    client.post(fake.url + "/api/copy", json={"source": "m", "destination": "n"})
    client.request("DELETE", fake.url + "/api/delete", json={"model": "n"})
    recs = fake.requests
    assert [(r.method, r.path, r.status, r.completed) for r in recs] == [
        ("POST", "/api/embed", 200, True), ("POST", "/api/embeddings", 200, True), ("POST", "/api/pull", 200, True),
        ("POST", "/api/copy", 200, True), ("DELETE", "/api/delete", 200, True),
    ]
    assert recs[0].headers["x-trace"] == "1" and recs[4].body == {"model": "n"}
    assert [r.path for r in fake.embed_requests] == ["/api/embed", "/api/embeddings"]
