"""The gateway's ASGI app: Ollama's and OpenAI's HTTP APIs in front of an
:class:`~aicortex.AsyncClient` (Starlette routing; served by uvicorn or any ASGI server).

Every generating request goes to the fleet with ``"stream": true`` whatever the client
asked, so that a server dying mid-reply can be continued on the next one; the gateway
shapes the client's response itself (NDJSON, SSE, or one JSON body). Nothing is sent to
the client before the first token (as Ollama, ``server/routes.go``): an error before it
gets a real HTTP status and Ollama's ``{"error": ...}`` body (OpenAI's error shape on
``/v1``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Literal, Mapping

from .._exceptions import AICortexError, ConfigError, ModelNotFound
from .._protocol import model_key
from . import _openai
from ._limits import Busy, Limiter
from ._reply import (
    JSON_TYPE,
    REQUEST_ID_HEADER,
    Fail,
    FleetReply,
    Message,
    ProtocolName,
    Raw,
    Receive,
    Scope,
    Send,
    fail_of,
    fail_response,
    json_response,
)
from ._security import KeyRing

if TYPE_CHECKING:  # pragma: no cover
    from starlette.requests import Request

    from .._client import AsyncClient

__all__ = ["GatewayConfig", "Gateway", "REQUEST_ID_HEADER", "JSON_TYPE"]

logger = logging.getLogger("aicortex.gateway")
access_logger = logging.getLogger("aicortex.gateway.access")

#: Paths answered without an API key (liveness probes).
OPEN_PATHS = frozenset(("/", "/health"))


@dataclass(frozen=True)
class GatewayConfig:
    """The gateway's limits and behaviour.

    Fields:
        max_body_bytes: largest request body, bytes (a larger one: 413).
        body_timeout_s: the whole request body must arrive within this many seconds
            (a slow-loris client gets 408), or ``None``.
        max_active: generating and embedding requests in flight at once (all clients).
        max_queue: requests waiting for a slot beyond that; a full queue gets 503 in
            Ollama's "server busy" shape.
        per_client: requests in flight or queued per client (its API key, else its IP
            address), or ``None``; over it: 503.
        queue_timeout_s: longest wait in the queue, seconds (then 503).
        refresh_interval_s: seconds between background refreshes of the fleet
            (``/api/version``, ``/api/tags``, ``/api/ps`` of every server) while the app
            runs under an ASGI server with lifespan; ``None``: only the first one.
        api_keys: accepted bearer tokens; empty: no key needed.
    """

    max_body_bytes: int = 32 * 1024 * 1024
    body_timeout_s: float | None = 30.0
    max_active: int = 512
    max_queue: int = 1024
    per_client: int | None = 128
    queue_timeout_s: float | None = 60.0
    refresh_interval_s: float | None = 30.0
    api_keys: tuple[str, ...] = field(default=(), repr=False)



class Gateway:
    """The gateway ASGI application (see :func:`aicortex.gateway.create_app`).

    Attributes:
        client: the :class:`~aicortex.AsyncClient` that talks to the fleet.
        config: its :class:`GatewayConfig`.
        limiter: the admission control (requests in flight and queued).
        metrics: the Prometheus metrics.
    """

    def __init__(self, client: "AsyncClient", config: GatewayConfig = GatewayConfig(), *, owns_client: bool = False) -> None:
        from starlette.applications import Starlette
        from starlette.routing import Route

        from ._metrics import Metrics

        self.client = client
        self.config = config
        self.owns_client = owns_client
        self.keys = KeyRing(config.api_keys)
        self.limiter = Limiter(config.max_active, config.max_queue, config.per_client, config.queue_timeout_s)
        self.metrics = Metrics(client.fleet, self.limiter)
        self._refresh_lock: asyncio.Lock | None = None
        self._refreshed_at: float | None = None
        self._refresher: asyncio.Task[None] | None = None
        routes = [
            Route("/", self.root, methods=["GET"]),
            Route("/health", self.health, methods=["GET"]),
            Route("/metrics", self.prometheus, methods=["GET"]),
            Route("/api/version", self.version, methods=["GET"]),
            Route("/api/tags", self.tags, methods=["GET"]),
            Route("/api/ps", self.ps, methods=["GET"]),
            Route("/api/show", self.show, methods=["POST"]),
            Route("/api/chat", self.chat, methods=["POST"]),
            Route("/api/generate", self.generate, methods=["POST"]),
            Route("/api/embed", self.embed, methods=["POST"]),
            Route("/api/embeddings", self.embeddings_legacy, methods=["POST"]),
            Route("/v1/chat/completions", self.openai_chat, methods=["POST"]),
            Route("/v1/completions", self.openai_completions, methods=["POST"]),
            Route("/v1/models", self.openai_models, methods=["GET"]),
            Route("/v1/models/{model:path}", self.openai_model, methods=["GET"]),
            Route("/v1/embeddings", self.openai_embeddings, methods=["POST"]),
        ]
        self.router = Starlette(
            routes=routes, lifespan=self._lifespan,
            exception_handlers={404: self._not_found, 405: self._not_allowed},
        )
        # The generating routes skip the router and its exception wrappers (two wrapped
        # ``send`` calls per streamed chunk): they handle their own errors.
        self._hot: dict[str, Callable[["Request"], Awaitable[Any]]] = {
            "/api/chat": self.chat, "/api/generate": self.generate, "/v1/chat/completions": self.openai_chat,
            "/v1/completions": self.openai_completions,
        }

    # -- ASGI --------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.router(scope, receive, send)
            return
        started = time.perf_counter()
        status = [0]

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        path = scope.get("path", "")
        protocol: ProtocolName = "openai" if path.startswith("/v1/") else "ollama"
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        scope["aicortex"] = info = {"client": self._client_key(scope, headers)}
        try:
            if path not in OPEN_PATHS:
                ok, why = self.keys.check(headers)
                if not ok:
                    await fail_response(protocol, Fail(401, why, "invalid_api_key"))(scope, receive, send_status)
                    return
            hot = self._hot.get(path) if scope.get("method") == "POST" else None
            if hot is not None:
                from starlette.requests import Request

                response = await hot(Request(scope, receive))
                await response(scope, receive, send_status)
            else:
                await self.router(scope, receive, send_status)
        finally:
            elapsed = time.perf_counter() - started
            self.metrics.request(_route_label(path), status[0] or 499)
            self._log(scope, status[0], elapsed, info)

    def _client_key(self, scope: Scope, headers: Mapping[str, str]) -> str:
        key = self.keys.client_id(headers)
        if key is not None:
            return key
        client = scope.get("client")
        return f"ip:{client[0]}" if client else "ip:?"

    def _log(self, scope: Scope, status: int, elapsed: float, info: Mapping[str, Any]) -> None:
        if not access_logger.isEnabledFor(logging.INFO):
            return
        fields: dict[str, Any] = {
            "method": scope.get("method"), "path": scope.get("path"), "status": status or 499,
            "ms": round(elapsed * 1000, 1), "client": info.get("client"),
        }
        for name in ("request_id", "model", "server", "attempts", "ttft_s", "broken", "disconnected"):
            if info.get(name) is not None:
                fields[name] = info[name]
        if isinstance(fields.get("ttft_s"), float):
            fields["ttft_s"] = round(fields["ttft_s"], 4)
        access_logger.info(json.dumps(fields, separators=(",", ":")))

    # -- lifecycle ---------------------------------------------------------------------------
    def _lifespan(self, app: Any) -> Any:
        from contextlib import asynccontextmanager

        @asynccontextmanager
        async def lifespan(app: Any) -> Any:
            await self.ensure_fresh()
            if self.config.refresh_interval_s:
                self._refresher = asyncio.ensure_future(self._refresh_loop(self.config.refresh_interval_s))
            try:
                yield
            finally:
                await self.aclose()

        return lifespan(app)

    async def aclose(self) -> None:
        """Stop the background refresh; close the client if the gateway made it."""
        if self._refresher is not None:
            self._refresher.cancel()
            await asyncio.gather(self._refresher, return_exceptions=True)
            self._refresher = None
        if self.owns_client:
            await self.client.aclose()

    async def _refresh_loop(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            await self._refresh()

    async def _refresh(self) -> None:
        try:
            await self.client.refresh()
        except AICortexError as exc:
            logger.warning("fleet refresh failed: %s", exc)
        except Exception:  # never let a refresh kill the loop
            logger.exception("fleet refresh failed")
        self._refreshed_at = time.monotonic()

    async def ensure_fresh(self) -> None:
        """Refresh the fleet once before the first request (concurrent requests wait for
        the same refresh)."""
        if self._refreshed_at is not None:
            return
        if self._refresh_lock is None:
            self._refresh_lock = asyncio.Lock()
        async with self._refresh_lock:
            if self._refreshed_at is None:
                await self._refresh()

    async def refresh_if_older(self, age_s: float) -> bool:
        """Refresh now if the last refresh is older than ``age_s`` seconds; True if it did."""
        if self._refreshed_at is not None and time.monotonic() - self._refreshed_at < age_s:
            return False
        if self._refresh_lock is None:
            self._refresh_lock = asyncio.Lock()
        async with self._refresh_lock:
            if self._refreshed_at is not None and time.monotonic() - self._refreshed_at < age_s:
                return True  # refreshed by another request meanwhile
            await self._refresh()
        return True

    # -- request helpers -------------------------------------------------------------------
    async def _read_json(self, request: "Request", protocol: ProtocolName) -> Any:
        """The JSON request body (``None`` when empty), within the size and time limits."""
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise Fail(413, f"request body too large: {declared} bytes; the limit is {limit} bytes")

        async def read() -> bytes:
            parts: list[bytes] = []
            size = 0
            async for part in request.stream():
                size += len(part)
                if size > limit:
                    raise Fail(413, f"request body too large: more than {limit} bytes")
                parts.append(part)
            return b"".join(parts)

        try:
            raw = await asyncio.wait_for(read(), self.config.body_timeout_s)
        except asyncio.TimeoutError:
            raise Fail(408, f"the request body did not arrive within {self.config.body_timeout_s:g} s") from None
        except Fail:
            raise
        except Exception as exc:  # the client went away while sending
            raise Fail(400, f"the request body could not be read: {type(exc).__name__}") from None
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise Fail(400, f"invalid JSON in the request body: {exc}") from None

    async def _object(self, request: "Request", protocol: ProtocolName, *, empty: str) -> dict[str, Any]:
        body = await self._read_json(request, protocol)
        if body is None:
            raise Fail(400, empty)
        if not isinstance(body, dict):
            raise Fail(400, f"the request body must be a JSON object, not {type(body).__name__}")
        return body

    @staticmethod
    def _request_id() -> str:
        return uuid.uuid4().hex

    def _info(self, request: "Request") -> dict[str, Any]:
        info: dict[str, Any] = request.scope.setdefault("aicortex", {})
        return info

    # -- Ollama routes -----------------------------------------------------------------------
    async def root(self, request: "Request") -> Any:
        """``GET /`` and ``HEAD /``: ``Ollama is running`` (text/plain), as Ollama answers."""
        return Raw(200, b"Ollama is running", "text/plain; charset=utf-8")

    async def health(self, request: "Request") -> Any:
        """``GET /health``: the gateway's own state and the fleet's servers (up or not)."""
        snap = self.client.fleet.snapshot
        servers = [s for s in snap.servers if s.enabled]
        up = [s for s in servers if s.status != "down"]
        body = {
            "status": "ok" if up else "degraded", "servers": len(servers), "servers_up": len(up),
            "models": len(snap.entries), "in_flight": self.limiter.active, "queued": self.limiter.queued,
        }
        return json_response(body)

    async def prometheus(self, request: "Request") -> Any:
        """``GET /metrics``: Prometheus text format."""
        data, content_type = self.metrics.exposition()
        return Raw(200, data, content_type)

    async def version(self, request: "Request") -> Any:
        """``GET /api/version``: the lowest Ollama version among the fleet's up servers (so
        a client's feature gates hold on every server), ``0.0.0`` when none is known."""
        await self.ensure_fresh()
        versions = [s.version for s in self.client.fleet.snapshot.servers if s.enabled and s.version and s.status != "down"]
        return json_response({"version": min(versions, key=_version_key) if versions else "0.0.0"})

    async def tags(self, request: "Request") -> Any:
        """``GET /api/tags``: the union of the fleet's models, one entry per model (the
        first server's listing of it)."""
        await self.ensure_fresh()
        models: list[dict[str, Any]] = []
        for entries in self.client.fleet.snapshot.entries.values():
            if not entries:
                continue
            e = entries[0][1]
            models.append({  # Ollama's /api/tags entry (docs/api.md, "List Local Models")
                "name": e.name, "model": e.name, "modified_at": e.modified_at, "size": e.size,
                "digest": e.digest, "details": dict(e.details),
            })
        models.sort(key=lambda m: str(m["name"]))
        return json_response({"models": models})

    async def ps(self, request: "Request") -> Any:
        """``GET /api/ps``: the union of every server's loaded models, live, one entry per
        model (servers that do not answer are left out)."""
        await self.ensure_fresh()
        client = self.client
        servers = [s.url for s in client.fleet.snapshot.servers if s.enabled]

        async def one(url: str) -> list[Any]:
            try:
                data = await client._transport.request_json(
                    url, "GET", "/api/ps", connect_timeout_s=client.timeouts.connect, read_timeout_s=client.probe_timeout_s,
                )
                obj = json.loads(data)
            except (AICortexError, ValueError):
                return []
            models = obj.get("models") if isinstance(obj, dict) else None
            return models if isinstance(models, list) else []

        seen: dict[str, Any] = {}
        for models in await asyncio.gather(*(one(u) for u in servers)):
            for m in models:
                if isinstance(m, dict) and isinstance(m.get("name"), str):
                    seen.setdefault(model_key(m["name"]), m)
        return json_response({"models": list(seen.values())})

    async def show(self, request: "Request") -> Any:
        """``POST /api/show``: the first server's answer that has the model."""
        try:
            body = await self._object(request, "ollama", empty="missing request body")
            model = body.get("model") or body.get("name")
            if not isinstance(model, str) or not model:
                raise Fail(400, "model is required")
            await self.ensure_fresh()
            try:
                result = await self.client.show(model)
            except AICortexError as exc:
                raise fail_of(exc, model=model) from None
            return json_response(dict(result))
        except Fail as fail:
            return fail_response("ollama", fail)

    async def chat(self, request: "Request") -> Any:
        """``POST /api/chat`` (Ollama ``docs/api.md``, "Generate a chat completion")."""
        return await self._ollama_generating(request, "chat")

    async def generate(self, request: "Request") -> Any:
        """``POST /api/generate`` (Ollama ``docs/api.md``, "Generate a completion")."""
        return await self._ollama_generating(request, "generate")

    async def _ollama_generating(self, request: "Request", endpoint: Literal["chat", "generate"]) -> Any:
        try:
            body = await self._object(request, "ollama", empty="model is required")
            model = body.get("model")
            if not isinstance(model, str) or not model:
                if endpoint == "generate":
                    raise Fail(404, f"model '{model or ''}' not found")
                raise Fail(400, "model is required")
            stream = body.get("stream", True) is not False
            if endpoint == "chat":
                messages = body.get("messages")
                if messages is not None and (not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages)):
                    raise Fail(400, "messages must be a list of message objects")
                if not messages:  # a load (or unload) request: one JSON object, never a stream
                    stream = False
            elif not body.get("prompt"):
                if body.get("prompt") is not None and not isinstance(body.get("prompt"), str):
                    raise Fail(400, "prompt must be a string")
                stream = False
            upstream = {**body, "stream": True}
        except Fail as fail:
            return fail_response("ollama", fail)
        info = self._info(request)
        info["model"] = model
        return FleetReply(
            self, protocol="ollama", endpoint=endpoint, body=upstream, model=model, stream=stream,
            client_key=info.get("client", "?"), request_id=self._request_id(),
        )

    async def _embed_vectors(self, request: "Request", model: str, inputs: list[str], **kw: Any) -> Any:
        info = self._info(request)
        info["model"] = model
        async with self.limiter.slot(info.get("client", "?")):
            await self.ensure_fresh()
            try:
                return await self.client.embed(inputs, model=model, **kw)
            except ModelNotFound:
                if not await self.refresh_if_older(5.0):
                    raise
                return await self.client.embed(inputs, model=model, **kw)

    async def embed(self, request: "Request") -> Any:
        """``POST /api/embed`` (Ollama ``docs/api.md``, "Generate Embeddings"):
        ``{"model", "embeddings", "total_duration"}``; the inputs are spread over the
        servers that have the model, in batches, with failover."""
        try:
            body = await self._object(request, "ollama", empty="missing request body")
            model = body.get("model")
            if not isinstance(model, str) or not model:
                raise Fail(400, "model is required")
            raw = body.get("input")
            inputs = [raw] if isinstance(raw, str) else raw
            if inputs is None or inputs == "" or inputs == []:
                return json_response({"model": model, "embeddings": []})
            if not isinstance(inputs, list) or not all(isinstance(t, str) for t in inputs):
                raise Fail(400, "invalid input type")
            kw = {k: body.get(k) for k in ("truncate", "dimensions", "options", "keep_alive")}
            started = time.perf_counter_ns()
            try:
                result = await self._embed_vectors(request, model, inputs, **kw)
            except AICortexError as exc:
                raise fail_of(exc, model=model, embed=True) from None
            return json_response({"model": model, "embeddings": result.embeddings, "total_duration": time.perf_counter_ns() - started})
        except Busy as exc:
            return fail_response("ollama", Fail(503, str(exc)))
        except Fail as fail:
            return fail_response("ollama", fail)

    async def embeddings_legacy(self, request: "Request") -> Any:
        """``POST /api/embeddings`` (the legacy route): ``{"model", "prompt"}`` ->
        ``{"embedding": [...]}``."""
        try:
            body = await self._object(request, "ollama", empty="missing request body")
            model = body.get("model")
            if not isinstance(model, str) or not model:
                raise Fail(400, "model is required")
            prompt = body.get("prompt")
            if not prompt:
                return json_response({"embedding": []})
            if not isinstance(prompt, str):
                raise Fail(400, "prompt must be a string")
            try:
                result = await self._embed_vectors(request, model, [prompt], options=body.get("options"), keep_alive=body.get("keep_alive"))
            except AICortexError as exc:
                raise fail_of(exc, model=model, embed=True) from None
            return json_response({"embedding": result.embeddings[0]})
        except Busy as exc:
            return fail_response("ollama", Fail(503, str(exc)))
        except Fail as fail:
            return fail_response("ollama", fail)

    # -- OpenAI routes -----------------------------------------------------------------------
    async def openai_chat(self, request: "Request") -> Any:
        """``POST /v1/chat/completions``: streamed as SSE chunks (with a ``usage`` chunk
        when ``stream_options.include_usage``), or one ``chat.completion`` object."""
        return await self._openai_generating(request, _openai.chat_request, "chat", "chatcmpl-")

    async def openai_completions(self, request: "Request") -> Any:
        """``POST /v1/completions`` (OpenAI's legacy text completions) over Ollama's
        ``/api/generate``: streamed as SSE ``text_completion`` chunks, or one object. A
        reply broken mid-stream is restarted (a templated prompt cannot be continued), so
        once text was sent it ends with an error event."""
        return await self._openai_generating(request, _openai.completion_request, "generate", "cmpl-")

    async def _openai_generating(
        self,
        request: "Request",
        translate: "Callable[[Mapping[str, Any]], tuple[dict[str, Any], bool, bool]]",
        endpoint: "Literal['chat', 'generate']",
        id_prefix: str,
    ) -> Any:
        """An OpenAI request that generates: its body read and translated to Ollama's
        (``translate``: a 400 in OpenAI's shape when it is wrong), then the reply relayed
        from the fleet, its ``id`` ``id_prefix`` + the request id."""
        try:
            body = await self._object(request, "openai", empty="the request body is empty: send a JSON object")
            try:
                upstream, stream, include_usage = translate(body)
            except ConfigError as exc:
                raise Fail(400, str(exc)) from None
        except Fail as fail:
            return fail_response("openai", fail)
        info = self._info(request)
        info["model"] = model = upstream["model"]
        return FleetReply(
            self, protocol="openai", endpoint=endpoint, body=upstream, model=model, stream=stream,
            client_key=info.get("client", "?"), request_id=id_prefix + self._request_id()[:24],
            include_usage=include_usage,
        )

    def _model_entries(self) -> list[tuple[str, str]]:
        out = []
        for entries in self.client.fleet.snapshot.entries.values():
            if entries:
                e = entries[0][1]
                out.append((e.name, e.modified_at))
        return sorted(out)

    async def openai_models(self, request: "Request") -> Any:
        """``GET /v1/models``: the fleet's models as OpenAI model objects."""
        await self.ensure_fresh()
        return json_response(_openai.models_list(self._model_entries()))

    async def openai_model(self, request: "Request") -> Any:
        """``GET /v1/models/{model}``: one model object, or 404."""
        await self.ensure_fresh()
        name = request.path_params["model"]
        for entry, stamp in self._model_entries():
            if model_key(entry) == model_key(name):
                return json_response(_openai.model_object(entry, stamp))
        return fail_response("openai", Fail(404, f"The model '{name}' does not exist", "model_not_found"))

    async def openai_embeddings(self, request: "Request") -> Any:
        """``POST /v1/embeddings``: float or base64 (little-endian float32) vectors."""
        try:
            body = await self._object(request, "openai", empty="the request body is empty: send a JSON object")
            try:
                model, inputs, dims, encoding = _openai.embeddings_request(body)
            except ConfigError as exc:
                raise Fail(400, str(exc)) from None
            try:
                result = await self._embed_vectors(request, model, inputs, dimensions=dims)
            except AICortexError as exc:
                fail = fail_of(exc, model=model, embed=True)
                if fail.status == 404:
                    fail = Fail(404, f"The model '{model}' does not exist", "model_not_found")
                raise fail from None
            return json_response(_openai.embeddings_reply(model, result.embeddings, encoding))
        except Busy as exc:
            return fail_response("openai", Fail(503, str(exc)))
        except Fail as fail:
            return fail_response("openai", fail)

    # -- Ollama's router answers --------------------------------------------------------------
    async def _not_found(self, request: "Request", exc: Exception) -> Any:
        if request.url.path.startswith("/v1/"):
            return fail_response("openai", Fail(404, f"unknown path {request.url.path}"))
        return Raw(404, b"404 page not found", "text/plain")

    async def _not_allowed(self, request: "Request", exc: Exception) -> Any:
        if request.url.path.startswith("/v1/"):
            return fail_response("openai", Fail(405, f"method {request.method} not allowed on {request.url.path}"))
        return Raw(405, b"405 method not allowed", "text/plain")


def _version_key(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("-")[0].split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


_ROUTES = (
    "/api/chat", "/api/generate", "/api/embed", "/api/embeddings", "/api/show", "/api/tags", "/api/ps", "/api/version",
    "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models", "/metrics", "/health",
)


def _route_label(path: str) -> str:
    """A bounded label for a path (unknown paths are ``other``)."""
    if path == "/" or path in _ROUTES:
        return path
    if path.startswith("/v1/models/"):
        return "/v1/models/{model}"
    return "other"
