"""FakeOllama routes beyond chat and generate: embeddings and model management.

``POST /api/embed``, ``POST /api/embeddings`` (legacy), ``POST /api/pull``,
``DELETE /api/delete``, ``POST /api/copy``, ``POST /api/create`` and ``POST /api/push``, with the shapes, content types
and error texts of Ollama's ``server/routes.go`` (``EmbedHandler``,
``EmbeddingsHandler``, ``PullHandler``, ``DeleteHandler``, ``CopyHandler``).

Internal module; the public API is :class:`aicortex.testing.FakeOllama`.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ._script import RUNNER_STOPPED_ERROR, default_error
from ._wire import find_model, go_quote, is_zero_keep_alive, normalize, pull_layers, raw_embedding, same_model, token_estimate

if TYPE_CHECKING:
    from ._server import Connection, MutableRecord, Request

__all__ = ["embed", "pull", "delete", "copy"]

_JSON = "application/json; charset=utf-8"
#: ``waitForStream`` (pull with ``stream:false``) sets this Content-Type before gin's c.JSON.
_JSON_NO_CHARSET = "application/json"
#: Context length of the fake's embedding runner when the request gives no ``options.num_ctx``.
EMBED_CONTEXT = 4096


def _not_pulled(model: str) -> str:
    """``handleScheduleError`` for a model that does not exist (embed routes)."""
    return f"model {go_quote(model)} not found, try pulling it first"


def embed(conn: Connection, req: Request, rec: MutableRecord, body: dict[str, Any], legacy: bool) -> bool:
    """``POST /api/embed`` (``legacy=False``) or ``POST /api/embeddings`` (``legacy=True``)."""
    fake = conn.fake
    model = body.get("model") or ""
    if legacy:
        if not model.strip():
            return conn.reply_json(req, rec, 400, {"error": "model is required"})
        prompt = body.get("prompt")
        if prompt is not None and not isinstance(prompt, str):
            error = "json: cannot unmarshal value into Go struct field EmbeddingRequest.prompt of type string"
            return conn.reply_json(req, rec, 400, {"error": error})
        inputs = [prompt] if prompt else []
    else:
        dims = body.get("dimensions")
        if dims is not None and (isinstance(dims, bool) or not isinstance(dims, int)):
            error = "json: cannot unmarshal value into Go struct field EmbedRequest.dimensions of type int"
            return conn.reply_json(req, rec, 400, {"error": error})
        raw_input = body.get("input")
        if isinstance(raw_input, str):
            inputs = [raw_input] if raw_input else []
        elif isinstance(raw_input, list) and all(isinstance(x, str) for x in raw_input):
            inputs = list(raw_input)
        elif raw_input is None:
            inputs = []
        else:
            return conn.reply_json(req, rec, 400, {"error": "invalid input type"})
        if not model.strip():
            return conn.reply_json(req, rec, 404, {"error": f"model '{model}' not found"})
    if find_model(model, fake.models) is None:
        return conn.reply_json(req, rec, 404, {"error": _not_pulled(model)})
    if not inputs:  # an empty request loads (or with keep_alive 0 unloads) the model
        fake._note_load(model, unload=is_zero_keep_alive(body.get("keep_alive")))
        return conn.reply_json(req, rec, 200, {"embedding": []} if legacy else {"model": model, "embeddings": []})

    script = fake._take_script()
    fake._update(rec, script=script)
    if script.blackhole:
        conn.hold()
    if script.first_token_delay:
        conn.wait(script.first_token_delay)
    if script.status is not None:
        text = script.error if script.error is not None else default_error(script.status, model)
        return conn.reply_json(req, rec, script.status, {"error": text})
    t_loaded = time.perf_counter_ns()

    options = body.get("options")
    num_ctx = options.get("num_ctx") if isinstance(options, dict) else None
    context = num_ctx if isinstance(num_ctx, int) and not isinstance(num_ctx, bool) and num_ctx > 0 else EMBED_CONTEXT
    counts = [token_estimate(text) for text in inputs]
    if not legacy and body.get("truncate") is False and max(counts) > context:
        return conn.reply_json(req, rec, 400, {"error": "the input length exceeds the context length"})

    busy = fake._embed_slot(len(inputs))
    if busy > 0:
        conn.wait(busy)
    if script.drop_after is not None:
        conn.reset_on_close = script.reset
        return False
    if script.error_after is not None:
        return conn.reply_json(req, rec, 500, {"error": script.error or RUNNER_STOPPED_ERROR})
    if script.malformed_after is not None:
        key = b'{"embedding":[0.1' if legacy else b'{"model":"%s","embeddings":[[0.1' % model.encode()
        return conn.reply(req, rec, 200, _JSON, key, close=True)

    if legacy:
        return conn.reply_json(req, rec, 200, {"embedding": raw_embedding(inputs[0], fake.embed_dim)})
    dims = body.get("dimensions") or 0
    vectors = []
    for text in inputs:
        vec = normalize(raw_embedding(text, fake.embed_dim))
        if 0 < dims < len(vec):
            vec = normalize(vec[:dims])
        vectors.append(vec)
    now = time.perf_counter_ns()
    reply: dict[str, Any] = {"model": model, "embeddings": vectors}
    metrics = {
        "total_duration": now - rec.t0,
        "load_duration": t_loaded - rec.t0,
        "prompt_eval_count": sum(min(c, context) for c in counts),
    }
    reply.update((k, int(v)) for k, v in metrics.items() if v)  # Go omitempty
    return conn.reply_json(req, rec, 200, reply)


def pull(conn: Connection, req: Request, rec: MutableRecord, body: dict[str, Any]) -> bool:
    """``POST /api/pull``: progress lines (or only the last one for ``stream:false``)."""
    fake = conn.fake
    name = body.get("model") or body.get("name") or ""
    if not isinstance(name, str) or not name.strip():
        return conn.reply_json(req, rec, 400, {"error": "invalid model name"})
    error = next((text for key, text in dict(fake.pull_errors).items() if same_model(key, name)), None)
    present = find_model(name, fake.models) is not None
    steps: list[dict[str, Any]] = [{"status": "pulling manifest"}]
    if error is None:
        for digest, size in pull_layers(name):
            # a layer already on disk is reported once, complete; a big one in a few steps
            parts = 1 if present or size < 1_000_000 else 4
            for i in range(parts + 1 if parts > 1 else 1):
                done = size if parts == 1 else size * i // parts
                step: dict[str, Any] = {"status": f"pulling {digest[7:19]}", "digest": digest, "total": size}
                if done:
                    step["completed"] = done
                steps.append(step)
        steps += [{"status": "verifying sha256 digest"}, {"status": "writing manifest"}]

    if body.get("stream", True) is False:
        for _ in steps:
            if fake.pull_delay:
                conn.wait(fake.pull_delay)
        if error is not None:
            return conn.reply_json(req, rec, 500, {"error": error}, _JSON_NO_CHARSET)
        fake._add_pulled(name)
        return conn.reply_json(req, rec, 200, {"status": "success"}, _JSON_NO_CHARSET)

    out = conn.stream(req, rec)
    for i, step in enumerate(steps):
        if i and fake.pull_delay:
            conn.wait(fake.pull_delay)
        out.line(step)
    if fake.pull_delay:
        conn.wait(fake.pull_delay)
    if error is not None:
        out.line({"error": error})  # json.NewEncoder(...).Encode: the error key alone
    else:
        fake._add_pulled(name)
        out.line({"status": "success"})
    out.end()
    return out.keep_alive


def delete(conn: Connection, req: Request, rec: MutableRecord, body: dict[str, Any]) -> bool:
    """``DELETE /api/delete``: 200 with an empty body, or 404 ``model '<name>' not found``."""
    fake = conn.fake
    name = body.get("model") or body.get("name") or ""
    if not isinstance(name, str) or not name.strip():
        return conn.reply_json(req, rec, 400, {"error": "model is required"})
    if not fake._remove_model(name):
        return conn.reply_json(req, rec, 404, {"error": f"model '{name}' not found"})
    return conn.reply(req, rec, 200, None, b"")


def copy(conn: Connection, req: Request, rec: MutableRecord, body: dict[str, Any]) -> bool:
    """``POST /api/copy``: 200 with an empty body, or 404 ``model "<source>" not found``."""
    fake = conn.fake
    source, destination = body.get("source"), body.get("destination")
    for field, value in (("source", source), ("destination", destination)):
        if value is not None and not isinstance(value, str):
            error = f"json: cannot unmarshal value into Go struct field CopyRequest.{field} of type string"
            return conn.reply_json(req, rec, 400, {"error": error})
    source, destination = source or "", destination or ""
    if not source.strip():
        return conn.reply_json(req, rec, 400, {"error": f"source {go_quote(source)} is invalid"})
    if not destination.strip():
        return conn.reply_json(req, rec, 400, {"error": f"destination {go_quote(destination)} is invalid"})
    if find_model(source, fake.models) is None:
        return conn.reply_json(req, rec, 404, {"error": f"model {go_quote(source)} not found"})
    fake._add_pulled(destination)
    return conn.reply(req, rec, 200, None, b"")


def create_or_push(conn: Connection, req: Request, rec: MutableRecord, body: dict[str, Any], *, push: bool) -> bool:
    """``POST /api/create`` (a model ``from`` one the fake lists: it lists the new name
    afterwards) or ``POST /api/push`` (of a model it lists): progress lines ending in
    ``{"status": "success"}`` (only that one for ``stream:false``), or 404/400 as
    Ollama's ``server/routes.go`` answers a missing source or name."""
    fake = conn.fake
    name = body.get("model") or body.get("name") or ""
    if not isinstance(name, str) or not name.strip():
        return conn.reply_json(req, rec, 400, {"error": "model is required"})
    source = name if push else body.get("from")
    if push or source:
        if not isinstance(source, str) or find_model(source, fake.models) is None:
            return conn.reply_json(req, rec, 404, {"error": f"model '{source}' not found"})
    if push:
        steps = [{"status": "retrieving manifest"}, {"status": "pushing manifest"}]
    else:
        steps = [{"status": "reading model metadata"}, {"status": "creating system layer"}, {"status": "writing manifest"}]
    if not push:
        fake._add_pulled(name)
    if body.get("stream", True) is False:
        return conn.reply_json(req, rec, 200, {"status": "success"}, _JSON_NO_CHARSET)
    out = conn.stream(req, rec)
    for step in steps:
        out.line(step)
    out.line({"status": "success"})
    out.end()
    return out.keep_alive
