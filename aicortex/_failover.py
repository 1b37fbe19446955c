"""What to do after each failure: one table, pure.

A failed attempt is classified into a failure *kind* (the ``kind`` of the
:class:`~aicortex.ServerError`, refined by HTTP status) and a *phase*: ``"before"`` the
caller got any output from this request, or ``"after"`` it did. The table maps
``kind -> Rule(action before, breaker scope)``; after output, every failover action
becomes the caller's mid-stream policy (``continue``, ``restart`` or ``raise``).

=====================  ===========  ==========================================
kind                   before       breaker scope (what is penalised)
=====================  ===========  ==========================================
connect                next         server   refused, reset, connection lost
connect_timeout        next         server
first_token_timeout    next         model    silent server or slow (cold) model
stall                  next         model    the reply stopped flowing
http_5xx               next         server   502/504...: a proxy or gateway failed
http_500               next         model    load failure, runner crash
busy                   next         backoff  503 server busy: short backoff, no trip
rate_limited           next         backoff  429
model_not_found        next         model    404 {"error": "model 'x' not found"}
http_4xx               next         server   401/403/405, a plain-text 404 (old server)
bad_request            raise        none     400: the caller's mistake, raised at once
error_line             next         model    {"error": ...} inside a 200 stream
malformed              next         server   a line that is not JSON, a line too long
incomplete             next         model    the stream ended without done: true
pool                   next         none     our own connection pool was full
=====================  ===========  ==========================================

A ``bad_request`` on a *continuation* attempt is not the caller's mistake (the server
refused our prefill), so it fails over and the reply restarts instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ._exceptions import AICortexError, HTTPStatusError

__all__ = ["MidstreamPolicy", "MIDSTREAM_POLICIES", "Rule", "Decision", "RULES", "failure_kind", "decide"]

MidstreamPolicy = Literal["continue", "restart", "raise"]
MIDSTREAM_POLICIES: tuple[str, ...] = ("continue", "restart", "raise")

Scope = Literal["server", "model", "backoff", "none"]


@dataclass(frozen=True)
class Rule:
    """One row of the table: fail over (``next``) or ``raise``, and what to penalise."""

    before: Literal["next", "raise"]
    scope: Scope


RULES: dict[str, Rule] = {
    "connect": Rule("next", "server"),
    "connect_timeout": Rule("next", "server"),
    "timeout": Rule("next", "server"),
    "first_token_timeout": Rule("next", "model"),
    "stall": Rule("next", "model"),
    "http_5xx": Rule("next", "server"),
    "http_500": Rule("next", "model"),
    "busy": Rule("next", "backoff"),
    "rate_limited": Rule("next", "backoff"),
    "model_not_found": Rule("next", "model"),
    "http_4xx": Rule("next", "server"),
    "bad_request": Rule("raise", "none"),
    "error_line": Rule("next", "model"),
    "malformed": Rule("next", "server"),
    "incomplete": Rule("next", "model"),
    "server_error": Rule("next", "server"),
    "deadline": Rule("raise", "none"),
    "pool": Rule("next", "none"),
}


@dataclass(frozen=True)
class Decision:
    """What the engine does next.

    Fields:
        action: ``"next"`` (try the next candidate) or ``"raise"`` (end the request with
            this error).
        resume: how the next attempt starts: ``"fresh"`` (nothing was emitted),
            ``"restart"`` (discard the partial reply) or ``"continue"`` (prefill it).
        scope: what the health bookkeeping penalises (see the module table).
        kind: the failure kind the decision was made for.
    """

    action: Literal["next", "raise"]
    resume: Literal["fresh", "restart", "continue"]
    scope: Scope
    kind: str


def failure_kind(error: AICortexError) -> str:
    """The table's kind for an error: the error's ``kind``, refined by HTTP status."""
    if isinstance(error, HTTPStatusError) and error.kind == "http_status":
        code = error.status_code
        if code == 503:
            return "busy"
        if code == 429:
            return "rate_limited"
        if code == 500:
            return "http_500"
        if code >= 500:
            return "http_5xx"
        return "http_4xx"
    return getattr(error, "kind", "server_error")


def decide(
    error: AICortexError,
    *,
    emitted: bool,
    policy: MidstreamPolicy = "continue",
    can_continue: bool = True,
    was_continuation: bool = False,
) -> Decision:
    """Look up what to do after ``error``.

    Args:
        error: what ended the attempt.
        emitted: the caller already received output (token, thinking or tool call).
        policy: the mid-stream policy for failures after output.
        can_continue: a continuation is possible (no tool call emitted, no ``format``).
        was_continuation: the failed attempt was itself a continuation (prefill).
    """
    kind = failure_kind(error)
    rule = RULES.get(kind, RULES["server_error"])
    if kind == "bad_request" and was_continuation:
        return Decision("next", "restart", "none", kind)
    if rule.before == "raise":
        return Decision("raise", "fresh", rule.scope, kind)
    if not emitted:
        return Decision("next", "fresh", rule.scope, kind)
    if policy == "raise":
        return Decision("raise", "fresh", rule.scope, kind)
    if policy == "continue" and can_continue:
        return Decision("next", "continue", rule.scope, kind)
    return Decision("next", "restart", rule.scope, kind)
