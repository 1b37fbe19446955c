"""Seeded fuzzing of hostile /api/chat byte streams: only AICortexError may come out.

A generator (``random.Random(seed)``, no new dependency) builds valid chat streams, then
mutates them: truncation, byte flips, deep nesting, huge numbers, NaN, wrong types for
message/content/done/tool_calls, non-object lines, escaped lone surrogates, invalid
UTF-8, ``\\r\\n``, lines near the 1 MiB cap, error lines, extra fields.

(a) the sans-IO path, NDJSONDecoder + parse_chunk, fed at random byte boundaries;
(b) the public path, ``Client.chat(..., stream=True)`` against one FakeOllama answering
    with ``Script(raw=...)``.
"""

from __future__ import annotations

import json
import random
import time
import traceback

import pytest

from aicortex import AICortexError, Client, ProtocolError, Registry, Timeouts
from aicortex._protocol import (
    MAX_LINE_BYTES,
    NDJSONDecoder,
    build_chat_body,
    continuation_messages,
    encode_body,
    iter_tool_calls,
    parse_chunk,
)
from aicortex.testing import FakeOllama, Script

SANS_IO_STREAMS = 6000
PUBLIC_STREAMS = 5000  # through Client.chat(stream=True), as the issue asks

_WORDS = ["The", " sky", " is", " blue", ".", " café", " 日本", " 🙂", " <b>", ' "q"', " \\", "\n", "\t", ""]
_WEIRD_NUMBERS = [
    "1e999", "-1e999", "NaN", "Infinity", "-Infinity", "1" + "0" * 400, "-1", "-0.0", "0.5", "true", "null",
    '"12"', "[]", "{}", "9223372036854775808", "1e308", "4300" + "9" * 4400,
]
_WRONG_VALUES = ["1", "true", "null", '"s"', "[]", "{}", "[1,2]", '[{"a":1}]', "1e999", "NaN", '{"content":1}']


def _token_obj(rng: random.Random) -> dict:
    msg: dict = {"role": "assistant", "content": "".join(rng.choice(_WORDS) for _ in range(rng.randint(0, 3)))}
    if rng.random() < 0.1:
        msg["thinking"] = rng.choice(_WORDS)
    return {"model": "m", "created_at": "2025-10-26T17:15:24.1Z", "message": msg, "done": False}


def _tool_obj(rng: random.Random) -> dict:
    call = {"id": "call_abcdefgh", "function": {"index": 0, "name": rng.choice(["f", "get_weather"]),
                                                  "arguments": {"city": rng.choice(_WORDS)}}}
    return {"model": "m", "created_at": "x", "message": {"role": "assistant", "content": "", "tool_calls": [call]},
            "done": False}


def _done_obj(rng: random.Random) -> dict:
    obj = {"model": "m", "created_at": "x", "message": {"role": "assistant", "content": ""}, "done": True,
           "done_reason": rng.choice(["stop", "length", ""])}
    for field in ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_count",
                  "eval_duration"):
        if rng.random() < 0.8:
            obj[field] = rng.randint(0, 10**10)
    return obj


def _line(obj: dict, rng: random.Random) -> bytes:
    return json.dumps(obj, ensure_ascii=rng.random() < 0.5, separators=(",", ":")).encode()


def _deep(rng: random.Random) -> bytes:
    depth = rng.choice([900, 2000, 50_000])
    kind = rng.randrange(3)
    if kind == 0:
        return b"[" * depth + b"]" * depth
    if kind == 1:
        return b'{"error":' + b"[" * depth + b"]" * depth + b"}"
    return b'{"message":{"content":"x","tool_calls":' + b"[" * depth + b"]" * depth + b'},"done":false}'


