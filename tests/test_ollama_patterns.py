"""The official client's documented usage patterns (its README and examples: chat,
streaming, a custom client, async, generate, embed, tools, structured outputs,
thinking, images, list, ps, show, create, copy, delete, pull with progress, push, and
the "pull on 404" error handling), written here afresh, run against a fleet of three
FakeOllama servers with nothing changed but the import line below.

The module-level functions use the default registry (``AICORTEX_DB``), where the
fixture registers the fleet; ``gpu0`` has the highest priority, so it serves first.
"""

from __future__ import annotations

import asyncio

import pytest
from pydantic import BaseModel

from aicortex import ollama  # the only change: was `import ollama`
from aicortex import Registry
from aicortex.testing import FakeOllama, Script

from ollama import ChatResponse, ResponseError  # the official types are what comes back

WORDS = ("The", " sky", " is", " blue", " because", " of", " Rayleigh", " scattering", ".")
ANSWER = "".join(WORDS)
MODEL = "gemma3"


@pytest.fixture
def fleet(tmp_path, monkeypatch):
    fakes = [
        FakeOllama(models=[MODEL, "all-minilm"], loaded=[MODEL], script=Script(tokens=WORDS)).start() for _ in range(3)
    ]
    db = tmp_path / "servers.db"
    registry = Registry(db, seed=False)
    for i, fake in enumerate(fakes):
        registry.add(fake.url, name=f"gpu{i}", priority=10 - i)
    registry.close()
    monkeypatch.setenv("AICORTEX_DB", str(db))
    ollama._default.close()  # module-level functions: the default client, rebuilt from AICORTEX_DB
    try:
        yield fakes
    finally:
        ollama._default.close()
        for fake in fakes:
            fake.stop()


def test_chat(fleet):
    response: ChatResponse = ollama.chat(model=MODEL, messages=[{"role": "user", "content": "Why is the sky blue?"}])
    assert response["message"]["content"] == ANSWER
    assert response.message.content == ANSWER


def test_streaming_chat_survives_a_server_dying(fleet):
    fleet[0].push(Script(tokens=WORDS, drop_after=4))  # gpu0 dies after four words
    stream = ollama.chat(model=MODEL, messages=[{"role": "user", "content": "Why is the sky blue?"}], stream=True)
    printed = "".join(chunk["message"]["content"] for chunk in stream)
    assert printed == ANSWER


def test_custom_client_with_headers(fleet):
    client = ollama.Client(host=fleet[1].url, headers={"x-some-header": "some-value"})
    response = client.chat(model=MODEL, messages=[{"role": "user", "content": "Why is the sky blue?"}])
    assert response.message.content == ANSWER
    assert fleet[1].requests[-1].headers["x-some-header"] == "some-value"
    client.close()


def test_custom_client_over_several_hosts(fleet):
    with ollama.Client(host=[f.url for f in fleet]) as client:
        assert client.chat(model=MODEL, messages=[{"role": "user", "content": "Hi"}]).message.content == ANSWER


def test_async_client(fleet):
    async def chat():
        message = {"role": "user", "content": "Why is the sky blue?"}
        client = ollama.AsyncClient()
        response = await client.chat(model=MODEL, messages=[message])
        parts = []
        async for part in await client.chat(model=MODEL, messages=[message], stream=True):
            parts.append(part["message"]["content"])
        await client.close()
        return response.message.content, "".join(parts)

    assert asyncio.run(chat()) == (ANSWER, ANSWER)


def test_generate_and_streaming_generate(fleet):
    assert ollama.generate(model=MODEL, prompt="Why is the sky blue?")["response"] == ANSWER
    assert "".join(part["response"] for part in ollama.generate(MODEL, "Why is the sky blue?", stream=True)) == ANSWER


def test_embed_single_and_batch(fleet):
    single = ollama.embed(model="all-minilm", input="The sky is blue because of rayleigh scattering")
    batch = ollama.embed(model="all-minilm", input=["The sky is blue", "The grass is green"])
    assert len(single["embeddings"]) == 1 and len(batch.embeddings) == 2
    assert len(batch.embeddings[0]) == len(single.embeddings[0]) == 8


