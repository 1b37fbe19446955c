"""Tools as Python functions: their Ollama tool schema, and running the calls a reply asks for.

``chat(..., tools=[get_weather])`` accepts plain functions beside Ollama tool dicts, as the
official client does: the schema (Ollama ``docs/api.md``, "Chat request with tools") is
built from the signature and the docstring (its first paragraph, and the ``Args:``
section for each parameter). ``run_tools=True`` runs the calls of each reply, sends the
results back as ``tool`` messages and asks again, until a reply has no tool call (or
``max_tool_rounds`` is reached). Pure except for calling the user's functions.
"""

from __future__ import annotations

import inspect
import json
import re
from typing import Any, Callable, Mapping, Sequence

from ._exceptions import ConfigError

__all__ = ["tool_schema", "prepare_tools", "run_tool_calls", "tool_content", "DEFAULT_TOOL_ROUNDS"]

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


def run_tool_calls(
    tool_calls: Sequence[Mapping[str, Any]], functions: Mapping[str, Callable[..., Any]]
) -> list[tuple[dict[str, Any], Any]]:
    """Run each call; ``[(tool message, result)]`` in order. A call of an unknown tool, or
    a function that raises, is answered with the error's text (the model can recover),
    never raised. A result that is not a ``str`` is sent as JSON (else ``str()``)."""
    out = []
    for call in tool_calls:
        fn_part = call.get("function") or {}
        name = fn_part.get("name")
        raw_args = fn_part.get("arguments")
        args: Mapping[str, Any] = raw_args if isinstance(raw_args, Mapping) else {}
        fn = functions.get(name) if isinstance(name, str) else None
        result: Any
        if fn is None:
            result = f"error: no tool named {name!r}"
        else:
            try:
                result = fn(**args)
            except Exception as exc:  # the user's function failed: the model is told why
                result = f"error: {type(exc).__name__}: {exc}"
        message: dict[str, Any] = {"role": "tool", "tool_name": name, "content": tool_content(result)}
        if call.get("id"):
            message["tool_call_id"] = call["id"]
        out.append((message, result))
    return out
