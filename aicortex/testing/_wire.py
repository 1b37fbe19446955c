"""Byte-level helpers shared by FakeOllama: Go-style JSON, timestamps, model shapes.

Everything here mirrors what a real Ollama (Go ``encoding/json``, gin) puts on
the wire; see the protocol notes §1.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import string
import struct
import time
from typing import Any, Iterable, Mapping

__all__ = [
    "go_json",
    "rfc3339",
    "listed_name",
    "same_model",
    "model_entry",
    "ps_entry",
    "show_response",
    "CHATML_TEMPLATE",
    "is_zero_keep_alive",
    "tool_call_id",
    "go_json_error",
    "find_model",
    "shape_tool_calls",
    "raw_embedding",
    "normalize",
    "f32",
    "go_quote",
    "pull_layers",
    "token_estimate",
]

_GO_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_GO_ESCAPE_RE = re.compile("[<>&\u2028\u2029]")


def go_json(obj: Any) -> bytes:
    """Encode ``obj`` like Go's ``json.Marshal``: compact, UTF-8, HTML characters escaped.

    Dict key order is kept (Go emits struct fields in declaration order).
    """
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    # <, >, & and U+2028/9 can only occur inside JSON strings, so a blanket replace is safe.
    text = _GO_ESCAPE_RE.sub(lambda m: _GO_ESCAPES[m.group(0)], text)
    return text.encode("utf-8", "replace")


def go_json_error(exc: json.JSONDecodeError) -> str:
    """An error text shaped like Go's ``encoding/json`` syntax errors."""
    if exc.pos >= len(exc.doc):
        return "unexpected EOF"
    where = "after top-level value" if exc.msg.startswith("Extra data") else "looking for beginning of value"
    return f"invalid character {exc.doc[exc.pos]!r} {where}"


def rfc3339(ns: int | None = None) -> str:
    """RFC 3339 UTC time with nanoseconds, trailing zeros trimmed, ``Z`` suffix (Go RFC3339Nano)."""
    ns = time.time_ns() if ns is None else ns
    sec, frac = divmod(ns, 1_000_000_000)
    out = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    if frac:
        out += "." + f"{frac:09d}".rstrip("0")
    return out + "Z"


def listed_name(name: str) -> str:
    """How /api/tags lists ``name``: ``llama3.2`` -> ``llama3.2:latest``; names with a tag or ``/`` unchanged."""
    if ":" in name or "/" in name:
        return name
    return f"{name}:latest"


def _strip_latest(name: str) -> str:
    return name[: -len(":latest")] if name.endswith(":latest") else name


def same_model(a: str, b: str) -> bool:
    """True if two model names are the same, ``:latest`` being optional on either side."""
    return _strip_latest(a) == _strip_latest(b)


def find_model(name: str, names: Iterable[str]) -> str | None:
    """The listed name in ``names`` matching ``name``, or None."""
    for candidate in names:
        if same_model(name, candidate):
            return listed_name(candidate)
    return None


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode("utf-8")).hexdigest()


def _size(name: str) -> int:
    return 500_000_000 + int(_digest(name)[:8], 16) % 4_000_000_000


def _details(name: str) -> dict[str, Any]:
    base = name.rsplit("/", 1)[-1]
    stem, _, tag = base.partition(":")
    m = re.match(r"[a-z]+", stem.lower())
    family = m.group(0) if m else "llama"
    m = re.search(r"(\d+(?:\.\d+)?)b", tag.lower())
    parameter_size = f"{float(m.group(1)):.1f}B" if m else "3.2B"
    return {
        "parent_model": "",
        "format": "gguf",
        "family": family,
        "families": [family],
        "parameter_size": parameter_size,
        "quantization_level": "Q4_K_M",
    }


def model_entry(name: str, modified_at: str) -> dict[str, Any]:
    """One ``/api/tags`` entry (§1.3); ``digest`` is the sha256 of the listed name."""
    name = listed_name(name)
    return {
        "name": name,
        "model": name,
        "modified_at": modified_at,
        "size": _size(name),
        "digest": _digest(name),
        "details": _details(name),
    }


def ps_entry(name: str, expires_at: str, context_length: int = 4096) -> dict[str, Any]:
    """One ``/api/ps`` entry (§1.4)."""
    name = listed_name(name)
    size = _size(name)
    return {
        "name": name,
        "model": name,
        "size": size,
        "digest": _digest(name),
        "details": _details(name),
        "expires_at": expires_at,
        "size_vram": size,
        "context_length": context_length,
    }