def test_tools_round_trip(fleet):
    def add_two_numbers(a: int, b: int) -> int:
        """Add two numbers.

        Args:
            a: The first number
            b: The second number

        Returns:
            int: The sum of the two numbers
        """
        return a + b

    fleet[0].push(Script(tool_calls=[{"name": "add_two_numbers", "arguments": {"a": 3, "b": 4}}]))
    fleet[0].push(Script(tokens=("3 + 4 is", " 7.")))
    messages = [{"role": "user", "content": "What is three plus four?"}]
    available_functions = {"add_two_numbers": add_two_numbers}
    response = ollama.chat(model=MODEL, messages=messages, tools=[add_two_numbers])
    results = []
    for tool in response.message.tool_calls or []:
        function_to_call = available_functions.get(tool.function.name)
        output = function_to_call(**tool.function.arguments)
        results.append(output)
        messages.append(response.message)
        messages.append({"role": "tool", "content": str(output), "tool_name": tool.function.name})
    final = ollama.chat(model=MODEL, messages=messages)
    assert results == [7] and final.message.content == "3 + 4 is 7."
    sent = fleet[0].requests[-1].body
    assert sent["messages"][-1] == {"role": "tool", "content": "7", "tool_name": "add_two_numbers"}
    assert sent["messages"][-2]["tool_calls"][0]["function"]["name"] == "add_two_numbers"
    assert fleet[0].requests[-2].body["tools"][0]["function"]["name"] == "add_two_numbers"


def test_structured_outputs(fleet):
    class FriendInfo(BaseModel):
        name: str
        age: int
        is_available: bool

    class FriendList(BaseModel):
        friends: list[FriendInfo]

    fleet[0].push(Script(tokens=('{"friends": [{"name": "Ana", ', '"age": 23, "is_available": true}]}')))
    response = ollama.chat(
        model=MODEL, messages=[{"role": "user", "content": "I have a friend Ana, 23, free today. Return JSON."}],
        format=FriendList.model_json_schema(), options={"temperature": 0},
    )
    friends = FriendList.model_validate_json(response.message.content)
    assert friends.friends[0].name == "Ana" and friends.friends[0].age == 23
    assert fleet[0].requests[-1].body["format"] == FriendList.model_json_schema()


def test_thinking(fleet):
    fleet[0].push(Script(thinking=("Rayleigh", " scattering."), tokens=WORDS))
    response = ollama.chat(model=MODEL, messages=[{"role": "user", "content": "Why?"}], think=True)
    assert response.message.thinking == "Rayleigh scattering." and response.message.content == ANSWER
    assert fleet[0].requests[-1].body["think"] is True


def test_images_by_path(fleet, tmp_path):
    image = tmp_path / "cat.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\nfake")
    response = ollama.chat(model=MODEL, messages=[{"role": "user", "content": "What is in this image?", "images": [str(image)]}])
    assert response.message.content == ANSWER
    sent = fleet[0].requests[-1].body["messages"][0]["images"]
    assert sent == ["iVBORw0KGgpmYWtl"]  # base64 of the file, as the official client sends it


def test_list_show_ps(fleet):
    names = [model.model for model in ollama.list().models]
    assert names == ["all-minilm:latest", f"{MODEL}:latest"]
    for model in ollama.list()["models"]:
        assert model["size"] > 0 and model.details.family
    assert ollama.show(MODEL).details.family
    running = ollama.ps()
    assert [m.model for m in running.models] == [f"{MODEL}:latest"] * 3
    assert all(m.expires_at is not None and m.size_vram for m in running.models)


def test_create_copy_delete(fleet):
    assert ollama.create(model="example", from_=MODEL, system="You are Mario from Super Mario Bros.").status == "success"
    assert ollama.copy(MODEL, "user/gemma3").status == "success"
    assert ollama.delete("user/gemma3").status == "success"
    assert all(any(m.startswith("example") for m in f.models) for f in fleet)
    assert not any(m.startswith("user/gemma3") for f in fleet for m in f.models)


def test_pull_with_progress_and_push(fleet):
    seen = {}
    for progress in ollama.pull("all-minilm", stream=True):
        digest = progress.get("digest", "")
        if digest and progress.get("total"):
            seen[digest] = (progress.get("completed") or 0, progress.get("total"))
    assert progress.status == "success" and seen
    assert ollama.pull("all-minilm").status == "success"
    assert ollama.push(MODEL).status == "success"


def test_response_error_then_pull(fleet):
    model = "does-not-exist-yet"
    try:
        ollama.chat(model)
    except ollama.ResponseError as e:
        assert e.status_code == 404
        assert isinstance(e, ResponseError)
        ollama.pull(model)
    else:  # pragma: no cover - the test needs the error
        pytest.fail("no ResponseError")
    for fake in fleet:
        fake.default_script = Script(tokens=WORDS)
    assert ollama.chat(model, messages=[{"role": "user", "content": "Hi"}]).message.content == ANSWER
