"""Hostile server replies at the sans-IO protocol layer: every one is a ProtocolError
(or a harmless value), never a foreign exception, and good data is never lost."""

import json
import math
import time

import pytest

from aicortex import AICortexError, ConfigError, ProtocolError
from aicortex._models import Usage
from aicortex._protocol import (
    MAX_DEPTH,
    MAX_LINE_BYTES,
    NDJSONDecoder,
    build_chat_body,
    continuation_messages,
    encode_body,
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


@pytest.mark.parametrize("line", [b"[" * 300, b'{"a":' * 300, b'{"message":{"content":"x","tool_calls":' + deep_array(300) + b"}}"],
                         ids=["open-arrays", "open-objects", "tool-calls"])
def test_decoder_rejects_nesting_past_max_depth_without_recursing(line, monkeypatch):
    # Found before json.loads recurses to the interpreter's limit (where a GC finalizer
    # running meanwhile fails too): json.loads is never called for such a line.
    import aicortex._protocol as protocol

    def loads(*args, **kwargs):
        raise AssertionError("json.loads called on a line nested past MAX_DEPTH")

    monkeypatch.setattr(protocol.json, "loads", loads)
    with pytest.raises(ProtocolError, match=f"over {MAX_DEPTH} levels"):
        NDJSONDecoder().feed(line + b"\n")
    with pytest.raises(ProtocolError):
        d = NDJSONDecoder()
        d.feed(line)
        d.flush()
    assert error_text(b'{"error":' + line) .startswith('{"error":')
    with pytest.raises(ProtocolError, match="nested too deeply"):
        parse_version(line)


def test_decoder_accepts_nesting_up_to_max_depth_and_brackets_inside_strings():
    args = b"[" * (MAX_DEPTH - 6) + b"]" * (MAX_DEPTH - 6)  # 6 levels around it: exactly MAX_DEPTH
    line = b'{"message":{"content":"' + b"[{" * 5000 + b'\\"[","tool_calls":[{"function":{"name":"f","arguments":{"a":' + args + b'}}}]},"done":false}\n'
    [obj] = NDJSONDecoder().feed(line)
    assert obj["message"]["content"].startswith("[{[{")
    many = b'{"message":{"content":""},"x":[' + b",".join([b"[1]"] * 5000) + b"]}\n"
    assert len(NDJSONDecoder().feed(many)[0]["x"]) == 5000


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


# -- 2. usage figures and model sizes ---------------------------------------------------------

HOSTILE_NUMBERS = [b"1e999", b"-1e999", b"NaN", b"Infinity", b"-Infinity", b"1" + b"0" * 400, b"-5", b"-0.5",
                   b"true", b"false", b'"12"', b"[1]", b"{}", b"9223372036854775808", b"9.3e18"]


@pytest.mark.parametrize("value", HOSTILE_NUMBERS, ids=lambda v: v.decode()[:12])
def test_done_chunk_with_hostile_usage_numbers_never_raises(value):
    line = (b'{"message":{"role":"assistant","content":""},"done":true,"done_reason":"stop",'
            b'"eval_count":%s,"eval_duration":%s,"prompt_eval_count":%s,"total_duration":%s,'
            b'"load_duration":%s,"prompt_eval_duration":%s}\n' % ((value,) * 6))
    [obj] = NDJSONDecoder().feed(line)
    usage = parse_chunk(obj).usage
    assert usage is not None and usage.done_reason == "stop"
    assert usage.eval_count is None and usage.eval_duration_ns is None and usage.total_duration_ns is None
    assert usage.tokens_per_second is None


def test_done_chunk_keeps_valid_usage_numbers():
    [obj] = NDJSONDecoder().feed(b'{"done":true,"eval_count":282,"eval_duration":4535599000.0,'
                                 b'"prompt_eval_count":0,"total_duration":9223372036854775807}\n')
    usage = parse_chunk(obj).usage
    assert (usage.eval_count, usage.eval_duration_ns, usage.prompt_eval_count) == (282, 4535599000, 0)
    assert usage.total_duration_ns == 2**63 - 1
    assert usage.tokens_per_second == pytest.approx(282 / 4.535599)


@pytest.mark.parametrize(
    "count, duration",
    [(10**400, 1), (1, 10**400), (math.inf, 1), (math.nan, 1), (1, math.nan), (-1, 5), (5, -1), ("5", 1), (True, 1),
     (1e308, 1e-300)],
    ids=lambda v: repr(v)[:12],
)
def test_usage_tokens_per_second_never_raises(count, duration):
    rate = Usage(eval_count=count, eval_duration_ns=duration).tokens_per_second
    assert rate is None or (isinstance(rate, float) and math.isfinite(rate))


@pytest.mark.parametrize("size", HOSTILE_NUMBERS, ids=lambda v: v.decode()[:12])
def test_parse_tags_hostile_size_is_zero(size):
    [entry] = parse_tags(b'{"models":[{"name":"m:latest","size":%s,"digest":"abc"}]}' % size)
    assert entry.size == 0 and entry.name == "m:latest" and entry.digest == "abc"


def test_parse_tags_keeps_flat_details_and_drops_nested_or_non_finite_ones():
    body = (b'{"models":[{"name":"m","size":42,"digest":[1],"modified_at":{"x":1},"details":{"family":"llama",'
            b'"families":["llama"],"parameter_size":"3B","n":1,"bad":NaN,"deep":' + deep_array(100) + b"}}]}")
    [entry] = parse_tags(body)
    assert entry.size == 42 and entry.digest == "" and entry.modified_at == ""
    assert entry.details == {"family": "llama", "families": ["llama"], "parameter_size": "3B", "n": 1}
    json.dumps(dict(entry.details), allow_nan=False)  # storable as the registry stores it


# -- parse_chunk: wrong types are ProtocolErrors, never foreign exceptions ------------------------


@pytest.mark.parametrize(
    "obj",
    [
        {"message": {"content": "x", "tool_calls": [1]}, "done": False},
        {"message": {"content": "x", "tool_calls": [{"function": "f"}]}, "done": False},
        {"message": {"content": "x", "tool_calls": [{"function": {"name": 3}}]}, "done": False},
        {"message": {"content": "x", "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}, "done": False},
        {"message": {"content": "x", "tool_calls": {"function": {"name": "f"}}}, "done": False},
        {"message": {"content": 5}, "done": False},
        {"message": "hi", "done": False},
        {"message": {"content": "x"}, "done": "yes"},
        {"model": "m"},
    ],
)
def test_parse_chunk_wrong_types_are_protocol_errors(obj):
    with pytest.raises(ProtocolError):
        parse_chunk(obj, server="http://s")


def test_parse_chunk_accepts_ollama_tool_call_shapes():
    call = {"id": "call_k3j2h1g0", "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}}
    chunk = parse_chunk({"message": {"role": "assistant", "content": "", "tool_calls": [call, {"function": {"name": "f"}}]},
                         "done": False})
    assert chunk.tool_calls == (call, {"function": {"name": "f"}})


def test_parse_chunk_error_value_that_is_not_a_string_never_raises():
    [obj] = NDJSONDecoder().feed(b'{"error": {"message": "boom", "code": 1}}\n')
    assert parse_chunk(obj).error == '{"message": "boom", "code": 1}'
    nested: list = []
    for _ in range(5000):  # deeper than the JSON encoder (and repr) can follow
        nested = [nested]
    assert parse_chunk({"error": nested}).error == "<list>"


def test_parse_chunk_error_message_of_an_unencodable_chunk_never_raises():
    nested: dict = {}
    for _ in range(5000):
        nested = {"a": nested}
    with pytest.raises(ProtocolError, match="without message or done"):
        parse_chunk(nested)


# -- 3. request bodies ----------------------------------------------------------------------


def test_encode_body_is_compact_utf8_json():
    body = build_chat_body("m", [{"role": "user", "content": "café ☕"}], options={"temperature": 0.5})
    data = encode_body(body)
    assert data == json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    assert "café ☕".encode() in data and json.loads(data) == body


def test_encode_body_lone_surrogate_falls_back_to_ascii_escapes():
    # A server sent the token "\ud800"; it comes back as prefill. UTF-8 cannot carry it.
    body = build_chat_body("m", continuation_messages([{"role": "user", "content": "é"}], "ab\ud800"))
    data = encode_body(body)
    assert data.isascii() and b"\\ud800" in data and b"\\u00e9" in data
    assert json.loads(data) == body


def test_encode_body_encodes_non_dict_mappings():
    from types import MappingProxyType

    body = {"model": "m", "format": MappingProxyType({"type": "object"}), "tools": (MappingProxyType({"a": 1}),)}
    assert json.loads(encode_body(body)) == {"model": "m", "format": {"type": "object"}, "tools": [{"a": 1}]}


@pytest.mark.parametrize(
    "options, field, advice",
    [
        ({"x": object()}, "options.x", "JSON cannot carry"),
        ({"stop": {"a", "b"}}, "options.stop", "pass a list"),
        ({"temperature": math.nan}, "options.temperature", "finite number"),
        ({"temperature": math.inf}, "options.temperature", "finite number"),
        ({"stop": ["a", b"b"]}, "options.stop[1]", "JSON cannot carry"),
        ({(1, 2): 3}, "options", "use str keys"),
    ],
    ids=["object", "set", "nan", "inf", "bytes", "tuple-key"],
)
def test_encode_body_unencodable_caller_input_is_config_error_naming_the_field(options, field, advice):
    body = build_chat_body("m", [{"role": "user", "content": "hi"}], options=options)
    with pytest.raises(ConfigError) as info:
        encode_body(body)
    assert field in str(info.value) and advice in str(info.value)


def test_encode_body_circular_or_too_deep_input_is_config_error():
    loop: dict = {}
    loop["self"] = loop
    with pytest.raises(ConfigError, match="refers back to itself"):
        encode_body({"model": "m", "options": loop})
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(ConfigError, match="nested too deeply"):
        encode_body({"model": "m", "format": deep})


def test_encode_body_shared_values_are_not_mistaken_for_cycles():
    shared = {"type": "function", "function": {"name": "f"}}
    body = {"model": "m", "tools": [shared, shared], "options": {"seed": math.nan}}
    with pytest.raises(ConfigError, match="options.seed is nan"):
        encode_body(body)
