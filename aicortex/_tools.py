"""Tools as Python functions: their Ollama tool schema, and running the calls a reply asks for.

``chat(..., tools=[get_weather])`` accepts plain functions beside Ollama tool dicts, as the
official client does: the schema (Ollama ``docs/api.md``, "Chat request with tools") is
built from the signature and the docstring (its first paragraph, and the ``Args:``
section for each parameter). ``run_tools=True`` runs the calls of each reply, sends the
results back as ``tool`` messages and asks again, until a reply has no tool call (or
``max_tool_rounds`` is reached).

The loop is one sans-IO flow, :func:`tool_loop_flow`, stepped by two drivers
(``_toolstream``: :class:`~aicortex._toolstream.ToolStream` for :class:`~aicortex.Client`,
:class:`~aicortex._toolstream.AsyncToolStream` for :class:`~aicortex.AsyncClient`), as
:func:`aicortex._flow.chat_flow` is: the flow decides (which round is the last, what each
call's result and tool message are, which events the caller sees), the drivers stream the
rounds and call the functions. ``stream=False`` reads the same stream to its end.
"""

from __future__ import annotations

import inspect
import json
import re
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable, Generator, Mapping, Sequence

from ._exceptions import ConfigError
from ._models import Attempt, Reply, StreamEvent
from ._protocol import iter_tool_calls

if TYPE_CHECKING:  # pragma: no cover
    from ._session import ChatSession

__all__ = [
    "tool_schema", "prepare_tools", "tool_content", "DEFAULT_TOOL_ROUNDS", "check_rounds",
    "AskRound", "RunTool", "ToolLoop", "tool_loop_flow",
]

#: Most rounds of tool calls ``run_tools=True`` runs before it returns the last reply.
DEFAULT_TOOL_ROUNDS = 8

_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object"}


def _json_type(annotation: Any) -> str:
    if isinstance(annotation, str):  # postponed annotations: "int", "list[str]"...
        base = annotation.split("[", 1)[0].strip()
        return {"str": "string", "int": "integer", "float": "number", "bool": "boolean", "list": "array", "dict": "object"}.get(base, "string")
    origin = getattr(annotation, "__origin__", annotation)
    return _JSON_TYPES.get(origin, "string")


def _arg_docs(doc: str) -> dict[str, str]:
    """``{name: description}`` from a Google-style ``Args:`` section."""
    out: dict[str, str] = {}
    section = re.split(r"\n\s*(?:Args|Arguments|Parameters):\s*\n", doc, maxsplit=1)
    if len(section) < 2:
        return out
    name = None
    for line in section[1].splitlines():
        if not line.strip():
            continue
        if re.match(r"^\s*(Returns|Raises|Yields|Example)s?:", line):
            break
        m = re.match(r"^\s*(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$", line)
        if m:
            name = m.group(1)
            out[name] = m.group(2).strip()
        elif name:
            out[name] = (out[name] + " " + line.strip()).strip()
    return out


def tool_schema(fn: Callable[..., Any]) -> dict[str, Any]:
    """The Ollama tool schema of a Python function: ``{"type": "function", "function":
    {"name", "description", "parameters": {"type": "object", "properties", "required"}}}``.

    Raises:
        ConfigError: ``fn`` takes ``*args``/``**kwargs`` (a tool's parameters must be named).
    """
    doc = inspect.getdoc(fn) or ""
    args = _arg_docs(doc)
    properties: dict[str, Any] = {}
    required = []
    for name, param in inspect.signature(fn).parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ConfigError(f"tool {fn.__name__}: *args/**kwargs cannot be described to a model; name every parameter")
        prop: dict[str, Any] = {"type": _json_type(param.annotation) if param.annotation is not param.empty else "string"}
        if name in args:
            prop["description"] = args[name]
        properties[name] = prop
        if param.default is param.empty:
            required.append(name)
    description = doc.split("\n\n", 1)[0].strip() if doc else fn.__name__
    return {
        "type": "function",
        "function": {
            "name": fn.__name__,
            "description": description,
            "parameters": {"type": "object", "properties": properties, "required": required},
        },
    }


