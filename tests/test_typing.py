"""Typing as users' type checkers see it: `mypy --strict` on code that uses aicortex."""

from __future__ import annotations

import textwrap

import pytest

mypy_api = pytest.importorskip("mypy.api", reason="mypy is in the test extras")

GOOD = textwrap.dedent('''
    from aicortex import AsyncClient, AsyncStream, Client, Registry, Reply, Stream, Timeouts

    def sync(reg: Registry) -> str:
        with Client(reg, timeout=Timeouts(connect=1.0)) as client:
            reply: Reply = client.chat("hi", model="m")
            stream: Stream = client.chat("hi", model="m", stream=True)
            return reply.text + stream.text()

    async def run() -> str:
        async with AsyncClient("http://127.0.0.1:11434") as client:
            reply = await client.chat("hi", model="m")
            return str(reply)
''')

BAD = textwrap.dedent('''
    from aicortex import Client, chat

    def f(client: Client) -> None:
        client.chat("hi", model="m", bogus=1)
        client.chat(123, model="m")
        chat("hi", modle="m")
''')


def _mypy(tmp_path, source):
    path = tmp_path / "user_code.py"
    path.write_text(source)
    out, err, status = mypy_api.run(["--strict", "--no-incremental", "--follow-imports=silent", str(path)])
    return out, status


def test_a_users_code_type_checks_with_registry_and_both_clients(tmp_path):
    out, status = _mypy(tmp_path, GOOD)
    assert status == 0, out


def test_chat_rejects_unknown_keywords_and_wrong_prompt_types(tmp_path):
    out, status = _mypy(tmp_path, BAD)
    assert status == 1
    assert 'Unexpected keyword argument "bogus"' in out
    assert 'Unexpected keyword argument "modle"' in out
    assert '"int"' in out  # the prompt of type int
