"""Test helpers for code that talks to Ollama: a scriptable fake server and dead addresses.

:class:`FakeOllama` is a real HTTP/1.1 server on ``127.0.0.1`` that answers
like Ollama v0.12.6+ (``/``, ``/api/version``, ``/api/tags``, ``/api/ps``,
``/api/show``, ``/api/chat``, ``/api/generate``, ``/api/embed``,
``/api/embeddings``, ``/api/pull``, ``/api/delete``, ``/api/copy``) and can be
told, request by request with a :class:`Script`, to fail the ways a real server fails: slow
first token, stalls, blackholes, HTTP errors, mid-stream error lines, dropped
or reset connections, streams that end without ``done``, garbage lines.
Every request is recorded as a :class:`RequestRecord`.

:func:`closed_port_url` gives a URL whose connects are refused;
:func:`blackhole_listener` gives one whose connects time out.

Example::

    import httpx
    from aicortex.testing import FakeOllama, Script

    with FakeOllama(models=["llama3.2"]) as fake:
        fake.push(Script(tokens=("Hel", "lo"), drop_after=1))
        body = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
        try:
            with httpx.stream("POST", fake.url + "/api/chat", json=body) as r:
                for line in r.iter_lines():
                    print(line)        # one chunk with "Hel", then the connection drops
        except httpx.RemoteProtocolError:
            pass
        with httpx.stream("POST", fake.url + "/api/chat", json=body) as r:
            print(list(r.iter_lines()))  # default script: "Hello", ",", " world", "!" then done
        assert fake.chat_requests[0].tokens_sent == 1
"""

from ._fake import FakeOllama
from ._net import blackhole_listener, closed_port_url
from ._wire import CHATML_TEMPLATE
from ._script import QUEUE_FULL_ERROR, RUNNER_STOPPED_ERROR, RequestRecord, Script, default_error

__all__ = [
    "FakeOllama",
    "Script",
    "RequestRecord",
    "closed_port_url",
    "blackhole_listener",
    "default_error",
    "RUNNER_STOPPED_ERROR",
    "QUEUE_FULL_ERROR",
    "CHATML_TEMPLATE",
]