def prepare_tools(
    tools: "Sequence[Mapping[str, Any] | Callable[..., Any]] | None",
) -> tuple[list[Mapping[str, Any]] | None, dict[str, Callable[..., Any]]]:
    """``(schemas for the request, {name: function})`` from ``tools=``: functions become
    schemas; dicts (Ollama's tool shape) go as they are.

    Raises:
        ConfigError: an entry that is neither.
    """
    if not tools:
        return None, {}
    schemas: list[Mapping[str, Any]] = []
    functions: dict[str, Callable[..., Any]] = {}
    for i, tool in enumerate(tools):
        if isinstance(tool, Mapping):
            schemas.append(tool)
        elif callable(tool):
            schemas.append(tool_schema(tool))
            functions[tool.__name__] = tool
        else:
            raise ConfigError(f"tools[{i}] is a {type(tool).__name__}: pass a function or an Ollama tool dict")
    return schemas, functions


def tool_content(result: Any) -> str:
    """A tool's result as the ``content`` of a tool message: a ``str`` as it is, else JSON
    (else ``str()``)."""
    if isinstance(result, str):
        return result
    try:
        return json.dumps(result)
    except (TypeError, ValueError):
        return str(result)


def check_rounds(max_tool_rounds: Any) -> int:
    """``max_tool_rounds`` as an ``int >= 0``.

    Raises:
        ConfigError: anything else (a bool, a float, a negative number).
    """
    if isinstance(max_tool_rounds, bool) or not isinstance(max_tool_rounds, int) or max_tool_rounds < 0:
        raise ConfigError(f"max_tool_rounds={max_tool_rounds!r}: pass a whole number >= 0 (default {DEFAULT_TOOL_ROUNDS})")
    return max_tool_rounds


# -- the loop: one sans-IO flow, two drivers ---------------------------------------------------------
class AskRound:
    """Run round ``number`` (1-based) of the loop: one chat with ``messages``. The driver
    hands each of the round's events to :meth:`ToolLoop.relay` (and the caller what it
    returns), then sends back the round's :class:`~aicortex.Reply`."""

    __slots__ = ("messages", "number")

    def __init__(self, messages: list[dict[str, Any]], number: int) -> None:
        self.messages, self.number = messages, number


class RunTool:
    """Call ``fn(**args)`` (the tool ``name``) and send back ``(True, value)``, or
    ``(False, exception)`` when it raised an ``Exception``. The async driver awaits an
    awaitable value; the sync driver refuses one."""

    __slots__ = ("fn", "args", "name")

    def __init__(self, fn: Callable[..., Any], args: Mapping[str, Any], name: str) -> None:
        self.fn, self.args, self.name = fn, args, name


