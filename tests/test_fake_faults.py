"""FakeOllama's wire-shape faults: drip, hold_after_done, gzip, http10 and raw bodies.

Each is checked on the wire (httpx or a raw socket), and end to end through the public
``Client.chat`` where the reply should still come out whole.
"""

from __future__ import annotations

import json
import socket
import zlib

import httpx
import pytest

from aicortex import Client, Registry, Timeouts
from aicortex._protocol import NDJSONDecoder
from aicortex.testing import FakeOllama, Script

pytestmark = pytest.mark.timeout(30)

BODY = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
TIMEOUTS = Timeouts(connect=2, first_token=10, first_token_cold=10, stall=10)


@pytest.fixture
def fake():
    with FakeOllama(models=["llama3.2"]) as f:
        yield f


@pytest.fixture
def http():
    with httpx.Client(timeout=10) as c:
        yield c


@pytest.fixture
def client(fake):
    registry = Registry.memory()
    registry.add(fake.url)
    with Client(registry, timeout=TIMEOUTS) as c:
        c.refresh()
        yield c
    registry.close()


def contents(body: bytes) -> list[str]:
    dec = NDJSONDecoder()
    objs = dec.feed(body) + dec.flush()
    return [o["message"]["content"] for o in objs]


def raw_exchange(fake: FakeOllama, payload: dict) -> bytes:
    """POST /api/chat over a bare socket (HTTP/1.1, Connection: close); every byte until EOF."""
    data = json.dumps(payload).encode()
    head = (f"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", fake.port), timeout=10) as sock:
        sock.sendall(head + data)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    return out


# -- Script validation ---------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [{"drip": 0}, {"drip": -1}, {"drip_for": -1}, {"hold_after_done": -0.5}])
def test_script_rejects_bad_wire_fault_values(kwargs):
    with pytest.raises(ValueError):
        Script(**kwargs)


def test_script_raw_must_be_bytes():
    with pytest.raises(TypeError, match="Script.raw must be bytes"):
        Script(raw="text")


# -- drip ------------------------------------------------------------------------------------


def test_drip_sends_headers_and_blank_lines_before_the_first_token(fake, http):
    fake.push(Script(tokens=("a",), drip=0.05, drip_for=60))
    with http.stream("POST", fake.url + "/api/chat", json=BODY) as r:
        assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
        first = next(r.iter_raw())
    assert first.strip(b"\n") == b""  # only keep-alive blank lines so far, no token
    assert fake.wait_for_disconnect()
    assert fake.chat_requests[0].tokens_sent == 0


def test_drip_for_a_while_then_the_reply(fake, http):
    fake.push(Script(tokens=("a", "b"), drip=0.01, drip_for=0.05))
    r = http.post(fake.url + "/api/chat", json=BODY)
    assert r.content.startswith(b"\n") and contents(r.content) == ["a", "b", ""]


def test_drip_bytes_sends_spaces_that_lead_the_first_line(fake, http):
    fake.push(Script(tokens=("a",), drip=0.01, drip_for=0.03, drip_bytes=True))
    r = http.post(fake.url + "/api/chat", json=BODY)
    assert r.content.startswith(b" ") and b"\n" not in r.content[: r.content.index(b"{")]
    assert contents(r.content) == ["a", ""]


@pytest.mark.parametrize("drip_bytes", [False, True], ids=["newlines", "spaces"])
def test_chat_through_a_dripping_server_keeps_the_reply(fake, client, drip_bytes):
    fake.push(Script(tokens=("Hi", " there"), drip=0.01, drip_for=0.05, drip_bytes=drip_bytes))
    stream = client.chat("hi", model="llama3.2", stream=True)
    list(stream)
    assert stream.text() == "Hi there" and len(stream.attempts) == 1


# -- hold_after_done -------------------------------------------------------------------------


def test_hold_after_done_keeps_the_body_open_after_the_done_chunk(fake, http):
    fake.push(Script(tokens=("a",), hold_after_done=60))
    with http.stream("POST", fake.url + "/api/chat", json=BODY) as r:
        dec = NDJSONDecoder()
        objs: list = []
        for piece in r.iter_raw():
            objs += dec.feed(piece)
            if objs and objs[-1]["done"]:
                break
        assert [o["message"]["content"] for o in objs] == ["a", ""]
        assert not fake.chat_requests[0].completed  # no terminating chunk yet
    assert fake.wait_for_disconnect()


def test_hold_after_done_then_ends_normally(fake, http):
    fake.push(Script(tokens=("a",), hold_after_done=0.05))
    r = http.post(fake.url + "/api/chat", json=BODY)
    assert contents(r.content) == ["a", ""]
    assert fake.chat_requests[0].completed