def _mutate_line(line: bytes, rng: random.Random) -> bytes:
    """One structural mutation of one JSON line."""
    kind = rng.randrange(14)
    if kind == 0:  # a number replaced by something hostile
        return line.replace(b":0", b":" + rng.choice(_WEIRD_NUMBERS).encode(), 1).replace(
            b'"eval_count":', b'"eval_count":' + rng.choice(_WEIRD_NUMBERS).encode() + b",\"x\":", 1)
    if kind == 1:  # wrong type for message / content / done / tool_calls / thinking
        field = rng.choice([b'"message":', b'"content":', b'"done":', b'"thinking":'])
        value = rng.choice(_WRONG_VALUES).encode()
        if field in line:
            return line.replace(field, field + value + b',"_was":', 1)
        return line[:-1] + b"," + field + value + b"}"
    if kind == 2:
        return b'{"message":{"role":"assistant","content":"","tool_calls":' + rng.choice(_WRONG_VALUES).encode() + b'},"done":' + rng.choice([b"false", b"true"]) + b"}"
    if kind == 3:  # non-object line
        return rng.choice([b"[1,2]", b'"text"', b"42", b"null", b"true", b"NaN", b"[]"])
    if kind == 4:  # escaped lone surrogates
        return line.replace(b'"content":"', b'"content":"' + rng.choice([b"\\ud800", b"\\udfff", b"a\\ud83d"]), 1)
    if kind == 5:  # invalid UTF-8
        pos = rng.randrange(len(line) + 1)
        return line[:pos] + rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80\x80", b"\xf8\x88\x80\x80\x80"]) + line[pos:]
    if kind == 6:  # error line
        return rng.choice([b'{"error":"model runner has unexpectedly stopped"}', b'{"error":{"message":"x"}}',
                           b'{"error":null,"done":true}', b'{"error":' + rng.choice(_WRONG_VALUES).encode() + b"}",
                           b'{"error":"boom","done":true,"done_reason":"stop"}'])
    if kind == 7:  # extra fields
        return line[:-1] + b',"extra":{"a":[1,2,{"b":null}]},"images":null,"logprobs":[]}'
    if kind == 8:
        return _deep(rng)
    if kind == 9:  # truncated line
        return line[: rng.randrange(len(line) + 1)]
    if kind == 10:  # done with odd usage, or done missing
        return line.replace(b'"done":false', rng.choice([b'"done":true', b'"done":null', b'"done":0']), 1)
    if kind == 11:  # duplicate keys / BOM / whitespace
        return rng.choice([b"\xef\xbb\xbf" + line, b"  " + line + b"  ", line[:-1] + b',"done":true}'])
    if kind == 12:  # control characters inside strings
        return line.replace(b'"content":"', b'"content":"\x00\x01\x1f', 1)
    return b"{}"


def make_stream(rng: random.Random) -> bytes:
    """One byte stream: a valid chat stream, usually mutated."""
    objs = [_token_obj(rng) for _ in range(rng.randint(0, 6))]
    if rng.random() < 0.15:
        objs.insert(rng.randint(0, len(objs)), _tool_obj(rng))
    if rng.random() < 0.9:
        objs.append(_done_obj(rng))
    lines = [_line(o, rng) for o in objs]
    for _ in range(rng.choice([0, 1, 1, 2, 3])):
        if lines and rng.random() < 0.7:
            i = rng.randrange(len(lines))
            lines[i] = _mutate_line(lines[i], rng)
        else:
            lines.insert(rng.randint(0, len(lines)), _mutate_line(_line(_token_obj(rng), rng), rng))
    if rng.random() < 0.05:  # a line near the cap (content of ~1 MiB)
        size = MAX_LINE_BYTES + rng.choice([-200, -60, -50, 0, 1, 100])
        head = b'{"message":{"role":"assistant","content":"'
        tail = b'"},"done":false}'
        lines.insert(rng.randint(0, len(lines)), head + b"y" * max(0, size - len(head) - len(tail)) + tail)
    if rng.random() < 0.05:
        lines.insert(rng.randint(0, len(lines)), b"")
    sep = b"\r\n" if rng.random() < 0.2 else b"\n"
    data = sep.join(lines) + (sep if rng.random() < 0.85 else b"")
    kind = rng.random()
    if kind < 0.1 and data:  # byte flips
        buf = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        data = bytes(buf)
    elif kind < 0.2 and data:  # truncation anywhere
        data = data[: rng.randrange(len(data))]
    elif kind < 0.23:  # pure noise
        data = bytes(rng.randrange(256) for _ in range(rng.randint(0, 300)))
    return data