class ToolLoop:
    """What a ``run_tools=True`` chat knows and decides, without I/O.

    Args:
        messages: the conversation to start from (Ollama messages).
        functions: ``{name: function}`` the model may call.
        max_rounds: most rounds whose tool calls are run; the reply after them is the
            last, tool calls or not.
        wall: Unix seconds (``time.time``), for the ``tool_result`` events.

    State the drivers and streams read: ``session`` (the current round's
    :class:`~aicortex._session.ChatSession`), ``number`` (the current round, 1-based),
    ``results`` (``Reply.tool_results`` so far), ``final`` (the loop's
    :class:`~aicortex.Reply` once the last round completed).
    """

    def __init__(
        self,
        messages: Sequence[Mapping[str, Any]],
        functions: Mapping[str, Callable[..., Any]],
        max_rounds: int,
        *,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.messages = [dict(m) for m in messages]
        self.functions = dict(functions)
        self.max_rounds = max_rounds
        self.number = 0
        self.results: list[dict[str, Any]] = []
        self.final: Reply | None = None
        self.session: "ChatSession | None" = None
        self._first: "ChatSession | None" = None
        self._before: tuple[Attempt, ...] = ()  # attempts of the rounds before the current one
        self._wall = wall

    # -- what the streams show -------------------------------------------------------------------
    def begin_round(self, session: "ChatSession") -> None:
        """The driver opened the next round's chat: its session becomes the current one."""
        if self.session is not None and self.session is not session:
            self._before += self.session.attempts
        if self._first is None:
            self._first = session
        self.session = session

    @property
    def attempts(self) -> tuple[Attempt, ...]:
        """Every round's attempts so far, in order (numbers restart at 1 each round)."""
        return self._before + (self.session.attempts if self.session is not None else ())

    @property
    def ttft_s(self) -> float | None:
        """Seconds from the first round's request to its first output (token, thinking
        or tool call): the loop's time to first token, as the caller sees it."""
        return self._first.ttft_s if self._first is not None else None

    def is_last(self, tool_calls: Sequence[Any]) -> bool:
        """The current round's reply ends the loop: it asks for no tool, or
        ``max_rounds`` rounds of calls were run already."""
        return not tool_calls or self.number > self.max_rounds

    def relay(self, event: StreamEvent, make_reply: Callable[[], Reply]) -> StreamEvent | None:
        """The event the caller sees for one event of the current round, or ``None``:

        * the ``start`` of round 2 and later becomes a ``meta`` event
          ``{"tool_round": n, "model", "candidates"}``: there is one ``start`` per loop;
        * the ``end`` of a round whose calls will be run is dropped; the last round's
          ``end`` completes the loop (``make_reply()`` gives that round's
          :class:`~aicortex.Reply`), with the loop's figures in its ``meta``:
          ``ttft_s`` (the first round's), ``attempts`` (every round's), ``tool_rounds``;
        * every other event is handed out as it is.
        """
        kind = event.type
        if kind == "start" and self.number > 1:
            return replace(event, type="meta", meta={"tool_round": self.number, **(event.meta or {})})
        if kind != "end":
            return event
        assert self.session is not None
        if not self.is_last(self.session.tool_calls):
            return None
        final = self.finish(make_reply())
        meta = {
            **(event.meta or {}),
            "ttft_s": final.ttft_s,
            "attempts": len(final.attempts),
            "tool_rounds": self.number - 1,
        }
        return replace(event, meta=meta)

    def finish(self, reply: Reply) -> Reply:
        """The loop's reply from its last round's: every round's attempts, the loop's
        TTFT and every tool result (the rest is the last round's). Sets :attr:`final`."""
        if self.final is None:
            self.final = replace(
                reply,
                attempts=self._before + reply.attempts,
                ttft_s=self.ttft_s if self._first is not None else reply.ttft_s,
                tool_results=tuple(self.results),
            )
        return self.final

    def ran(
        self, call: Mapping[str, Any], position: int, name: Any, args: Mapping[str, Any], result: Any, failed: bool
    ) -> tuple[dict[str, Any], StreamEvent]:
        """Record one call's result: ``(tool message, "tool_result" event)``. ``failed``:
        ``result`` is the text of an error (no such tool, or the function raised)."""
        content = tool_content(result)
        message: dict[str, Any] = {"role": "tool", "tool_name": name, "content": content}
        if call.get("id"):
            message["tool_call_id"] = call["id"]
        self.results.append({"name": name, "arguments": args, "id": call.get("id"), "result": result})
        fn = call.get("function") or {}
        index = fn.get("index", call.get("index")) if isinstance(fn, Mapping) else None
        meta: dict[str, Any] = {"index": position if index is None else index, "round": self.number}
        if call.get("id") is not None:
            meta["id"] = call["id"]
        if failed:
            meta["error"] = True
        s = self.session
        attempt = s.attempts[-1].number if s is not None and s.attempts else 1
        event = StreamEvent(
            "tool_result", content, tool_name=name, tool_args=args, tool_result=result, meta=meta,
            timestamp=self._wall(), server=s.server if s is not None else None, attempt=attempt,
        )
        return message, event


def tool_loop_flow(loop: ToolLoop) -> Generator[Any, Any, Reply]:
    """The rounds of a ``run_tools=True`` chat. Yields :class:`AskRound`,
    :class:`RunTool`, or a ``list`` of :class:`~aicortex.StreamEvent` (the
    ``tool_result`` events, to hand to the caller), and receives the round's ``Reply``
    / the call's ``(ok, value)`` through ``send()``. Returns the loop's final ``Reply``.

    Each round: ask with the conversation so far; if the reply is the last
    (:meth:`ToolLoop.is_last`), stop; else run its calls in order (an unknown tool name
    is answered with an error text, no call made), append the assistant message and one
    ``tool`` message per call, and ask again.
    """
    while True:
        loop.number += 1
        reply = yield AskRound(loop.messages, loop.number)
        calls = reply.tool_calls
        if loop.is_last(calls):
            return loop.finish(reply)
        tool_messages = []
        for position, call in enumerate(calls):
            name, args = next(iter(iter_tool_calls([call])), (None, {}))
            fn = loop.functions.get(name) if isinstance(name, str) else None
            if fn is None or not isinstance(name, str):
                result, failed = f"error: no tool named {name!r}", True
            else:
                ok, value = yield RunTool(fn, args, name)
                result, failed = (value, False) if ok else (f"error: {type(value).__name__}: {value}", True)
            message, event = loop.ran(call, position, name, args, result, failed)
            tool_messages.append(message)
            yield [event]
        loop.messages = [*loop.messages, dict(reply.message), *tool_messages]
