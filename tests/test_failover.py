"""The failover table: every kind, before and after output, under every mid-stream policy."""

import pytest

from aicortex import (
    BadRequest,
    ConnectError,
    ConnectTimeout,
    FirstTokenTimeout,
    HTTPStatusError,
    IncompleteStream,
    OllamaError,
    ProtocolError,
    ServerModelNotFound,
    StallTimeout,
)
from aicortex._failover import RULES, decide, failure_kind

S = "http://s:1"
CASES = [
    (ConnectError("refused", server=S), "connect", "server"),
    (ConnectTimeout("t", server=S), "connect_timeout", "server"),
    (FirstTokenTimeout("t", server=S), "first_token_timeout", "model"),
    (StallTimeout("t", server=S), "stall", "model"),
    (HTTPStatusError("x", server=S, status_code=500), "http_500", "model"),
    (HTTPStatusError("x", server=S, status_code=502), "http_5xx", "server"),
    (HTTPStatusError("x", server=S, status_code=503), "busy", "backoff"),
    (HTTPStatusError("x", server=S, status_code=429), "rate_limited", "backoff"),
    (HTTPStatusError("x", server=S, status_code=403), "http_4xx", "server"),
    (ServerModelNotFound("x", server=S, status_code=404), "model_not_found", "model"),
    (OllamaError("x", server=S), "error_line", "model"),
    (ProtocolError("x", server=S), "malformed", "server"),
    (IncompleteStream("x", server=S), "incomplete", "model"),
]


@pytest.mark.parametrize("error,kind,scope", CASES, ids=[c[1] for c in CASES])
def test_every_server_failure_fails_over(error, kind, scope):
    assert failure_kind(error) == kind
    before = decide(error, emitted=False)
    assert (before.action, before.resume, before.scope) == ("next", "fresh", scope)
    assert decide(error, emitted=True, policy="continue").resume == "continue"
    assert decide(error, emitted=True, policy="continue", can_continue=False).resume == "restart"
    assert decide(error, emitted=True, policy="restart").resume == "restart"
    assert decide(error, emitted=True, policy="raise").action == "raise"


def test_bad_request_is_raised_at_once_unless_our_prefill_caused_it():
    err = BadRequest("HTTP 400", server=S, status_code=400)
    assert decide(err, emitted=False).action == "raise"
    retry = decide(err, emitted=True, was_continuation=True)
    assert (retry.action, retry.resume) == ("next", "restart")


def test_every_rule_has_a_known_action_and_scope():
    for kind, rule in RULES.items():
        assert rule.before in ("next", "raise"), kind
        assert rule.scope in ("server", "model", "backoff", "none"), kind