def drive_sans_io(data: bytes, rng: random.Random) -> None:
    """Decode ``data`` at random boundaries as a client would; raise what the library raises."""
    dec = NDJSONDecoder(server="http://fuzz")
    text: list[str] = []
    pos = 0
    objs: list = []
    try:
        while pos < len(data):
            step = rng.choice([1, 2, 7, 64, 4096, 1 << 20])
            objs = dec.feed(data[pos : pos + step])
            pos += step
            for obj in objs:
                chunk = parse_chunk(obj, server="http://fuzz")
                text.append(chunk.content)
                for name, args in iter_tool_calls(chunk.tool_calls):
                    assert isinstance(name, str) and isinstance(dict(args), dict)
                if chunk.usage is not None:
                    rate = chunk.usage.tokens_per_second
                    assert rate is None or rate >= 0
            if dec.failed:
                raise dec.error  # type: ignore[misc]
        for obj in dec.flush():
            parse_chunk(obj, server="http://fuzz")
    finally:
        # What a server sent always goes back out as prefill without a foreign error.
        body = build_chat_body("m", continuation_messages([{"role": "user", "content": "q"}], "".join(text)))
        json.loads(encode_body(body))


def test_fuzz_sans_io_decoder_and_parser_raise_only_aicortex_errors():
    rng = random.Random(20251026)
    failures = []
    kinds = {"ok": 0, "protocol": 0}
    t0 = time.perf_counter()
    for i in range(SANS_IO_STREAMS):
        data = make_stream(rng)
        try:
            drive_sans_io(data, random.Random(i))
            kinds["ok"] += 1
        except ProtocolError as exc:
            assert exc.server == "http://fuzz"
            kinds["protocol"] += 1
        except AICortexError:
            kinds["protocol"] += 1
        except Exception:
            failures.append((i, data[:300], traceback.format_exc(limit=-3)))
    elapsed = time.perf_counter() - t0
    print(f"sans-IO: {SANS_IO_STREAMS} streams in {elapsed:.1f} s: {kinds}")
    assert not failures, "\n\n".join(f"stream {i}: {d!r}\n{tb}" for i, d, tb in failures[:5])
    assert kinds["ok"] > 500 and kinds["protocol"] > 500  # the generator makes both kinds


def test_fuzz_generator_is_deterministic():
    a = [make_stream(random.Random(7)) for _ in range(3)]
    b = [make_stream(random.Random(7)) for _ in range(3)]
    assert a == b


FUZZ_TIMEOUTS = Timeouts(connect=1, first_token=2, first_token_cold=2, stall=2)


def run_public(client: Client, fake: FakeOllama, data: bytes) -> str:
    """Stream one chat answered with ``data``; return what came out ("ok" or the error kind)."""
    fake.default_script = Script(raw=data)
    try:
        with client.chat("q", model="m", stream=True, servers=[fake.url]) as stream:
            for event in stream:
                assert event.type in ("start", "token", "thinking", "tool_call", "error", "meta", "reset", "end")
            stream.text()
            if stream.usage is not None:
                stream.usage.tokens_per_second
        return "ok"
    except AICortexError as exc:
        return type(exc).__name__


def test_fuzz_public_streaming_raises_only_aicortex_errors():
    rng = random.Random(1026)
    failures = []
    kinds: dict[str, int] = {}
    with FakeOllama(models=["m"]) as fake:
        registry = Registry.memory()
        registry.add(fake.url)
        with Client(registry, timeout=FUZZ_TIMEOUTS) as client:
            client.refresh()
            t0 = time.perf_counter()
            for i in range(PUBLIC_STREAMS):
                data = make_stream(rng)
                try:
                    kind = run_public(client, fake, data)
                except Exception:
                    failures.append((i, data, traceback.format_exc(limit=-4)))
                    kind = "FOREIGN"
                kinds[kind] = kinds.get(kind, 0) + 1
            elapsed = time.perf_counter() - t0
        registry.close()
        assert not fake.server_errors, fake.server_errors[:1]
    print(f"public: {PUBLIC_STREAMS} streams in {elapsed:.1f} s: {kinds}")
    assert not failures, "\n\n".join(f"stream {i}: {d[:400]!r}\n{tb}" for i, d, tb in failures[:5])
