"""generate() and embed() across the fleet, with both clients, against FakeOllama."""

from __future__ import annotations

import pytest

from aicortex import AllServersFailed, BadRequest, ConfigError, EmbedResult, Registry, Timeouts
from aicortex.testing import FakeOllama, Script
from conftest import make_client

pytestmark = pytest.mark.timeout(60)

M = "llama3.2"
E = "nomic-embed-text"
TOKENS = ("Once", " upon", " a", " time", ", there", " was", " a", " fox", ".")
FULL = "".join(TOKENS)
FAST = Timeouts(connect=0.5, first_token=1.0, first_token_cold=1.0, stall=1.0)


@pytest.fixture
def fleet(client_kind):
    made = []

    def make(n=2, **fake_kw):
        fakes = [FakeOllama(models=[M, E], script=Script(tokens=TOKENS), **fake_kw).start() for _ in range(n)]
        reg = Registry.memory()
        for i, f in enumerate(fakes):
            reg.add(f.url, name=f"s{i}", priority=n - i)  # s0 first
        client = make_client(client_kind, reg, timeout=FAST)
        client.refresh()
        made.append((client, reg, fakes))
        return client, fakes

    yield make
    for client, reg, fakes in made:
        client.close()
        reg.close()
        for f in fakes:
            f.stop()


def test_generate_streams_and_returns_the_context(fleet):
    client, (a, _) = fleet()
    reply = client.generate("Tell me a story", model=M, system="be brief", options={"num_predict": 9})
    assert reply.text == FULL and reply.server == a.url and reply.context
    body = a.requests[-1].body
    assert body["prompt"] == "Tell me a story" and body["system"] == "be brief" and body["options"] == {"num_predict": 9}
    stream = client.generate("Tell me a story", model=M, stream=True)
    kinds = [e.type for e in stream]
    assert kinds[0] == "start" and kinds.count("token") == len(TOKENS) and kinds[-1] == "end"
    assert stream.text() == FULL


def test_generate_fails_over_before_the_first_token(fleet):
    client, (a, b) = fleet()
    a.push(Script(status=500))
    reply = client.generate("Tell me a story", model=M)
    assert reply.text == FULL and reply.server == b.url and "HTTP 500" in str(reply.attempts[0].error)


def test_generate_raw_continues_mid_stream_without_losing_or_repeating_a_word(fleet):
    client, (a, b) = fleet()
    a.push(Script(tokens=TOKENS, drop_after=4))
    stream = client.generate("<s>Story:", model=M, raw=True, stream=True)
    kinds = [e.type for e in stream]
    assert "reset" not in kinds and stream.text() == FULL
    assert b.requests[-1].body["prompt"] == "<s>Story:" + "".join(TOKENS[:4])  # prompt + partial text
    assert [e.index for e in stream.events if e.type == "token"] == list(range(len(TOKENS)))


def test_generate_templated_restarts_mid_stream(fleet):
    client, (a, b) = fleet()
    a.push(Script(tokens=TOKENS, drop_after=4))
    stream = client.generate("Tell me a story", model=M, stream=True)
    kinds = [e.type for e in stream]
    assert "reset" in kinds and stream.text() == FULL
    assert b.requests[-1].body["prompt"] == "Tell me a story"  # the same prompt, from the start


def test_generate_bad_input_is_a_config_error_before_any_request(fleet, tmp_path):
    client, (a, _) = fleet()
    before = len(a.requests)
    with pytest.raises(ConfigError):
        client.generate("x", model=M, raw=True, system="no")
    with pytest.raises(ConfigError):
        client.generate("x", model=M, images=[3.5])
    with pytest.raises(ConfigError):
        client.generate(["not", "a", "str"], model=M)
    assert len(a.requests) == before


def test_generate_images_from_paths_bytes_and_base64(fleet, tmp_path):
    import base64

    client, (a, _) = fleet()
    path = tmp_path / "cat.png"
    path.write_bytes(b"\x89PNG cat")
    client.generate("what is this?", model=M, images=[path, b"raw bytes", base64.b64encode(b"b64").decode()])
    images = a.requests[-1].body["images"]
    assert [base64.b64decode(i) for i in images] == [b"\x89PNG cat", b"raw bytes", b"b64"]


def test_embed_one_text_and_a_list_in_input_order(fleet):
    client, fakes = fleet(3)
    one = client.embed("hello", model=E)
    assert isinstance(one, EmbedResult) and len(one.embeddings) == 1
    texts = [f"text number {i}" for i in range(100)]
    many = client.embed(texts, model=E, batch_size=10)
    assert len(many.embeddings) == 100 and many.embeddings[0] != many.embeddings[1]
    # Every fake derives a vector from the text alone: order is input order whoever served it.
    alone = client.embed(texts[37], model=E)
    assert many.embeddings[37] == alone.embeddings[0]
    assert len(set(many.servers)) == 3  # the batches were spread over the fleet
    assert sum(len(f.embed_requests) for f in fakes) >= 12


def test_embed_a_failed_batch_is_retried_on_another_server(fleet):
    client, (a, b, c) = fleet(3)
    texts = [f"t{i}" for i in range(30)]
    expected = client.embed(texts, model=E).embeddings
    a.push(Script(status=500))
    b.push(Script(drop_after=0))
    result = client.embed(texts, model=E, batch_size=5)
    assert result.embeddings == expected
    failed = [x for x in result.attempts if x.error is not None]
    assert {x.server for x in failed} == {a.url, b.url}
    assert len(result.attempts) == 6 + len(failed)  # each batch once, plus a retry per failure


def test_embed_fails_when_every_server_fails(fleet):
    client, fakes = fleet(2)
    for f in fakes:
        f.push(Script(status=500))
    with pytest.raises(AllServersFailed) as info:
        client.embed(["a", "b", "c", "d"], model=E, batch_size=2)
    assert "found no server" in str(info.value)


def test_embed_http_400_is_raised_at_once(fleet):
    client, (a, b) = fleet()
    with pytest.raises(BadRequest):
        client.embed(["x" * 20000], model=E, truncate=False)


def test_embed_bad_input_is_a_config_error(fleet):
    client, _ = fleet()
    for bad in ([], [1, 2], None, [b"bytes"]):
        with pytest.raises(ConfigError):
            client.embed(bad, model=E)
    with pytest.raises(ConfigError):
        client.embed(["a"], model=E, batch_size=0)


def test_module_level_generate_and_embed_use_the_shared_client_of_a_registry():
    import aicortex

    with FakeOllama(models=[M, E], script=Script(tokens=TOKENS)) as fake:
        reg = Registry.memory()
        reg.add(fake.url)
        assert aicortex.generate("Tell me", model=M, registry=reg).text == FULL
        assert len(aicortex.embed(["a", "b"], model=E, registry=reg).embeddings) == 2
        reg._aicortex_client.close()
        reg.close()
