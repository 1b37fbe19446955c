"""The request flow driven directly, without sockets: each row gives what every effect
returns and the effects and events the flow must produce, in order."""

from __future__ import annotations

import json

import pytest

from aicortex import BadRequest, ConnectError, Server, Timeouts
from aicortex._flow import TIMED_OUT, Admit, Close, KnownPrefill, Learn, Open, Read, Record, Show, chat_flow, prefill_from_show
from aicortex._session import Candidate, ChatSession

A, B = "http://a:11434", "http://b:11434"


def line(content: str = "", done: bool = False, **extra: object) -> bytes:
    obj = {"model": "m", "message": {"role": "assistant", "content": content}, "done": done, **extra}
    return (json.dumps(obj) + "\n").encode()


WORDS = ["Knock", " knock", ".", " Who", "'s", " there", "?"]
DONE = line(done=True, done_reason="stop", eval_count=7, eval_duration=7_000_000)


def run(candidates, answers, *, policy="continue", timeouts=Timeouts()):
    """Drive the flow; ``answers[kind]`` is a list of results handed out in order for
    that effect kind. Returns (trace of effect names and event types, session, error)."""
    s = ChatSession(model="m", messages=[{"role": "user", "content": "hi"}], candidates=candidates, timeouts=timeouts, policy=policy)
    flow = chat_flow(s)
    trace: list[str] = []
    send = None
    error = None
    queues = {k: list(v) for k, v in answers.items()}
    while True:
        try:
            item = flow.send(send)
        except StopIteration:
            break
        except Exception as exc:  # the fatal error of the request
            error = exc
            break
        send = None
        if isinstance(item, list):
            trace += [e.type for e in item]
            continue
        if isinstance(item, Read):
            trace += [e.type for e in item.events]
        name = type(item).__name__
        trace.append(name if not isinstance(item, (Open, Close, Record, Learn)) else _detail(item))
        if isinstance(item, (Open, Read, Admit, KnownPrefill, Show)):
            send = queues[name].pop(0)
    return trace, s, error


def _detail(item):
    if isinstance(item, Open):
        return f"Open({item.plan.server[7:8]},{item.plan.mode})"
    if isinstance(item, Close):
        return f"Close({'drain' if item.drain else 'abort'})"
    if isinstance(item, Record):
        return f"Record({item.outcome.kind})"
    return f"Learn({item.value})"


def cands(*urls, state="closed"):
    return [Candidate(server=Server(url=u, name=u[7:8]), warm=True, state=state) for u in urls]


def test_a_reply_ends_with_record_then_end_then_a_drain():
    trace, s, error = run(cands(A), {"Open": [None], "Read": [line("Hi"), line(" there") + DONE]})
    assert error is None and s.text == "Hi there"
    assert trace == ["start", "Open(a,fresh)", "Read", "token", "Read", "token", "Record(success)", "end", "Close(drain)"]


def test_a_first_token_timeout_fails_over_before_any_output():
    trace, s, error = run(cands(A, B), {"Open": [None, None], "Read": [b"\n", TIMED_OUT, line("ok") + DONE]})
    assert error is None and s.text == "ok"
    assert trace[:6] == ["start", "Open(a,fresh)", "Read", "Read", "Record(failure)", "error"]
    assert "first-token timeout" in str(s.attempts[0].error)
    assert trace[6:9] == ["Close(abort)", "Open(b,fresh)", "Read"]


def test_a_held_half_open_trial_skips_the_server_and_says_so_when_none_is_left():
    trace, s, error = run(cands(A, state="half_open"), {"Admit": [False]})
    assert trace == ["start", "Admit"]
    assert "trial is held by another request" in str(error) and "all 0" not in str(error)


def test_a_continuation_asks_show_once_and_keeps_a_genuine_repeat():
    first = [line(w) for w in WORDS[:3]]
    second = [line(w) for w in (" Knock", " knock", ".")] + [line(w) for w in WORDS[3:]] + [DONE]
    trace, s, error = run(
        cands(A, B),
        {
            "Open": [None, None],
            "Read": first + [ConnectError("connection lost", server=A)] + second,
            "KnownPrefill": [None],
            "Show": [{"template": "{{ .Prompt }}"}],
        },
    )
    assert error is None
    assert s.text == "Knock knock. Knock knock. Who's there?"  # kept whole: this server continues
    assert "KnownPrefill" in trace and "Show" in trace and "Learn(True)" in trace
    assert trace.index("Learn(True)") < trace.index("Open(b,continue)")


def test_a_server_known_to_start_over_has_its_repeat_dropped():
    first = [line(w) for w in WORDS[:3]]
    again = [line(w) for w in WORDS] + [DONE]
    trace, s, error = run(
        cands(A, B),
        {"Open": [None, None], "Read": first + [ConnectError("lost", server=A)] + again, "KnownPrefill": [False]},
    )
    assert error is None and s.text == "Knock knock. Who's there?" and "Show" not in trace


def test_http_400_to_a_prefill_restarts_on_that_same_server():
    first = [line(w) for w in WORDS[:3]]
    trace, s, error = run(
        cands(A, B),
        {
            "Open": [None, BadRequest("HTTP 400: prefill", server=B, status_code=400), None],
            "Read": first + [ConnectError("lost", server=A)] + [line("".join(WORDS)) + DONE],
            "KnownPrefill": [True],
        },
    )
    assert error is None and s.text == "".join(WORDS)
    opens = [t for t in trace if t.startswith("Open")]
    assert opens == ["Open(a,fresh)", "Open(b,continue)", "Open(b,restart)"]


@pytest.mark.parametrize(
    "show, continues",
    [
        ({"renderer": "qwen3-coder", "template": ""}, True),
        ({"template": "{{- range $i, $_ := .Messages }}{{- $last := eq (len (slice $.Messages $i)) 1 }}..."}, True),
        ({"template": "{{ .System }} {{ .Prompt }}"}, True),
        ({"template": "{{- range .Messages }}<|im_start|>{{ .Role }}{{ .Content }}<|im_end|>{{ end }}"}, False),
        ({"template": "", "modelfile": "FROM x"}, True),
        (None, None),
        ({"template": 3}, None),
    ],
)
def test_prefill_knowledge_from_api_show(show, continues):
    assert prefill_from_show(show) is continues
