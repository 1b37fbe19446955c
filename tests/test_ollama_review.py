"""aicortex.ollama against code written for the official client: errors, hostile replies,
host and timeout forms, found by running both clients side by side on loopback servers."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import threading
from collections.abc import Iterator

import ollama as official
import pytest

from aicortex import AICortexError
from aicortex import ollama as ao
from aicortex.testing import FakeOllama, Script


@contextlib.contextmanager
def raw_server(replies: dict[str, tuple[int, str, bytes]]) -> Iterator[str]:
    """A loopback HTTP server answering each path with a fixed (status, content type,
    body): replies no FakeOllama script gives (hostile progress lines)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _answer(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            status, ctype, body = replies.get(self.path, (404, "application/json", b'{"error":"not found"}'))
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_DELETE = _answer

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _both_raise(call, url: str) -> tuple[BaseException, BaseException]:
    """The exceptions the official client and the drop-in raise for the same call."""
    raised = []
    for module in (official, ao):
        with module.Client(url) as client:
            with pytest.raises(Exception) as info:
                call(client)
        raised.append(info.value)
    return raised[0], raised[1]


# -- one host: pull / push / create without stream= ------------------------------------------
@pytest.mark.parametrize("call", [
    lambda c: c.pull("nope"),
    lambda c: c.push("missing"),
    lambda c: c.create("mario", from_="missing"),
], ids=["pull", "push", "create"])
def test_one_host_unstreamed_operation_errors_are_response_errors(call):
    with FakeOllama(models=["llama3.2"]) as fake:
        fake.pull_errors = {"nope": "pull model manifest: file does not exist"}
        theirs, ours = _both_raise(call, fake.url)
    assert isinstance(theirs, official.ResponseError)
    assert isinstance(ours, official.ResponseError) and isinstance(ours, AICortexError)
    assert (ours.error, ours.status_code) == (theirs.error, theirs.status_code)


def test_async_one_host_unstreamed_pull_error_is_a_response_error():
    async def main(url):
        async with ao.AsyncClient(url) as client:
            await client.pull("nope")

    with FakeOllama(models=["llama3.2"]) as fake:
        fake.pull_errors = {"nope": "pull model manifest: file does not exist"}
        with pytest.raises(official.ResponseError) as info:
            asyncio.run(main(fake.url))
    assert info.value.error == "pull model manifest: file does not exist" and info.value.status_code == 500


# -- one host: an {"error": ...} line inside a stream -----------------------------------------
@pytest.mark.parametrize("after", [0, 2])
def test_one_host_in_stream_error_is_the_servers_text_as_the_official_client(after):
    def call(client):
        for _ in client.chat(model="llama3.2", messages=[{"role": "user", "content": "Hi"}], stream=True):
            pass

    with FakeOllama(models=["llama3.2"]) as fake:
        fake.default_script = Script(tokens=("a", "b", "c"), error_after=after, error="runner crashed")
        theirs, ours = _both_raise(call, fake.url)
    assert isinstance(ours, ao.ResponseError) and isinstance(ours, official.ResponseError)
    assert (ours.error, ours.status_code) == (theirs.error, theirs.status_code) == ("runner crashed", -1)


def test_async_one_host_in_stream_error_is_the_servers_text():
    async def main(url):
        async with ao.AsyncClient(url) as client:
            async for _ in await client.generate(model="llama3.2", prompt="Hi", stream=True):
                pass

    with FakeOllama(models=["llama3.2"]) as fake:
        fake.default_script = Script(tokens=("a", "b"), error_after=1, error="runner crashed")
        with pytest.raises(ao.ResponseError) as info:
            asyncio.run(main(fake.url))
    assert (info.value.error, info.value.status_code) == ("runner crashed", -1)


# -- one host: hostile progress lines ----------------------------------------------------------
BAD_PROGRESS = {"/api/pull": (200, "application/x-ndjson", b'{"status":"pulling","total":"lots"}\n')}


def test_one_host_progress_line_of_wrong_shape_is_a_response_error():
    with raw_server(BAD_PROGRESS) as url, ao.Client(url) as client:
        with pytest.raises(ao.ResponseError, match="ProgressResponse") as info:
            list(client.pull("llama3.2", stream=True))
    assert isinstance(info.value, AICortexError) and info.value.status_code == -1


def test_async_one_host_progress_line_of_wrong_shape_is_a_response_error():
    async def main(url):
        async with ao.AsyncClient(url) as client:
            return [p async for p in await client.pull("llama3.2", stream=True)]

    with raw_server(BAD_PROGRESS) as url:
        with pytest.raises(ao.ResponseError, match="ProgressResponse"):
            asyncio.run(main(url))


# -- a fleet: a server whose /api/tags details the official type refuses --------------------------
def _fleet_replies(details: bytes) -> dict[str, tuple[int, str, bytes]]:
    tags = b'{"models":[{"name":"m:latest","model":"m:latest","size":7,"digest":"abc","details":' + details + b"}]}"
    return {
        "/api/version": (200, "application/json", b'{"version":"0.12.6"}'),
        "/api/tags": (200, "application/json", tags),
        "/api/ps": (200, "application/json", b'{"models":[]}'),
    }


def test_fleet_list_survives_details_the_official_type_refuses():
    replies = _fleet_replies(b'{"family":5,"parameter_size":"7B","families":"llama"}')
    with raw_server(replies) as one, raw_server(replies) as two, ao.Client([one, two]) as client:
        listed = client.list()
    assert isinstance(listed, official.ListResponse)
    [model] = listed.models
    assert (model.model, model.size, model.digest) == ("m:latest", 7, "abc")
    assert model.details is not None and model.details.parameter_size == "7B" and model.details.family is None


def test_async_fleet_list_survives_details_the_official_type_refuses():
    async def main(urls):
        async with ao.AsyncClient(urls) as client:
            return await client.list()

    replies = _fleet_replies(b'{"family":["x"],"quantization_level":"Q4_K_M"}')
    with raw_server(replies) as one, raw_server(replies) as two:
        listed = asyncio.run(main([one, two]))
    assert listed.models[0].details.quantization_level == "Q4_K_M"


# -- host forms --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_empty_host_string_is_ollama_host_as_the_official_client(monkeypatch, kind):
    # ollama-python: Client(host="") parses `host or os.getenv("OLLAMA_HOST")`
    with FakeOllama(models=["llama3.2"]) as fake:
        monkeypatch.setenv("OLLAMA_HOST", fake.url.removeprefix("http://"))
        with official.Client(host="") as theirs:
            assert len(theirs.list().models) == 1
        if kind == "sync":
            with ao.Client(host="") as client:
                listed = client.list()
        else:
            async def main():
                async with ao.AsyncClient(host="") as client:
                    return await client.list()

            listed = asyncio.run(main())
        assert [m.model for m in listed.models] == ["llama3.2:latest"]
        assert [r.path for r in fake.requests] == ["/api/tags", "/api/tags"]


# -- timeouts as httpx takes them --------------------------------------------------------------
def test_timeout_as_httpx_four_tuple_is_taken():
    # httpx (and so the official client) takes timeout=(connect, read, write, pool)
    with FakeOllama(models=["llama3.2"]) as fake:
        fake.default_script = Script(tokens=("a",), first_token_delay=1.0)
        with official.Client(fake.url, timeout=(2.0, 0.2, 2.0, 2.0)) as theirs:
            with pytest.raises(Exception, match="timed out"):
                theirs.chat(model="llama3.2", messages=[{"role": "user", "content": "Hi"}])
        with ao.Client(fake.url, timeout=(2.0, 0.2, 2.0, 2.0)) as client:
            assert (client.fleet_client.timeouts.connect, client.fleet_client.timeouts.first_token) == (2.0, 0.2)
            with pytest.raises(ao.ResponseError, match="first-token timeout of 0.2 s"):
                client.chat(model="llama3.2", messages=[{"role": "user", "content": "Hi"}])
    with ao.Client("http://127.0.0.1:1", timeout=(1.0, 2.0)) as client:  # a two-tuple, as httpx takes it
        assert (client.fleet_client.timeouts.connect, client.fleet_client.timeouts.stall) == (1.0, 2.0)
    for bad in [(1.0,), ("a", "b"), -1]:
        with pytest.raises(ao.RequestError, match="timeout"):
            ao.Client("http://127.0.0.1:1", timeout=bad)


# -- a fleet: embed with an empty input (Ollama loads the model, answers no vectors) ------------
@pytest.mark.parametrize("empty", ["", []], ids=["str", "list"])
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_fleet_embed_of_empty_input_is_the_official_reply(empty, kind):
    fakes = [FakeOllama(models=["all-minilm"]).start() for _ in range(2)]
    try:
        with official.Client(fakes[0].url) as theirs:
            assert theirs.embed(model="all-minilm", input=empty).embeddings == []
        for fake in fakes:
            fake.clear_requests()
        urls = [f.url for f in fakes]
        if kind == "sync":
            with ao.Client(urls) as client:
                response = client.embed(model="all-minilm", input=empty)
        else:
            async def main():
                async with ao.AsyncClient(urls) as client:
                    return await client.embed(model="all-minilm", input=empty)

            response = asyncio.run(main())
        assert isinstance(response, official.EmbedResponse) and response.embeddings == []
        sent = [r.body for f in fakes for r in f.requests if r.path == "/api/embed"]
        assert sent == [{"model": "all-minilm", "input": empty}]  # one server, the official body
    finally:
        for fake in fakes:
            fake.stop()


# -- a fleet: a pull stream the caller stops reading ------------------------------------------
def test_fleet_pull_stream_left_early_stops_the_pulls():
    # the official client's stream closes its connection when left, and Ollama cancels
    # the pull; the fleet's pulls run in a thread, which must stop too
    fakes = [FakeOllama(models=["llama3.2"], pull_delay=0.2).start() for _ in range(2)]
    try:
        with ao.Client([f.url for f in fakes]) as client:
            progress = client.pull("qwen3:8b", stream=True)
            first = next(progress)
            assert first.status == "pulling manifest"
            progress.close()
            for fake in fakes:
                assert fake.wait_for_disconnect(timeout=10, path="/api/pull"), "the pull went on"
        assert all("qwen3:8b" not in fake.models for fake in fakes)
    finally:
        for fake in fakes:
            fake.stop()


def test_async_fleet_pull_stream_left_early_stops_the_pulls():
    fakes = [FakeOllama(models=["llama3.2"], pull_delay=0.2).start() for _ in range(2)]

    async def main():
        async with ao.AsyncClient([f.url for f in fakes]) as client:
            progress = await client.pull("qwen3:8b", stream=True)
            async for first in progress:
                assert first.status == "pulling manifest"
                break
            await progress.aclose()
            for fake in fakes:
                assert await asyncio.to_thread(fake.wait_for_disconnect, 10, "/api/pull"), "the pull went on"

    try:
        asyncio.run(main())
        assert all("qwen3:8b" not in fake.models for fake in fakes)
    finally:
        for fake in fakes:
            fake.stop()


# -- one host: a whole (stream=False) reply longer than one streamed line may be ----------------
def _long_whole_reply(tokens: int = 4000) -> bytes:
    # Ollama's stream=false chat reply with logprobs (api/types.go Logprob, top_logprobs=5):
    # about 400 bytes a token, so a 4000-token answer is one JSON object of 1.5 MB
    entry = {"token": "word", "logprob": -0.25, "bytes": [119, 111, 114, 100],
             "top_logprobs": [{"token": f"alt{i}", "logprob": -1.5 - i, "bytes": [97, 108, 116]} for i in range(5)]}
    body = {"model": "llama3.2", "created_at": "2026-11-22T06:00:00Z",
            "message": {"role": "assistant", "content": "word" * tokens}, "done": True, "done_reason": "stop",
            "eval_count": tokens, "logprobs": [entry] * tokens}
    import json

    return json.dumps(body).encode()


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_one_host_whole_reply_longer_than_a_streamed_line_is_read(kind):
    data = _long_whole_reply()
    assert len(data) > 1 << 20  # aicortex's longest streamed line
    ask = {"model": "llama3.2", "messages": [{"role": "user", "content": "Hi"}], "logprobs": True, "top_logprobs": 5}
    with raw_server({"/api/chat": (200, "application/json; charset=utf-8", data)}) as url:
        with official.Client(url) as theirs:
            expected = theirs.chat(**ask)
        if kind == "sync":
            with ao.Client(url) as client:
                response = client.chat(**ask)
        else:
            async def main():
                async with ao.AsyncClient(url) as client:
                    return await client.chat(**ask)

            response = asyncio.run(main())
    assert response.message.content == expected.message.content
    assert len(response.logprobs) == len(expected.logprobs) == 4000
    assert response.logprobs[0].top_logprobs[4].token == "alt4"


# -- one host: a big embed batch ------------------------------------------------------------------
def _embed_reply(inputs: int, dim: int = 768) -> bytes:
    import json

    vector = [round(-0.0123456789 + i * 1e-6, 10) for i in range(dim)]
    return json.dumps({"model": "nomic-embed-text", "embeddings": [vector] * inputs}).encode()


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_one_host_embed_of_a_big_batch_is_read(kind):
    # 1000 chunks of a document in one call (LangChain's embed_documents does this) with a
    # 768-dimension model: a reply of about 10 MB, more than aicortex's probe-reply bound
    data = _embed_reply(1000)
    assert len(data) > 8 << 20
    texts = [f"chunk {i}" for i in range(1000)]
    with raw_server({"/api/embed": (200, "application/json; charset=utf-8", data)}) as url:
        with official.Client(url) as theirs:
            assert len(theirs.embed(model="nomic-embed-text", input=texts).embeddings) == 1000
        if kind == "sync":
            with ao.Client(url) as client:
                response = client.embed(model="nomic-embed-text", input=texts)
        else:
            async def main():
                async with ao.AsyncClient(url) as client:
                    return await client.embed(model="nomic-embed-text", input=texts)

            response = asyncio.run(main())
    assert len(response.embeddings) == 1000 and len(response.embeddings[0]) == 768
    # the bound grows with what was asked: one input still may not bring back 10 MB
    with raw_server({"/api/embed": (200, "application/json", data)}) as url, ao.Client(url) as client:
        with pytest.raises(ao.ResponseError, match="longer than"):
            client.embed(model="nomic-embed-text", input="one text")


# -- headers ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_user_agent_header_is_sent_once(kind):
    # aicortex.ollama passes header names on lower-cased; httpx and aiohttp then sent both
    # aicortex's "User-Agent" and the caller's "user-agent": two User-Agent headers
    with FakeOllama(models=["llama3.2"]) as fake:
        if kind == "sync":
            with ao.Client(fake.url, headers={"User-Agent": "myapp/1.0"}) as client:
                client.list()
                client.chat(model="llama3.2", messages=[{"role": "user", "content": "Hi"}])
        else:
            async def main():
                async with ao.AsyncClient(fake.url, headers={"User-Agent": "myapp/1.0"}) as client:
                    await client.list()
                    await client.chat(model="llama3.2", messages=[{"role": "user", "content": "Hi"}])

            asyncio.run(main())
        assert [r.headers["user-agent"] for r in fake.requests] == ["myapp/1.0", "myapp/1.0"]


@pytest.mark.parametrize("host", [11434, 1.5, object()], ids=["int", "float", "object"])
def test_a_host_of_a_wrong_type_is_a_request_error(host):
    with pytest.raises(ao.RequestError, match="host must be a URL or a list of URLs"):
        ao.Client(host)


def test_hosts_given_as_an_iterator_are_all_taken():
    with FakeOllama(models=["llama3.2"]) as one, FakeOllama(models=["llama3.2"]) as two:
        with ao.Client(url for url in (one.url, two.url)) as client:
            assert repr(client).endswith(f"host={[one.url, two.url]!r}>")
            assert client.chat(model="llama3.2", messages=[{"role": "user", "content": "Hi"}]).message.content


# -- a fleet: a stream's errors come while iterating, as the official client's --------------------
def test_fleet_stream_errors_come_while_iterating_as_the_official_clients():
    # ollama-python's chat(stream=True) is a generator: nothing is sent, nothing raised,
    # until it is iterated; code that iterates inside `try` relies on that
    with FakeOllama(models=["llama3.2"]) as one, FakeOllama(models=["llama3.2"]) as two:
        with ao.Client([one.url, two.url]) as client:
            stream = client.chat(model="missing", messages=[{"role": "user", "content": "Hi"}], stream=True)
            assert one.requests == [] and two.requests == []  # not even discovery yet
            with pytest.raises(ao.ResponseError) as info:
                next(stream)
            assert info.value.status_code == 404


def test_async_fleet_stream_errors_come_while_iterating():
    async def main(urls):
        async with ao.AsyncClient(urls) as client:
            stream = await client.generate(model="missing", prompt="Hi", stream=True)
            with pytest.raises(ao.ResponseError) as info:
                async for _ in stream:
                    pass
            return info.value.status_code

    with FakeOllama(models=["llama3.2"]) as one, FakeOllama(models=["llama3.2"]) as two:
        assert asyncio.run(main([one.url, two.url])) == 404


# -- one host: logprobs entries the official types refuse -----------------------------------------
def _lines(*objs) -> bytes:
    import json

    return b"".join(json.dumps(o).encode() + b"\n" for o in objs)


GOOD = {"token": "a", "logprob": -0.5, "top_logprobs": [{"token": "a", "logprob": -0.5}]}
BAD_LOGPROBS = [
    {"token": "a", "logprob": "high"},  # not a number
    {"token": "a"},  # no logprob (Ollama always sends one: api/types.go TokenLogprob)
    {"token": "a", "logprob": -1.0, "top_logprobs": [{"token": 5, "logprob": -1.0}]},
    {"token": "a", "logprob": -1.0, "top_logprobs": "many"},
]


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("endpoint", ["chat", "generate"])
def test_one_host_logprobs_entries_the_official_types_refuse_are_left_out(endpoint, stream):
    if endpoint == "chat":
        piece = {"model": "m", "message": {"role": "assistant", "content": "a"}, "logprobs": [GOOD, *BAD_LOGPROBS], "done": False}
        last = {"model": "m", "message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "stop"}
    else:
        piece = {"model": "m", "response": "a", "logprobs": [GOOD, *BAD_LOGPROBS], "done": False}
        last = {"model": "m", "response": "", "done": True, "done_reason": "stop"}
    with FakeOllama(models=["m"]) as fake, ao.Client(fake.url) as client:
        fake.push(Script(raw=_lines(piece, last)))
        if endpoint == "chat":
            result = client.chat(model="m", messages=[{"role": "user", "content": "Hi"}], logprobs=True, stream=stream)
        else:
            result = client.generate(model="m", prompt="Hi", logprobs=True, stream=stream)
        parts = list(result) if stream else [result]
    logprobs = [entry for part in parts for entry in (part.logprobs or [])]
    assert [(e.token, e.logprob) for e in logprobs] == [("a", -0.5)]
    assert logprobs[0].top_logprobs[0].token == "a"


# -- one host: a client setting that fails when the client is first used ------------------------
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_bad_ca_bundle_is_a_request_error_on_a_streamed_pull_too(kind, tmp_path):
    missing = str(tmp_path / "no-such-ca.pem")
    with FakeOllama(models=["llama3.2"]) as fake:
        if kind == "sync":
            with ao.Client(fake.url, verify=missing) as client:
                with pytest.raises(ao.RequestError, match="CA bundle"):
                    client.list()
                with pytest.raises(ao.RequestError, match="CA bundle"):
                    list(client.pull("llama3.2", stream=True))
        else:
            async def main():
                async with ao.AsyncClient(fake.url, verify=missing) as client:
                    with pytest.raises(ao.RequestError, match="CA bundle"):
                        [p async for p in await client.pull("llama3.2", stream=True)]

            asyncio.run(main())
        assert fake.requests == []


# -- the official README's async example drops its AsyncClient unclosed ---------------------------
README_ASYNC = """
import asyncio, sys
from aicortex.ollama import AsyncClient

async def chat():
    message = {"role": "user", "content": "Why is the sky blue?"}
    response = await AsyncClient(sys.argv[1]).chat(model="llama3.2", messages=[message])
    print(response.message.content)
    async for part in await AsyncClient(sys.argv[1]).chat(model="llama3.2", messages=[message], stream=True):
        print(part.message.content, end="")
    print()

asyncio.run(chat())
"""


def test_an_async_client_dropped_unclosed_logs_nothing(tmp_path):
    # ollama-python's README: `await AsyncClient().chat(...)`, never closed; httpx is
    # silent about it, aiohttp logged "Unclosed client session" / "Unclosed connector"
    import subprocess
    import sys

    script = tmp_path / "readme_async.py"
    script.write_text(README_ASYNC)
    with FakeOllama(models=["llama3.2"]) as fake:
        out = subprocess.run([sys.executable, str(script), fake.url], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["Hello, world!", "Hello, world!"]
    assert "Unclosed" not in out.stderr and out.stderr == ""


# -- one host: the caller's timeout bounds every call, not only chat/generate ----------------------
@contextlib.contextmanager
def silent_server() -> Iterator[str]:
    """A loopback address whose connects succeed (the kernel's backlog) and whose replies never come."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


CALLS_BESIDES_INFERENCE = [
    lambda c: c.list(), lambda c: c.ps(), lambda c: c.show("m"), lambda c: c.embed("m", "x"),
    lambda c: c.embeddings("m", "x"), lambda c: c.pull("m"), lambda c: list(c.pull("m", stream=True)),
    lambda c: c.delete("m"), lambda c: c.copy("m", "n"),
]


@pytest.mark.parametrize("call", CALLS_BESIDES_INFERENCE,
                         ids=["list", "ps", "show", "embed", "embeddings", "pull", "pull-stream", "delete", "copy"])
def test_one_host_timeout_bounds_every_call(call):
    # ollama-python hands timeout= to httpx: a server that stops answering is a timeout
    outcome: list[BaseException] = []

    def run(url):
        try:
            with ao.Client(url, timeout=0.3) as client:
                call(client)
        except BaseException as exc:  # handed to the test thread
            outcome.append(exc)

    with silent_server() as url:
        worker = threading.Thread(target=run, args=(url,), daemon=True)
        worker.start()
        worker.join(10)
        assert not worker.is_alive(), "the call ignored timeout=0.3 and hangs"
    [error] = outcome
    assert isinstance(error, TimeoutError) and isinstance(error, AICortexError)


def test_async_one_host_timeout_bounds_every_call():
    async def main(url):
        errors = []
        async with ao.AsyncClient(url, timeout=0.3) as client:
            for call in (client.list(), client.show("m"), client.embed("m", "x")):
                try:
                    await asyncio.wait_for(call, 10)  # its own TimeoutError is not an AICortexError
                except Exception as exc:
                    errors.append(exc)
        return errors

    with silent_server() as url:
        errors = asyncio.run(main(url))
    assert len(errors) == 3 and all(isinstance(e, TimeoutError) and isinstance(e, AICortexError) for e in errors), errors


# -- generate's final context, streamed: more than a token line may be ------------------------------
def _generate_stream_with_context(tokens: int) -> bytes:
    return _lines(
        {"model": "m", "response": "a", "done": False},
        {"model": "m", "response": "", "done": True, "done_reason": "stop", "context": list(range(100000, 100000 + tokens))},
    )


def test_streamed_generate_with_a_long_context_is_read():
    # a 200k-token context (num_ctx 262144) is a 1.6 MB final chunk, which the official
    # client reads; a fleet always streams, so its generate() met this too
    data = _generate_stream_with_context(200_000)
    assert len(data) > 1 << 20
    with raw_server({"/api/generate": (200, "application/x-ndjson", data)}) as url:
        with ao.Client(url) as client:
            parts = list(client.generate(model="m", prompt="Hi", stream=True))
        assert len(parts[-1].context) == 200_000 and parts[-1].done
    replies = {**_fleet_replies(b"{}"), "/api/generate": (200, "application/x-ndjson", data)}
    with raw_server(replies) as one, raw_server(replies) as two, ao.Client([one, two]) as client:
        assert len(client.generate(model="m", prompt="Hi").context) == 200_000


def test_the_client_underneath_kept_by_the_caller_still_works_when_the_drop_in_is_let_go():
    import gc

    async def main(url):
        core = ao.AsyncClient(url).fleet_client  # the drop-in itself is let go here
        gc.collect()
        try:
            return (await core.chat("Hi", model="llama3.2")).text
        finally:
            await core.aclose()

    with FakeOllama(models=["llama3.2"]) as fake:
        assert asyncio.run(main(fake.url)) == "Hello, world!"
