"""aicortex.ollama, the drop-in for the official client: with one host it sends the
official client's request bodies (captured side by side on loopback servers), returns
its response types, raises its errors; with several hosts it fails over."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import ollama as official
import pytest

from aicortex import AICortexError, ConnectError, Reply, StreamEvent
from aicortex import ollama as ao
from aicortex.testing import FakeOllama, Script

WORDS = ("The", " sky", " is", " blue", " because", " of", " Rayleigh", " scattering", ".")
TEXT = "".join(WORDS)


def add_two_numbers(a: int, b: int) -> int:
    """Add two numbers.

    Args:
        a: the first number
        b: the second number
    """
    return a + b


def _fake() -> FakeOllama:
    fake = FakeOllama(models=["llama3.2", "nomic-embed-text"], loaded=["llama3.2"])
    fake.default_script = Script(tokens=WORDS, thinking=("Let me think.",))
    return fake


# Calls the official client's README and API docs show, with the arguments they take.
CALLS = [
    ("chat", {"model": "llama3.2", "messages": [{"role": "user", "content": "Why is the sky blue?"}]}),
    ("chat", {"model": "llama3.2", "messages": [{"role": "user", "content": "Hi"}], "stream": True}),
    ("chat", {
        "model": "llama3.2",
        "messages": [official.Message(role="user", content="What is 3 + 4?"), {"role": "assistant", "content": ""}],
        "tools": [add_two_numbers], "options": {"temperature": 0, "num_ctx": 4096}, "think": "high",
        "format": "json", "keep_alive": "5m", "logprobs": True, "top_logprobs": 2,
    }),
    ("chat", {"model": "llama3.2", "messages": [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "18 degrees", "tool_name": "get_weather"},
    ], "format": {"type": "object", "properties": {"t": {"type": "integer"}}}}),
    ("generate", {"model": "llama3.2", "prompt": "Why is the sky blue?"}),
    ("generate", {"model": "llama3.2", "prompt": "Describe", "images": [b"\x89PNG\r\n", "aGVsbG8="], "system": "terse",
                  "options": official.Options(temperature=0.5), "stream": True}),
    ("generate", {"model": "llama3.2", "prompt": "<|user|>hi", "raw": True, "suffix": "end", "keep_alive": 0}),
    ("embed", {"model": "nomic-embed-text", "input": "The sky is blue because of rayleigh scattering"}),
    ("embed", {"model": "nomic-embed-text", "input": ["first", "second"], "truncate": True, "dimensions": 4}),
    ("embeddings", {"model": "nomic-embed-text", "prompt": "legacy"}),
    ("show", {"model": "llama3.2"}),
    ("list", {}),
    ("ps", {}),
    ("pull", {"model": "llama3.2"}),
    ("pull", {"model": "nomic-embed-text", "stream": True}),
    ("copy", {"source": "llama3.2", "destination": "user/llama3.2"}),
    ("delete", {"model": "nomic-embed-text"}),
    ("create", {"model": "mario", "from_": "llama3.2", "system": "You are Mario from Super Mario Bros."}),
    ("push", {"model": "llama3.2", "stream": True}),
]


def _wire(fake: FakeOllama, since: int) -> list[tuple[str, str, object]]:
    return [(r.method, r.path, r.body) for r in fake.requests[since:]]


def _run(client, name: str, kwargs: dict):
    result = getattr(client, name)(**kwargs)
    return list(result) if kwargs.get("stream") else result


@pytest.mark.parametrize("name,kwargs", CALLS, ids=[f"{c[0]}-{i}" for i, c in enumerate(CALLS)])
def test_one_host_sends_the_official_clients_bodies(name, kwargs):
    with _fake() as theirs, _fake() as ours:
        with official.Client(host=theirs.url) as theirs_client:
            _run(theirs_client, name, kwargs)
        with ao.Client(ours.url) as client:
            _run(client, name, kwargs)
        assert _wire(ours, 0) == _wire(theirs, 0)
        assert _wire(ours, 0), "nothing was sent"


@pytest.mark.parametrize("name,kwargs", [c for c in CALLS if c[0] in ("chat", "generate", "embed")][:6])
def test_async_one_host_sends_the_official_async_clients_bodies(name, kwargs):
    async def run(client):
        result = await getattr(client, name)(**kwargs)
        if kwargs.get("stream"):
            return [part async for part in result]
        return result

    with _fake() as theirs, _fake() as ours:
        async def official_run():
            async with official.AsyncClient(host=theirs.url) as client:
                return await run(client)

        asyncio.run(official_run())

        async def mine():
            async with ao.AsyncClient(ours.url) as client:
                return await run(client)

        asyncio.run(mine())
        assert _wire(ours, 0) == _wire(theirs, 0)


def _same_reply(theirs, ours, endpoint: str) -> None:
    """The fields a caller reads are equal (created_at and durations differ by nature)."""
    keep = {"model", "done", "done_reason", "eval_count", "prompt_eval_count", "message", "response", "thinking", "context"}
    strip = lambda r: {k: v for k, v in r.model_dump(exclude_none=True).items() if k in keep}  # noqa: E731
    assert strip(ours) == strip(theirs)
    assert type(ours).__mro__[1:].count(type(theirs)) or isinstance(ours, type(theirs))


@pytest.mark.parametrize("endpoint", ["chat", "generate"])
def test_one_host_responses_are_the_official_types_with_the_same_content(endpoint):
    kwargs = {"model": "llama3.2"}
    kwargs.update({"messages": [{"role": "user", "content": "Hi"}]} if endpoint == "chat" else {"prompt": "Hi"})
    with _fake() as fake, official.Client(host=fake.url) as theirs_client:
        theirs = getattr(theirs_client, endpoint)(**kwargs)
        with ao.Client(fake.url) as client:
            ours = getattr(client, endpoint)(**kwargs)
            _same_reply(theirs, ours, endpoint)
            assert isinstance(ours.aicortex, Reply) and ours.aicortex.server == fake.url
            their_parts = list(getattr(theirs_client, endpoint)(**kwargs, stream=True))
            our_parts = list(getattr(client, endpoint)(**kwargs, stream=True))
    text = (lambda parts: "".join((p.message.content if endpoint == "chat" else p.response) or "" for p in parts))  # noqa: E731
    thinking = (lambda parts: "".join((p.message.thinking if endpoint == "chat" else p.thinking) or "" for p in parts))  # noqa: E731
    assert text(our_parts) == text(their_parts) == TEXT
    assert thinking(our_parts) == thinking(their_parts) == "Let me think."
    assert [p.done for p in our_parts] == [p.done for p in their_parts]
    assert our_parts[-1].done_reason == their_parts[-1].done_reason == "stop"
    assert our_parts[-1].eval_count == their_parts[-1].eval_count
    assert all(isinstance(p, official.ChatResponse if endpoint == "chat" else official.GenerateResponse) for p in our_parts)
    assert isinstance(our_parts[0].aicortex, StreamEvent) and isinstance(our_parts[-1].aicortex, Reply)


def test_ride_along_never_changes_the_official_shape():
    with _fake() as fake, ao.Client(fake.url) as client:
        response = client.chat(model="llama3.2", messages=[{"role": "user", "content": "Hi"}])
    dumped = response.model_dump()
    assert "aicortex" not in dumped and "_aicortex" not in dumped
    assert official.ChatResponse.model_validate(dumped).message.content == TEXT
    assert response["message"]["content"] == TEXT  # subscriptable, as the official types


def test_one_host_does_no_discovery():
    with _fake() as fake, ao.Client(fake.url) as client:
        client.chat(model="llama3.2", messages=[{"role": "user", "content": "Hi"}])
        client.embed(model="nomic-embed-text", input="x")
        assert [r.path for r in fake.requests] == ["/api/chat", "/api/embed"]


def test_a_model_the_one_host_lacks_is_the_servers_404_as_response_error():
    with _fake() as fake, ao.Client(fake.url) as client:
        with pytest.raises(official.ResponseError) as info:
            client.chat(model="missing", messages=[{"role": "user", "content": "Hi"}])
    assert info.value.status_code == 404 and info.value.error == "model 'missing' not found"
    assert isinstance(info.value, AICortexError)


def test_unreachable_host_is_a_connection_error_as_the_official_client():
    with FakeOllama() as fake:
        url = fake.url
    with ao.Client(url) as client:
        with pytest.raises(ConnectionError) as info:
            client.chat(model="llama3.2", messages=[{"role": "user", "content": "Hi"}])
    assert isinstance(info.value, ConnectError)
    assert str(info.value).startswith(ao.CONNECTION_ERROR_MESSAGE)


def test_wrong_requests_are_request_errors_before_anything_is_sent():
    with _fake() as fake, ao.Client(fake.url) as client:
        with pytest.raises(ao.RequestError):
            client.chat(model="", messages=[])  # the official types refuse an empty model
        with pytest.raises(official.RequestError):
            client.chat(model="llama3.2", messages=[{"role": 3}])
        assert fake.requests == []
    with pytest.raises(ao.RequestError, match="transport"):
        ao.Client("http://127.0.0.1:1", transport=object())


def test_an_in_stream_error_on_one_host_is_response_error_minus_one():
    with _fake() as fake, ao.Client(fake.url) as client:
        fake.push(Script(tokens=WORDS, error_after=2, error="runner crashed"))
        parts = []
        with pytest.raises(ao.ResponseError) as info:
            for part in client.chat(model="llama3.2", messages=[{"role": "user", "content": "Hi"}], stream=True):
                parts.append(part)
    assert info.value.status_code == -1 and "runner crashed" in info.value.error
    assert "".join(p.message.content for p in parts) == "The sky"


# -- a fleet --------------------------------------------------------------------------------------
def _fleet(n: int = 3):
    fakes = [FakeOllama(models=["llama3.2", "nomic-embed-text"], loaded=["llama3.2"]) for _ in range(n)]
    for fake in fakes:
        fake.default_script = Script(tokens=WORDS)
        fake.start()
    return fakes


@pytest.fixture
def fleet():
    fakes = _fleet()
    try:
        yield fakes
    finally:
        for fake in fakes:
            fake.stop()


def _serving(fakes):
    return [f for f in fakes if any(r.path == "/api/chat" for r in f.requests)]


def _first(client, fakes):
    """The fake the fleet client would send the next request to."""
    url = client.fleet_client._route_now("llama3.2").candidates[0].server.url
    return next(f for f in fakes if f.url == url)


def test_fleet_stream_survives_a_server_dying_mid_reply(fleet):
    with ao.Client([f.url for f in fleet]) as client:
        client.fleet_client.refresh()
        _first(client, fleet).push(Script(tokens=WORDS, drop_after=4))  # dies after 4 words
        parts = list(client.chat(model="llama3.2", messages=[{"role": "user", "content": "Why?"}], stream=True))
    assert "".join(p.message.content for p in parts) == TEXT  # every word, once
    assert parts[-1].done and not any(p.done for p in parts[:-1])
    reply = parts[-1].aicortex
    assert len(reply.attempts) == 2 and reply.attempts[0].error is not None and reply.attempts[1].error is None
    assert len(_serving(fleet)) == 2


def test_fleet_sends_streamed_requests_and_returns_a_whole_response(fleet):
    with ao.Client([f.url for f in fleet]) as client:
        response = client.chat(model="llama3.2", messages=[{"role": "user", "content": "Why?"}])
    assert response.message.content == TEXT and response.done
    bodies = [r.body for f in fleet for r in f.requests if r.path == "/api/chat"]
    assert bodies and all(b["stream"] is True for b in bodies)


def test_fleet_async_stream_survives_a_server_dying_mid_reply(fleet):
    async def main():
        async with ao.AsyncClient([f.url for f in fleet]) as client:
            await client.fleet_client.refresh()
            _first(client, fleet).push(Script(tokens=WORDS, drop_after=3))
            return [p async for p in await client.chat(model="llama3.2", messages=[{"role": "user", "content": "Why?"}], stream=True)]

    parts = asyncio.run(main())
    assert "".join(p.message.content for p in parts) == TEXT
    assert len(parts[-1].aicortex.attempts) == 2


def test_fleet_stream_that_cannot_continue_raises_instead_of_repeating(fleet):
    # structured output is never continued mid-way: the reply would restart, and the
    # chunks already yielded cannot be taken back
    with ao.Client([f.url for f in fleet]) as client:
        client.fleet_client.refresh()
        _first(client, fleet).push(Script(tokens=WORDS, drop_after=3))
        parts = []
        with pytest.raises(ao.ResponseError, match="cannot be continued"):
            for part in client.chat(model="llama3.2", messages=[{"role": "user", "content": "Why?"}], format="json", stream=True):
                parts.append(part)
        assert "".join(p.message.content for p in parts) == "The sky is"
        # not streamed: the restart is invisible and the whole reply comes back
        _first(client, fleet).push(Script(tokens=WORDS, drop_after=3))
        assert client.chat(model="llama3.2", messages=[{"role": "user", "content": "Why?"}], format="json").message.content == TEXT


def test_fleet_unknown_model_and_all_servers_down(fleet):
    with ao.Client([f.url for f in fleet]) as client:
        with pytest.raises(ao.ResponseError) as info:
            client.chat(model="missing", messages=[{"role": "user", "content": "Hi"}])
        assert info.value.status_code == 404
        client.fleet_client.refresh()
        for fake in fleet:
            fake.push(Script(status=500, error="llama runner process has terminated"))
        with pytest.raises(ao.ResponseError) as info:
            client.generate(model="llama3.2", prompt="Hi")
        assert info.value.status_code == 500 and len(info.value.attempts) == 3


def test_fleet_operations_return_the_official_types(fleet):
    with ao.Client([f.url for f in fleet]) as client:
        listed = client.list()
        assert isinstance(listed, official.ListResponse)
        assert sorted(m.model for m in listed.models) == ["llama3.2:latest", "nomic-embed-text:latest"]
        loaded = client.ps()
        assert isinstance(loaded, official.ProcessResponse) and len(loaded.models) == 3  # one per server
        assert isinstance(client.show("llama3.2"), official.ShowResponse)
        progress = list(client.pull("llama3.2", stream=True))
        assert progress[-1].status == "success" and {p.aicortex.server for p in progress[:-1]} == {f.url for f in fleet}
        assert client.copy("llama3.2", "mine").status == "success"
        assert all("mine" in " ".join(f.models) for f in fleet)
        assert client.delete("mine").status == "success"
        assert client.create(model="mario", from_="llama3.2", system="Mario").status == "success"
        assert all(any(m.startswith("mario") for m in f.models) for f in fleet)
        vectors = client.embed(model="nomic-embed-text", input=[f"text {i}" for i in range(40)])
        assert isinstance(vectors, official.EmbedResponse) and len(vectors.embeddings) == 40
        assert len(client.embeddings(model="nomic-embed-text", prompt="x").embedding) == 8


def test_fleet_pull_failure_names_the_server(fleet):
    fleet[1].pull_errors = {"llama3.2": "pull model manifest: file does not exist"}
    with ao.Client([f.url for f in fleet]) as client:
        with pytest.raises(ao.ResponseError, match=fleet[1].url):
            client.pull("llama3.2")


def test_import_aicortex_does_not_load_the_drop_in():
    code = "import sys, aicortex; print('aicortex.ollama' in sys.modules, 'ollama' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_import_of_the_drop_in_does_no_io(tmp_path):
    code = (
        "import os; os.environ['AICORTEX_DB'] = os.path.join(os.environ['T'], 'r.db')\n"
        "from aicortex import ollama\n"
        "print(os.path.exists(os.environ['AICORTEX_DB']))"
    )
    env = {"T": str(tmp_path), "PATH": "", "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout.split()
    assert out == ["False"]


def test_every_public_name_of_the_official_client_exists():
    missing = [name for name in official.__all__ if not hasattr(ao, name)]
    missing += [name for name in ("chat", "generate", "embed", "embeddings", "pull", "push", "create", "delete", "list",
                                  "copy", "show", "ps", "web_search", "web_fetch", "create_blob") if not hasattr(ao, name)]
    assert missing == []
    with pytest.raises(ao.RequestError, match="cloud API"):
        ao.Client("http://127.0.0.1:1").web_search("x")