def test_chat_finishes_at_done_while_the_server_holds_the_body_open(fake, client):
    fake.push(Script(tokens=("Hi",), hold_after_done=60))
    reply = client.chat("hi", model="llama3.2")
    assert reply.text == "Hi" and reply.usage is not None and reply.usage.done_reason == "stop"


# -- gzip ------------------------------------------------------------------------------------


def test_gzip_compresses_the_stream(fake, http):
    fake.push(Script(tokens=("a", "b"), gzip=True))
    with http.stream("POST", fake.url + "/api/chat", json=BODY) as r:
        assert r.headers["content-encoding"] == "gzip" and r.headers["transfer-encoding"] == "chunked"
        raw = b"".join(r.iter_raw())
    assert contents(zlib.decompress(raw, 31)) == ["a", "b", ""]


def test_gzip_still_streams_chunk_by_chunk(fake, http):
    # The reply stalls after the first token: it must be readable before the stall ends.
    fake.push(Script(tokens=("first", "second"), gzip=True, stall_after=1, stall=60))
    inflate = zlib.decompressobj(31)
    text = b""
    with http.stream("POST", fake.url + "/api/chat", json=BODY) as r:
        for piece in r.iter_raw():
            text += inflate.decompress(piece)
            if text.endswith(b"\n"):
                break
    assert contents(text) == ["first"]
    assert fake.wait_for_disconnect()


def test_gzip_with_httpx_decoding(fake, http):
    fake.push(Script(tokens=("a",), gzip=True, error_after=1))
    r = http.post(fake.url + "/api/chat", json=BODY)
    assert [json.loads(x) for x in r.text.splitlines()][-1]["error"]


def test_chat_through_a_gzip_server_keeps_the_reply(fake, client):
    fake.push(Script(tokens=("Hi", " there"), gzip=True))
    assert client.chat("hi", model="llama3.2").text == "Hi there"


# -- http10 ----------------------------------------------------------------------------------


def test_http10_ends_the_body_by_closing(fake):
    fake.push(Script(tokens=("a", "b"), http10=True))
    data = raw_exchange(fake, BODY)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 OK\r\n")
    assert b"transfer-encoding" not in head.lower() and b"content-length" not in head.lower()
    assert contents(body) == ["a", "b", ""]
    assert fake.chat_requests[0].completed


def test_http10_with_gzip(fake, http):
    fake.push(Script(tokens=("a",), http10=True, gzip=True))
    r = http.post(fake.url + "/api/chat", json=BODY)
    assert r.http_version == "HTTP/1.0" and r.headers["content-encoding"] == "gzip"
    assert contents(r.content) == ["a", ""]


def test_http10_closes_the_connection_and_the_next_request_gets_a_new_one(fake, http):
    fake.push(Script(tokens=("a",), http10=True))
    assert contents(http.post(fake.url + "/api/chat", json=BODY).content) == ["a", ""]
    assert contents(http.post(fake.url + "/api/chat", json=BODY).content) == ["Hello", ",", " world", "!", ""]


def test_chat_through_an_http10_server_keeps_the_reply(fake, client):
    fake.push(Script(tokens=("Hi", " there"), http10=True))
    assert client.chat("hi", model="llama3.2").text == "Hi there"


# -- raw -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [b"", b"\x00\xff garbage \r\n", b'{"message":{"content":"x"},"done":false}\n{"done":true}\n', b"x" * 200_000],
    ids=["empty", "garbage", "ndjson", "big"],
)
def test_raw_body_is_sent_verbatim(fake, http, raw):
    fake.push(Script(raw=raw))
    with http.stream("POST", fake.url + "/api/chat", json=BODY) as r:
        assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
        assert r.headers["transfer-encoding"] == "chunked"
        body = b"".join(r.iter_raw())
    assert body == raw
    assert fake.chat_requests[0].completed


@pytest.mark.parametrize("shape", [{"gzip": True}, {"http10": True}, {"gzip": True, "http10": True}],
                         ids=["gzip", "http10", "both"])
def test_raw_body_with_other_wire_shapes(fake, http, shape):
    raw = b'{"message":{"content":"x"},"done":false}\n\xff\n'
    fake.push(Script(raw=raw, **shape))
    assert http.post(fake.url + "/api/chat", json=BODY).content == raw


def test_chat_through_a_raw_body(fake, client):
    fake.push(Script(raw=b'{"message":{"role":"assistant","content":"Hi"},"done":false}\n'
                         b'{"message":{"role":"assistant","content":""},"done":true,"done_reason":"stop"}\n'))
    assert client.chat("hi", model="llama3.2").text == "Hi"