#: A ChatML-style fallback template: it closes every turn, so a trailing assistant
#: message is not continued (ollama-protocol §4.1).
CHATML_TEMPLATE = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
)


def show_response(name: str, modified_at: str, template: str = "{{ .Prompt }}") -> dict[str, Any]:
    """A minimal ``/api/show`` reply (§1.6); ``model_info`` is always present."""
    name = listed_name(name)
    details = _details(name)
    return {
        "modelfile": f"# Modelfile generated by \"ollama show\"\nFROM {name}\nTEMPLATE \"{template}\"\n",
        "parameters": 'stop "<|eot_id|>"',
        "template": template,
        "details": details,
        "model_info": {
            "general.architecture": details["family"],
            "general.parameter_count": _size(name) * 2,
            f"{details['family']}.context_length": 131072,
        },
        "capabilities": ["completion", "tools"],
        "modified_at": modified_at,
    }


def is_zero_keep_alive(value: Any) -> bool:
    """True for a ``keep_alive`` that unloads at once (0, "0", "0s", "0m", ...)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return value == 0
    if isinstance(value, str):
        return re.fullmatch(r"\s*0+(\.0*)?(ns|us|µs|ms|s|m|h)?\s*", value) is not None
    return False


def tool_call_id() -> str:
    """A fresh tool call id, ``"call_"`` + 8 characters of ``[a-z0-9]`` (Ollama v0.12.10+)."""
    return "call_" + "".join(random.choices(string.ascii_lowercase + string.digits, k=8))


def shape_tool_calls(calls: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Ollama-shaped tool calls: ``{"id":..., "function":{"index":i,"name":...,"arguments":{...}}}``."""
    out = []
    for i, call in enumerate(calls):
        fn = call.get("function", call)
        args = fn.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except ValueError:
                pass
        out.append(
            {
                "id": call.get("id") or tool_call_id(),
                "function": {"index": fn.get("index", i), "name": fn.get("name", ""), "arguments": args},
            }
        )
    return out


def token_estimate(text: str) -> int:
    """A rough token count for ``text``: about 4 characters per token, at least 1."""
    return max(1, (len(text) + 3) // 4)


def f32(x: float) -> float:
    """``x`` as the nearest float32, returned as the Python float with the shortest decimal
    text that reads back as that float32, so ``json.dumps`` prints what Go prints for a
    ``float32`` (``0.1``, not ``0.10000000149011612``)."""
    exact: float = struct.unpack("<f", struct.pack("<f", x))[0]
    for digits in range(1, 10):
        short = float(f"{exact:.{digits}g}")
        if struct.unpack("<f", struct.pack("<f", short))[0] == exact:
            return short
    return exact


def raw_embedding(text: str, dim: int) -> list[float]:
    """A deterministic, un-normalized embedding of ``text`` (float32 values, each of
    magnitude 0.01..1), the same on every FakeOllama: sha256 of the text, stretched.

    The floor of 0.01 keeps every normalized component of vectors up to several
    thousand dimensions at or above 1e-4, where Python and Go print floats alike.
    """
    out: list[float] = []
    block = 0
    while len(out) < dim:
        digest = hashlib.sha256(f"{block}:{text}".encode("utf-8", "surrogatepass")).digest()
        for i in range(0, len(digest), 4):
            if len(out) == dim:
                break
            word = int.from_bytes(digest[i : i + 4], "big")
            magnitude = 0.01 + 0.99 * ((word & 0x7FFFFFFF) / 0x7FFFFFFF)
            out.append(f32(-magnitude if word >> 31 else magnitude))
        block += 1
    return out


def normalize(vec: list[float]) -> list[float]:
    """L2-normalize like Ollama's ``normalize`` (float32 results)."""
    norm = sum(v * v for v in vec) ** 0.5
    scale = 1.0 / max(norm, 1e-12)
    return [f32(v * scale) for v in vec]


def go_quote(s: str) -> str:
    """Go's ``%q`` for ordinary strings: double quotes, backslash escapes."""
    return json.dumps(s, ensure_ascii=False)


def pull_layers(name: str) -> list[tuple[str, int]]:
    """The layers a pull of ``name`` downloads: (``"sha256:<hex>"``, size) for the
    weights, the template, the license and the params, derived from the listed name."""
    name = listed_name(name)
    sizes = (_size(name), 1_429, 7_711, 96)
    return [
        ("sha256:" + hashlib.sha256(f"{part}:{name}".encode()).hexdigest(), size)
        for part, size in zip(("model", "template", "license", "params"), sizes)
    ]
