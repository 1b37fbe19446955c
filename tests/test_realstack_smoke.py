"""Smoke tests of scripts/realstack.py: real llama.cpp + Ollama-API front end on 127.0.0.1.

Skipped (with the reason) when the stack cannot be installed or started here; with
AICORTEX_REQUIRE_REAL=1 (as CI sets it) that is a failure instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

import pytest

import realstack  # scripts/ is on sys.path (tests/conftest.py)

QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


@pytest.fixture(scope="module")
def stack(realstack_installed):
    try:
        stacks = realstack.start_stacks(1)
    except realstack.StackUnavailable as exc:
        pytest.fail(f"real stack did not start: {exc.reason}", pytrace=False)
    try:
        yield stacks[0]
    finally:
        for s in stacks:
            s.stop()


def _chat(url: str, messages=QUESTION, **extra) -> list[dict]:
    with contextlib.closing(realstack.stream_chat(url, messages, options={"temperature": 0}, **extra)) as lines:
        return list(lines)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with contextlib.suppress(OSError):  # still in the table: fine only as a zombie
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    return True


@pytest.mark.real
@pytest.mark.timeout(300)
def test_version_and_tags(stack):
    assert stack.url.startswith("http://127.0.0.1:") and stack.backend_url.startswith("http://127.0.0.1:")
    status, body = realstack.http_get(stack.url + "/api/version")
    assert status == 200 and "version" in json.loads(body)
    status, body = realstack.http_get(stack.url + "/api/tags")
    assert status == 200
    names = [m["name"] for m in json.loads(body)["models"]]
    assert stack.model == "local/smollm2"
    assert stack.model in names  # listed exactly so, without ":latest"


@pytest.mark.real
@pytest.mark.timeout(300)
def test_streamed_chat(stack):
    lines = _chat(stack.url)
    content = [ln["message"]["content"] for ln in lines if not ln.get("done") and ln["message"]["content"]]
    assert len(content) >= 1
    assert lines[-1]["done"] is True and lines[-1]["done_reason"] == "stop"
    assert all(ln["done"] is False for ln in lines[:-1])
    assert "Paris" in "".join(content)


@pytest.mark.real
@pytest.mark.timeout(300)
def test_stacks_exit_stops_processes_and_backend_kill_is_an_error_line(realstack_installed):
    try:
        with realstack.Stacks(1) as stacks:
            s = stacks[0]
            pids = [s.front_pid, s.backend_pid]
            assert s.alive and all(not _gone(p) for p in pids)
            # SIGKILL of llama.cpp mid-stream: the front end ends its HTTP 200 stream
            # with an in-stream error line.
            out = []
            long_story = [{"role": "user", "content": "Write a long story about a cat."}]
            with contextlib.closing(realstack.stream_chat(s.url, long_story, options={"num_predict": 200})) as lines:
                for ln in lines:
                    out.append(ln)
                    if len(out) == 1:
                        s.kill_backend()
            assert out[0]["done"] is False
            assert out[-1]["done"] is True
            assert out[-1]["done_reason"] == "error" and out[-1]["error"] == "Connection error."
            assert not s.alive
    except realstack.StackUnavailable as exc:
        pytest.fail(f"real stack did not start: {exc.reason}", pytrace=False)
    assert all(_gone(p) for p in pids)
    assert not s.alive
