"""Hostile server replies at the sans-IO protocol layer: every one is a ProtocolError
(or a harmless value), never a foreign exception, and good data is never lost."""

import json
import math
import time

import pytest

from aicortex import AICortexError, ConfigError, ProtocolError
from aicortex._models import Usage
from aicortex._protocol import (
    MAX_LINE_BYTES,
    NDJSONDecoder,
    error_text,
    parse_chunk,
    parse_ps,
    parse_tags,
    parse_version,
)

DEEP = 100_000  # far past the JSON parser's recursion limit

TOKEN = b'{"model":"m","created_at":"2025-10-26T17:15:24.1Z","message":{"role":"assistant","content":"%s"},"done":false}\n'
DONE = b'{"model":"m","created_at":"2025-10-26T17:15:24.5Z","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","eval_count":2,"eval_duration":1000}\n'


def deep_array(depth: int = DEEP) -> bytes:
    return b"[" * depth + b"]" * depth


# -- 1a. deep nesting --------------------------------------------------------------------


def test_decoder_deeply_nested_line_is_protocol_error():
    dec = NDJSONDecoder(server="http://s")
    with pytest.raises(ProtocolError, match="nested too deeply") as info:
        dec.feed(deep_array() + b"\n")
    assert info.value.server == "http://s"
    assert dec.failed


def test_decoder_deeply_nested_error_value_is_protocol_error():
    line = b'{"error": ' + deep_array() + b"}\n"
    with pytest.raises(ProtocolError):
        NDJSONDecoder().feed(line)


def test_decoder_deeply_nested_object_line_is_protocol_error():
    line = b'{"a":' * DEEP + b"1" + b"}" * DEEP + b"\n"
    with pytest.raises(ProtocolError):
        NDJSONDecoder().feed(line)


def test_decoder_flush_of_deeply_nested_tail_is_protocol_error():
    dec = NDJSONDecoder()
    assert dec.feed(deep_array()) == []
    with pytest.raises(ProtocolError):
        dec.flush()


def test_error_text_never_raises_on_deeply_nested_body():
    body = b'{"error": ' + deep_array() + b"}"
    text = error_text(body)
    assert isinstance(text, str) and text.startswith('{"error": [[[') and len(text) <= 500
    assert isinstance(error_text(deep_array()), str)


@pytest.mark.parametrize("parse", [parse_tags, parse_ps, parse_version])
def test_probe_reply_deeply_nested_is_protocol_error(parse):
    with pytest.raises(ProtocolError):
        parse(b'{"models": ' + deep_array() + b"}")
    with pytest.raises(ProtocolError):
        parse(deep_array())


# -- 1b. good lines before a bad line are delivered ----------------------------------------


@pytest.mark.parametrize(
    "bad",
    [b"not json", b"[1, 2]", b'{"message": {"content": "x"', b"\xff\xfe{}", deep_array(2000)],
    ids=["garbage", "array", "cut", "bad-utf8", "deep"],
)
def test_decoder_delivers_good_lines_before_a_bad_line_in_the_same_feed(bad):
    dec = NDJSONDecoder(server="http://s")
    data = TOKEN % b"a" + b"\n" + TOKEN % b"b" + bad + b"\n" + TOKEN % b"c"
    objs = dec.feed(data)
    assert [o["message"]["content"] for o in objs] == ["a", "b"]
    assert dec.failed and isinstance(dec.error, ProtocolError) and dec.error.server == "http://s"
    with pytest.raises(ProtocolError) as info:
        dec.feed(TOKEN % b"d")
    assert info.value is dec.error
    with pytest.raises(ProtocolError) as info:
        dec.flush()
    assert info.value is dec.error


def test_decoder_raises_at_once_when_no_good_line_precedes_the_bad_one():
    dec = NDJSONDecoder()
    assert dec.feed(TOKEN % b"a") == [{"model": "m", "created_at": "2025-10-26T17:15:24.1Z",
                                       "message": {"role": "assistant", "content": "a"}, "done": False}]
    assert not dec.failed and dec.error is None
    with pytest.raises(ProtocolError) as info:
        dec.feed(b"garbage\n" + TOKEN % b"b")
    assert dec.failed and info.value is dec.error


def test_decoder_delivers_good_lines_before_an_over_long_line():
    dec = NDJSONDecoder(max_line_bytes=200)
    objs = dec.feed(TOKEN % b"a" + b"x" * 300 + b"\n")
    assert len(objs) == 1 and dec.failed and "longer than 200 bytes" in str(dec.error)


def test_decoder_delivers_good_lines_before_an_over_long_unfinished_tail():
    dec = NDJSONDecoder(max_line_bytes=200)
    objs = dec.feed(TOKEN % b"a" + b"x" * 300)
    assert len(objs) == 1 and dec.failed
    with pytest.raises(ProtocolError, match="longer than 200"):
        dec.flush()


def test_decoder_running_length_of_an_unfinished_line_is_capped():
    dec = NDJSONDecoder(max_line_bytes=100)
    for _ in range(25):
        assert dec.feed(b"xxxx") == []
    with pytest.raises(ProtocolError, match="longer than 100 bytes"):
        dec.feed(b"x")


def test_decoder_line_of_exactly_the_cap_is_accepted():
    line = b'{"p":"' + b"x" * (MAX_LINE_BYTES - 8) + b'"}'
    assert len(line) == MAX_LINE_BYTES
    dec = NDJSONDecoder()
    for i in range(0, len(line), 65536):
        assert dec.feed(line[i : i + 65536]) == []
    assert len(dec.feed(b"\n")[0]["p"]) == MAX_LINE_BYTES - 8


# -- 1c. linear time -----------------------------------------------------------------------


def test_decoder_is_linear_in_tiny_pieces():
    # A 1 MiB line fed 2 bytes at a time: ~8 s of CPU with the old quadratic buffer
    # (``self._buf + data``), ~0.35 s now. CPU time of this thread only (not wall clock,
    # so a loaded machine does not break it), with a wide margin either way.
    content = b"x" * (MAX_LINE_BYTES - 64)
    line = b'{"message":{"role":"assistant","content":"' + content + b'"},"done":false}\n'
    dec = NDJSONDecoder()
    out = []
    t0 = time.thread_time()
    for i in range(0, len(line), 2):
        out += dec.feed(line[i : i + 2])
    cpu = time.thread_time() - t0
    assert len(out) == 1 and len(out[0]["message"]["content"]) == len(content)
    assert cpu < 2.5, f"{cpu:.2f} s of CPU for a 1 MiB line in 2-byte pieces"
