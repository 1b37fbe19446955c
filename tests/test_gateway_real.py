"""The gateway on real local inference servers (scripts/realstack.py), driven by the
official ``ollama`` client: the serving stack is SIGKILLed mid-reply and the client's
stream completes with no error. Marked ``real``: skipped with the reason where the stack
cannot be installed, failed instead when AICORTEX_REQUIRE_REAL=1 (CI)."""

from __future__ import annotations

import ollama
import pytest

from aicortex import Client, Registry
from aicortex.gateway import ServerThread, create_app

pytestmark = [pytest.mark.real, pytest.mark.timeout(300)]

MODEL = "local/smollm2"
STORY = "Write a short story about a lighthouse keeper who finds a message in a bottle."
OPTIONS = {"temperature": 0, "num_predict": 80}


def test_ollama_client_through_the_gateway_survives_a_sigkill_mid_reply(real_stacks):
    stacks = real_stacks(2)
    reg = Registry.memory()
    for i, s in enumerate(stacks):
        reg.add(s.url, name=f"stack{i}", priority=20 - 10 * i)  # stack0 serves first
    with ServerThread(create_app(reg, refresh_interval_s=None)) as gateway:
        client = ollama.Client(host=gateway.url)
        parts, partial, last = [], None, None
        try:
            for part in client.chat(model=MODEL, messages=[{"role": "user", "content": STORY}], stream=True, options=OPTIONS):
                last = part
                parts.append(part.message.content)
                if len(parts) == 10:
                    partial = "".join(parts)
                    stacks[0].kill_front()  # SIGKILL, mid-reply
        finally:
            client.close()
    text = "".join(parts)
    assert partial and last is not None and last.done is True  # completed, no error raised
    assert text.startswith(partial) and len(text) > len(partial)
    assert text.count(partial[:25]) == 1  # nothing repeated
    # greedy decoding continued from the prefill says what an unbroken run says
    with Client(Registry.memory()) as direct:
        direct.registry.add(stacks[1].url)
        reference = direct.chat(STORY, model=MODEL, options=OPTIONS).text
    assert text[:60] == reference[:60]
    reg.close()


def test_openai_client_through_the_gateway_survives_a_sigkill_mid_reply(real_stacks):
    import openai

    stacks = real_stacks(2)
    reg = Registry.memory()
    for i, s in enumerate(stacks):
        reg.add(s.url, name=f"stack{i}", priority=20 - 10 * i)
    with ServerThread(create_app(reg, refresh_interval_s=None)) as gateway:
        client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
        text, chunks, finish = "", 0, None
        try:
            for chunk in client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": STORY}], stream=True, temperature=0, max_tokens=80,
            ):
                for choice in chunk.choices:
                    text += choice.delta.content or ""
                    finish = choice.finish_reason or finish
                chunks += 1
                if chunks == 10:
                    partial = text
                    stacks[0].kill_front()  # SIGKILL, mid-reply
        finally:
            client.close()
    assert finish in ("stop", "length") and text.startswith(partial) and len(text) > len(partial)
    assert text.count(partial[:20]) == 1
    reg.close()
