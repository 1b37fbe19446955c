"""The sans-IO protocol layer: NDJSON decoding at every byte boundary, chunk parsing, bodies."""

import json

import pytest

from aicortex import ConfigError, ProtocolError
from aicortex._protocol import (
    NDJSONDecoder,
    build_chat_body,
    build_messages,
    continuation_messages,
    error_text,
    model_key,
    parse_chunk,
    parse_ps,
    parse_tags,
    parse_version,
)

STREAM = (
    b'{"model":"m","created_at":"2025-10-26T17:15:24.097767Z","message":{"role":"assistant","content":"The"},"done":false}\n'
    b"\n"
    b'{"model":"m","created_at":"2025-10-26T17:15:24.1Z","message":{"role":"assistant","content":" caf\xc3\xa9 \\u003c/think\\u003e"},"done":false}\r\n'
    b'{"model":"m","created_at":"2025-10-26T17:15:24.5Z","message":{"role":"assistant","content":""},"done":true,'
    b'"done_reason":"stop","total_duration":4883583458,"load_duration":1334875,"prompt_eval_count":26,'
    b'"prompt_eval_duration":342546000,"eval_count":282,"eval_duration":4535599000}\n'
)


@pytest.mark.parametrize("step", [1, 2, 3, 7, 64, len(STREAM)])
def test_decoder_is_safe_at_every_byte_boundary(step):
    dec = NDJSONDecoder()
    objs = []
    for i in range(0, len(STREAM), step):
        objs.extend(dec.feed(STREAM[i : i + step]))
    objs.extend(dec.flush())
    assert [o["message"]["content"] for o in objs] == ["The", " café </think>", ""]
    assert objs[-1]["done"] is True


def test_decoder_flush_decodes_a_final_line_without_newline_and_rejects_a_truncated_one():
    dec = NDJSONDecoder()
    assert dec.feed(b'{"done":true}') == []
    assert dec.flush() == [{"done": True}]
    dec = NDJSONDecoder()
    dec.feed(b'{"message":{"content":"a"},"do')
    with pytest.raises(ProtocolError, match="truncated"):
        dec.flush()


def test_decoder_rejects_malformed_lines_and_non_objects():
    with pytest.raises(ProtocolError, match="malformed"):
        NDJSONDecoder(server="http://s:1").feed(b"not json\n")
    with pytest.raises(ProtocolError, match="not a JSON object"):
        NDJSONDecoder().feed(b"[1,2]\n")


def test_decoder_caps_line_length_even_without_a_newline():
    dec = NDJSONDecoder(max_line_bytes=100)
    dec.feed(b"x" * 60)
    with pytest.raises(ProtocolError, match="longer than 100 bytes"):
        dec.feed(b"x" * 60)
    with pytest.raises(ProtocolError, match="longer than 100 bytes"):
        NDJSONDecoder(max_line_bytes=100).feed(b'{"a":"' + b"x" * 200 + b'"}\n')


def test_parse_chunk_checks_error_first():
    chunk = parse_chunk({"done": True, "done_reason": "error", "error": "Connection error."})
    assert chunk.error == "Connection error." and not chunk.done


def test_parse_chunk_final_chunk_keeps_content_tool_calls_and_usage():
    call = {"id": "call_ab12cd34", "function": {"index": 0, "name": "f", "arguments": {"x": 1}}}
    chunk = parse_chunk(
        {"message": {"role": "assistant", "content": "tail", "tool_calls": [call]}, "done": True,
         "done_reason": "stop", "eval_count": 10, "eval_duration": 500_000_000}
    )
    assert chunk.content == "tail" and chunk.tool_calls == (call,) and chunk.done
    assert chunk.usage.eval_count == 10 and chunk.usage.done_reason == "stop"
    assert chunk.usage.tokens_per_second == pytest.approx(20.0)
    assert chunk.usage.prompt_eval_count is None  # omitted by Go's omitempty


def test_parse_chunk_thinking_and_malformed_shapes():
    assert parse_chunk({"message": {"content": "", "thinking": "hm"}, "done": False}).thinking == "hm"
    with pytest.raises(ProtocolError):
        parse_chunk({"model": "m"})
    with pytest.raises(ProtocolError):
        parse_chunk({"message": "text", "done": False})


def test_build_messages():
    assert build_messages("hi") == [{"role": "user", "content": "hi"}]
    assert build_messages("hi", system="be brief")[0] == {"role": "system", "content": "be brief"}
    msgs = [{"role": "User", "content": "q"}]
    assert build_messages(msgs) == [{"role": "user", "content": "q"}]
    for bad in ("", "   ", [], [{"content": "no role"}], [{"role": "robot", "content": "x"}], 42):
        with pytest.raises(ConfigError):
            build_messages(bad)


def test_chat_body_leaves_out_unset_fields():
    body = build_chat_body("m", [{"role": "user", "content": "q"}], options={"temperature": 0}, think=False)
    assert body == {"model": "m", "messages": [{"role": "user", "content": "q"}], "stream": True,
                    "options": {"temperature": 0}, "think": False}


def test_continuation_appends_a_trailing_assistant_message_or_extends_one():
    msgs = [{"role": "user", "content": "q"}]
    assert continuation_messages(msgs, "The sky")[-1] == {"role": "assistant", "content": "The sky"}
    assert msgs == [{"role": "user", "content": "q"}]  # not mutated
    prefilled = msgs + [{"role": "assistant", "content": "Answer: "}]
    out = continuation_messages(prefilled, "blue")
    assert len(out) == 2 and out[-1]["content"] == "Answer: blue"


def test_error_text_and_model_key():
    assert error_text(b'{"error":"model \'x\' not found"}') == "model 'x' not found"
    assert error_text(b"404 page not found") == "404 page not found"
    assert error_text(b"") == "(empty body)"
    assert model_key("llama3.2:latest") == model_key("llama3.2") == "llama3.2"
    assert model_key("llama3.2:1b") == "llama3.2:1b"


def test_parse_tags_ps_version():
    tags = {"models": [{"name": "llama3.2:latest", "model": "llama3.2:latest", "size": 2019393189,
                        "digest": "a80c", "details": {"family": "llama"}}]}
    (entry,) = parse_tags(json.dumps(tags).encode())
    assert entry.name == "llama3.2:latest" and entry.size == 2019393189 and entry.details["family"] == "llama"
    assert parse_tags(b'{"models":[]}') == []
    assert parse_ps(b'{"models":[{"name":"mistral:latest","model":"mistral:latest"}]}') == ["mistral:latest"]
    assert parse_version(b'{"version":"0.12.6"}') == "0.12.6"
    for bad in (b"<html>", b'{"models": 3}', b"[]"):
        with pytest.raises(ProtocolError):
            parse_tags(bad)
    with pytest.raises(ProtocolError):
        parse_version(b"{}")
