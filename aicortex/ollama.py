"""``aicortex.ollama``: the official ``ollama`` client's API over an aicortex fleet.

Change one import and keep every habit::

    from aicortex import ollama                      # was: import ollama

    response = ollama.chat(model="llama3.2", messages=[{"role": "user", "content": "Hi"}])
    print(response.message.content)                  # an ollama.ChatResponse, as before
    print(response.aicortex.server)                  # which server answered (aicortex's Reply)

The names (``Client``, ``AsyncClient``, module-level ``chat``, ``generate``, ``embed``,
``embeddings``, ``list``, ``ps``, ``show``, ``pull``, ``push``, ``create``, ``delete``,
``copy``), their call signatures and their response types are the official client's
(``ollama-python``, whose types this module reuses: ``pip install 'aicortex[ollama]'``).
Errors are ``ResponseError`` (``.error``, ``.status_code``) and ``RequestError`` as there,
and are also :class:`~aicortex.AICortexError`; a server that cannot be reached is a
``ConnectionError`` (:class:`aicortex.ConnectError`).

``host`` decides what a client talks to:

- one URL (``Client("http://gpu1:11434")``; ``""`` is ``OLLAMA_HOST``, as there): that
  server only, as the official client does on the wire: the same request bodies (``"stream"`` as you asked), no discovery,
  no routing; timeouts as you give them (none by default, as there).
- several URLs (``Client(["http://gpu1:11434", "http://gpu2:11434"])``): a fleet, with
  discovery, warm-first routing, circuit breakers and failover; inference is streamed
  from the servers (``"stream": true``), so a server that dies mid-reply is continued on
  the next one, and aicortex's default timeouts apply.
- nothing: the aicortex registry (``AICORTEX_DB`` or the default file; see
  :class:`aicortex.Client`), also a fleet.

What aicortex measured rides along on ``response.aicortex``, never changing the official
shapes (``model_dump()`` is the same): an :class:`aicortex.Reply` (``server``,
``attempts``, ``ttft_s``, ``tokens_per_second``) on a whole response and on a stream's
last (``done``) chunk, the :class:`aicortex.StreamEvent` on a stream's other chunks,
the :class:`aicortex.EmbedResult` on an embed response, the :class:`aicortex.PullProgress`
on a fleet pull's progress.

Over a fleet a streamed reply that cannot be continued soundly on the next server (a
tool call was already sent, ``format=`` structured output, a ``/api/generate`` prompt
without ``raw``) and had already yielded chunks raises ``ResponseError`` instead of
repeating them; a reply that yielded nothing yet restarts silently.
"""

from __future__ import annotations

import builtins
import dataclasses
import datetime
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal, TypeVar, overload

try:
    import ollama as _official
    from ollama import _types as _t
    from ollama._client import _copy_images, _copy_messages, _copy_tools
except ImportError as exc:  # pragma: no cover - the extra is installed in tests
    raise ImportError("aicortex.ollama reuses the official client's types: pip install 'aicortex[ollama]'") from exc
from pydantic import PrivateAttr, ValidationError

from ._client import AsyncClient as _AsyncCore
from ._client import Client as _Core
from ._config import Timeouts, parse_host
from ._exceptions import (
    AICortexError,
    AllServersFailed,
    ConfigError,
    ConnectError,
    ConnectTimeout,
    HTTPStatusError,
    ModelNotFound,
    OllamaError,
    ServerError,
)
from ._fleetops import in_order
from ._models import Reply
from ._shapes import event_chunk, final_chunk, reply_body
from ._transport import MAX_PROBE_BYTES

from ollama import (  # noqa: E402 - the official public names, re-exported unchanged
    Image,
    Message,
    Options,
    Tool,
)

__all__ = [
    "AsyncClient",
    "ChatResponse",
    "Client",
    "EmbedResponse",
    "EmbeddingsResponse",
    "GenerateResponse",
    "Image",
    "ListResponse",
    "Message",
    "Options",
    "ProcessResponse",
    "ProgressResponse",
    "RequestError",
    "ResponseError",
    "ShowResponse",
    "StatusResponse",
    "Tool",
    "chat",
    "copy",
    "create",
    "create_blob",
    "delete",
    "embed",
    "embeddings",
    "generate",
    "list",
    "ps",
    "pull",
    "push",
    "show",
    "systemone",
    "web_fetch",
    "web_search",
]

T = TypeVar("T")

#: The official client's message for a server that cannot be reached (ollama-python
#: ``_client.py``), kept so that code matching on it still matches.
CONNECTION_ERROR_MESSAGE = (
    "Failed to connect to Ollama. Please check that Ollama is downloaded, running and accessible. "
    "https://ollama.com/download"
)


# -- errors ------------------------------------------------------------------------------------
class ResponseError(AICortexError, _official.ResponseError):
    """The official ``ollama.ResponseError`` (``.error``: the server's message,
    ``.status_code``: its HTTP status, ``-1`` for an error inside a stream), also an
    :class:`~aicortex.AICortexError`. Over a fleet it is raised when every server failed
    (the last server's status and message; ``.attempts`` lists every server tried) or
    when a streamed reply could not be continued."""

    def __init__(self, error: str, status_code: int = -1, *, attempts: tuple[Any, ...] = ()) -> None:
        _official.ResponseError.__init__(self, error, status_code)
        self.attempts = attempts


class RequestError(ConfigError, _official.RequestError):
    """The official ``ollama.RequestError`` (``.error``), also a
    :class:`~aicortex.ConfigError`: the request is wrong before anything is sent (no
    model, a message or tool the official types refuse)."""

    def __init__(self, error: str) -> None:
        _official.RequestError.__init__(self, error)


def _translate(exc: BaseException) -> BaseException:
    """The official client's error for an aicortex one (the cause is kept as
    ``__cause__``): HTTP errors and in-stream errors become ``ResponseError``, a server
    that cannot be reached stays a ``ConnectionError``, a wrong request ``RequestError``."""
    if isinstance(exc, (ResponseError, RequestError)):
        return exc
    if isinstance(exc, ValidationError):
        return RequestError(str(exc))
    if isinstance(exc, ConfigError):
        return RequestError(str(exc))
    if isinstance(exc, HTTPStatusError):
        return ResponseError(exc.error or exc.reason, exc.status_code)
    if isinstance(exc, ModelNotFound):
        return ResponseError(f"model '{exc.model}' not found", 404)
    if isinstance(exc, AllServersFailed):
        errors = [a.error for a in exc.attempts if a.error is not None]
        never_connected = all(isinstance(a.error, (ConnectError, ConnectTimeout)) and a.ttft_s is None for a in exc.attempts)
        if errors and never_connected:
            return ConnectError(f"{CONNECTION_ERROR_MESSAGE} ({exc})", server=getattr(errors[-1], "server", None))
        last = errors[-1] if errors else None
        if isinstance(last, HTTPStatusError):
            return ResponseError(last.error or last.reason, last.status_code, attempts=exc.attempts)
        if isinstance(last, OllamaError) and last.error:  # an {"error": ...} line: the server's text, as there
            return ResponseError(last.error, -1, attempts=exc.attempts)
        return ResponseError(str(exc), -1, attempts=exc.attempts)
    if isinstance(exc, OllamaError) and exc.error:
        return ResponseError(exc.error, -1)
    if isinstance(exc, ServerError) and not isinstance(exc, (ConnectError, builtins.TimeoutError)):
        return ResponseError(exc.reason, -1)
    return exc


def _raise(exc: BaseException) -> Any:
    translated = _translate(exc)
    if translated is exc:
        raise exc
    raise translated from exc


# -- response types: the official ones, with what aicortex measured riding along ------------
class _Ride(_t.SubscriptableBaseModel):
    _aicortex: Any = PrivateAttr(default=None)

    @property
    def aicortex(self) -> Any:
        """What aicortex knows of this response: a :class:`~aicortex.Reply` (whole
        responses, a stream's ``done`` chunk), a :class:`~aicortex.StreamEvent` (a
        stream's other chunks), an :class:`~aicortex.EmbedResult`, a
        :class:`~aicortex.PullProgress`; ``None`` where nothing was measured."""
        return self._aicortex


class ChatResponse(_Ride, _t.ChatResponse):
    """The official ``ollama.ChatResponse`` (an instance of it), plus ``.aicortex``."""


class GenerateResponse(_Ride, _t.GenerateResponse):
    """The official ``ollama.GenerateResponse`` (an instance of it), plus ``.aicortex``."""


class EmbedResponse(_Ride, _t.EmbedResponse):
    """The official ``ollama.EmbedResponse`` (an instance of it), plus ``.aicortex``."""


class ProgressResponse(_Ride, _t.ProgressResponse):
    """The official ``ollama.ProgressResponse`` (an instance of it), plus ``.aicortex``."""


EmbeddingsResponse = _t.EmbeddingsResponse
ListResponse = _t.ListResponse
ProcessResponse = _t.ProcessResponse
ShowResponse = _t.ShowResponse
StatusResponse = _t.StatusResponse

_RESPONSE: dict[str, type[Any]] = {"chat": ChatResponse, "generate": GenerateResponse}


def _riding(cls: type[T], data: Mapping[str, Any], ride: Any) -> T:
    obj = cls(**data)
    obj._aicortex = ride  # type: ignore[attr-defined]
    return obj


# -- request bodies: the official client's, built by its own types ---------------------------
def _dump(model: Any) -> dict[str, Any]:
    out: dict[str, Any] = model.model_dump(exclude_none=True)
    return out


def _build(make: Callable[[], Any]) -> dict[str, Any]:
    """The JSON body the official client would send (its request type, dumped without
    ``None`` fields); its validation errors become ``RequestError``."""
    try:
        return _dump(make())
    except ValidationError as exc:
        raise RequestError(f"invalid request: {exc}") from exc


def chat_body(
    model: str = "", messages: Any = None, *, tools: Any = None, stream: bool = False, think: Any = None,
    logprobs: bool | None = None, top_logprobs: int | None = None, format: Any = None, options: Any = None,
    keep_alive: Any = None,
) -> dict[str, Any]:
    """The ``POST /api/chat`` body the official ``Client.chat`` sends for these arguments."""
    return _build(lambda: _t.ChatRequest(
        model=model, messages=builtins.list(_copy_messages(messages)), tools=builtins.list(_copy_tools(tools)),
        stream=stream, think=think, logprobs=logprobs, top_logprobs=top_logprobs, format=format, options=options,
        keep_alive=keep_alive,
    ))


def generate_body(
    model: str = "", prompt: str | None = None, suffix: str | None = None, *, system: str | None = None,
    template: str | None = None, context: Sequence[int] | None = None, stream: bool = False, think: Any = None,
    logprobs: bool | None = None, top_logprobs: int | None = None, raw: bool | None = None, format: Any = None,
    images: Any = None, options: Any = None, keep_alive: Any = None, width: int | None = None,
    height: int | None = None, steps: int | None = None,
) -> dict[str, Any]:
    """The ``POST /api/generate`` body the official ``Client.generate`` sends."""
    return _build(lambda: _t.GenerateRequest(
        model=model, prompt=prompt, suffix=suffix, system=system, template=template, context=context, stream=stream,
        think=think, logprobs=logprobs, top_logprobs=top_logprobs, raw=raw, format=format,
        images=builtins.list(_copy_images(images)) if images else None, options=options, keep_alive=keep_alive,
        width=width, height=height, steps=steps,
    ))


# -- what both clients share -------------------------------------------------------------------
_CORE_OPTIONS = ("registry", "on_midstream", "max_connections", "spread_load", "refresh_ttl_s")
_IGNORED = ("follow_redirects",)


class _Base:
    """Settings and conversions shared by :class:`Client` and :class:`AsyncClient`."""

    _core_class: Any = None

    def __init__(
        self,
        host: "str | Sequence[str] | None" = None,
        *,
        timeout: Any = None,
        headers: Mapping[str, str] | None = None,
        verify: bool | str = True,
        **kwargs: Any,
    ) -> None:
        unknown = [k for k in kwargs if k not in _CORE_OPTIONS + _IGNORED]
        if unknown:
            raise RequestError(
                f"aicortex.ollama clients do not take {', '.join(sorted(unknown))}=: they take host, timeout, "
                "headers, verify, follow_redirects (ignored: redirects are not followed) and aicortex's "
                f"{', '.join(_CORE_OPTIONS)}"
            )
        self._core_kw = {k: v for k, v in kwargs.items() if k in _CORE_OPTIONS and k != "registry"}
        registry = kwargs.get("registry")
        if isinstance(host, str) and "," in host:
            host = [h.strip() for h in host.split(",") if h.strip()]
        self._direct = isinstance(host, str)
        try:
            if isinstance(host, str):  # "" is OLLAMA_HOST, as the official client reads it
                self._target: Any = parse_host(host or os.environ.get("OLLAMA_HOST"))
            elif host is not None:
                hosts = builtins.list(host) if isinstance(host, Iterable) and not isinstance(host, (bytes, Mapping)) else None
                if hosts is None or not all(isinstance(h, str) for h in hosts):
                    raise RequestError(f"host must be a URL or a list of URLs, got {host!r}")
                self._target = [parse_host(h) for h in hosts]
                if not self._target:
                    raise RequestError("host is an empty list: give one URL or several")
            else:
                self._target = registry
        except ConfigError as exc:
            _raise(exc)
        auth = {k.lower(): v for k, v in (headers or {}).items() if v is not None}
        api_key = os.environ.get("OLLAMA_API_KEY")
        if api_key and "authorization" not in auth:
            auth["authorization"] = f"Bearer {api_key}"  # as the official client does
        self._headers = auth
        self._verify = verify
        try:
            self._timeouts = self._timeouts_of(timeout)
        except ConfigError as exc:  # a negative or non-numeric limit: RequestError, as every wrong argument
            _raise(exc)
        # The read limit of the calls besides chat/generate (list, show, embed, pull...):
        # the caller's, as httpx applies it to every call; none unless given.
        self._read_timeout_s = None if timeout is None else self._timeouts.stall
        self._core: Any = None
        self._lock = threading.Lock()

    def _timeouts_of(self, timeout: Any) -> Timeouts:
        """httpx's ``timeout`` (``None``, seconds, an ``httpx.Timeout`` or its
        ``(connect, read, write, pool)`` tuple) as aicortex
        limits. One host: none by default, as the official client (httpx ``timeout=None``);
        a fleet: aicortex's defaults, which failover needs."""
        if timeout is None:
            if self._direct:
                return Timeouts(connect=None, first_token=None, first_token_cold=None, stall=None)
            return Timeouts()
        if isinstance(timeout, (int, float)):
            return Timeouts.of(float(timeout))
        if isinstance(timeout, tuple):  # httpx's (connect, read, write, pool)
            import httpx

            try:
                timeout = httpx.Timeout(timeout)
            except (TypeError, ValueError, IndexError) as exc:
                raise RequestError(f"timeout as a tuple is httpx's (connect, read, write, pool), got {timeout!r}") from exc
        read = getattr(timeout, "read", None)
        connect = getattr(timeout, "connect", None)
        if read is None and connect is None and not hasattr(timeout, "read"):
            raise RequestError(f"timeout must be None, a number of seconds or an httpx.Timeout, got {timeout!r}")
        return Timeouts(connect=connect, first_token=read, first_token_cold=read, stall=read)

    @property
    def fleet_client(self) -> Any:
        """The :class:`aicortex.Client` (or ``AsyncClient``) underneath, built on first
        use (so that building this client does no I/O)."""
        with self._lock:
            if self._core is None:
                self._core = self._core_class(
                    self._target, timeout=self._timeouts, headers=self._headers, verify=self._verify, **self._core_kw
                )
                self._built(self._core)
            return self._core

    def _built(self, core: Any) -> None:
        """Called once the client underneath is built."""


    def _wire(self, body: dict[str, Any]) -> dict[str, Any]:
        # One host: the official body as it is. A fleet: streamed from the servers, so a
        # reply can be continued on the next server mid-way.
        return body if self._direct else {**body, "stream": True}

    def _url(self) -> str:
        return str(self._target)

    def __repr__(self) -> str:
        return f"<aicortex.ollama.{type(self).__name__} host={self._target!r}>"

    # The official client's calls that are not about a fleet of Ollama servers: named,
    # so that code reaching for them gets a clear error rather than an AttributeError.
    def _not_carried(self, name: str, why: str) -> Any:
        raise RequestError(f"{name}() is not carried over by aicortex.ollama ({why}): call it on the official ollama.Client")

    def create_blob(self, path: Any) -> Any:
        """Not carried over (an upload of a file to one server): raises ``RequestError``."""
        return self._not_carried("create_blob", "an upload to one server")

    def web_search(self, query: str, max_results: int = 3) -> Any:
        """Not carried over (Ollama's cloud API, not a server of yours): raises ``RequestError``."""
        return self._not_carried("web_search", "Ollama's cloud API, not a server of your fleet")

    def web_fetch(self, url: str) -> Any:
        """Not carried over (Ollama's cloud API, not a server of yours): raises ``RequestError``."""
        return self._not_carried("web_fetch", "Ollama's cloud API, not a server of your fleet")

    def systemone(self, *args: Any, **kwargs: Any) -> Any:
        """Not carried over (``/v1/systemone``, not an inference endpoint aicortex fails over): raises ``RequestError``."""
        return self._not_carried("systemone", "not an endpoint aicortex routes")


class _Chunks:
    """Turns a stream's aicortex events into the official response chunks (sans-IO):
    one per token, thinking or tool call event, and the ``done`` chunk at ``end``."""

    def __init__(self, endpoint: Literal["chat", "generate"], model: str) -> None:
        self.endpoint, self.model = endpoint, model
        self.sent = False

    def on_event(self, event: Any, stream: Any) -> Any:
        if event.type == "reset" and self.sent:
            raise ResponseError(
                f"the server {event.server or ''} failed mid-reply and this reply cannot be continued on another "
                "server (a tool call was sent, structured output, or a generate prompt without raw): ask again",
                -1,
                attempts=stream.attempts,
            )
        if event.type == "end":
            reply = stream._make_reply()
            done = final_chunk(
                endpoint=self.endpoint, model=self.model, usage=reply.usage,
                done_reason=(event.meta or {}).get("done_reason"), context=reply.context,
            )
            return _riding(_RESPONSE[self.endpoint], done, reply)
        data = event_chunk(event, endpoint=self.endpoint, model=self.model)
        if data is None:
            return None
        self.sent = True
        return _riding(_RESPONSE[self.endpoint], data, event)


def _whole(endpoint: Literal["chat", "generate"], reply: Reply, model: str) -> Any:
    return _riding(_RESPONSE[endpoint], reply_body(reply, endpoint=endpoint, model=model), reply)


def _details(details: Mapping[str, Any]) -> Any:
    """A server's ``details`` object as the official ``ModelDetails``: the fields it
    knows, each kept only if that type accepts it (one odd server never breaks ``list()``)."""
    kept: dict[str, Any] = {}
    for key, value in details.items():
        if key in _t.ModelDetails.model_fields:
            try:
                _t.ModelDetails(**{key: value})
            except ValidationError:
                continue
            kept[key] = value
    return _t.ModelDetails(**kept)


def _list_response(models: Sequence[Any]) -> Any:
    return ListResponse(models=[
        ListResponse.Model(
            model=m.name, size=m.size or None, digest=(m.digests[0] if m.digests else None), details=_details(m.details),
        )
        for m in models
    ])


def _ps_response(report: Any) -> Any:
    def when(ts: float | None) -> datetime.datetime | None:
        return None if ts is None else datetime.datetime.fromtimestamp(ts, datetime.timezone.utc)

    return ProcessResponse(models=[
        ProcessResponse.Model(
            model=m.name, name=m.name, digest=m.digest or None, expires_at=when(m.expires_at), size=m.size,
            size_vram=m.size_vram, context_length=m.context_length,
        )
        for m in report
    ])


def _status(results: Sequence[Any], what: str) -> Any:
    """``StatusResponse(status="success")`` when every server succeeded, else a
    ``ResponseError`` naming each server that failed."""
    failed = [r for r in results if not r.ok]
    if not results:
        raise ResponseError(f"{what}: no server to send it to", 404)
    if failed:
        reasons = "; ".join(f"{r.server}: {r.error}" for r in failed)
        raise ResponseError(f"{what} failed on {len(failed)} of {len(results)} servers: {reasons}", -1)
    return StatusResponse(status="success")


def _progress(p: Any) -> Any:
    return _riding(ProgressResponse, {"status": p.status, "digest": p.digest, "total": p.total, "completed": p.completed}, p)


class _PullLeft(Exception):
    """Raised in a fleet pull's progress callback once the caller left the stream."""


def _json_reply(cls: Any, data: bytes) -> Any:
    try:
        return cls.model_validate_json(data)
    except ValidationError as exc:
        raise ResponseError(f"the server's reply is not a valid {cls.__name__}: {exc}", -1) from exc


def _line_reply(cls: Any, obj: Mapping[str, Any]) -> Any:
    """One streamed NDJSON line as ``cls``; a line the official type refuses is a
    ``ResponseError`` (``-1``), not pydantic's ``ValidationError``."""
    try:
        return _riding(cls, obj, None)
    except ValidationError as exc:
        raise ResponseError(f"the server's line is not a valid {cls.__name__}: {exc}", -1) from exc


#: Room for one embedding vector in an /api/embed reply, bytes: 8192 dimensions of up to
#: 32 characters of JSON each. One host's reply to a batch may be this much per input.
EMBED_BYTES_PER_INPUT = 256 << 10


def _embed_limit(body: Mapping[str, Any]) -> int:
    """The longest /api/embed reply read for this request, bytes: the probe bound plus
    room for each input's vector (the official client reads any length; a batch of a
    thousand 768-dimension vectors is about 10 MB)."""
    inputs = body.get("input")
    count = len(inputs) if isinstance(inputs, builtins.list) else 1
    return MAX_PROBE_BYTES + count * EMBED_BYTES_PER_INPUT


def _accept_json(url: str, data: bytes) -> bytes:
    return data


class Client(_Base):
    """The official ``ollama.Client`` API over one server or a fleet (see the module
    docs for what ``host`` selects). ``timeout``, ``headers`` and ``verify`` as there
    (``OLLAMA_API_KEY`` becomes ``authorization: Bearer`` unless you set one); aicortex's
    ``registry=``, ``on_midstream=``, ``max_connections=`` are accepted too; any other
    httpx keyword is a ``RequestError``. A context manager; :meth:`close` closes it."""

    _core_class = _Core

    def close(self) -> None:
        """Close the connections (and the registry the client opened)."""
        with self._lock:
            core, self._core = self._core, None
        if core is not None:
            core.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- inference ------------------------------------------------------------------------------
    def _infer(self, endpoint: Literal["chat", "generate"], body: dict[str, Any], stream: bool) -> Any:
        if stream:
            return self._chunks(endpoint, body)
        try:
            result = self.fleet_client._forward(endpoint, self._wire(body), stream=False, direct=self._direct, keep_events=False)
        except AICortexError as exc:
            _raise(exc)
        return _whole(endpoint, result, body["model"])

    def _chunks(self, endpoint: Literal["chat", "generate"], body: dict[str, Any]) -> Iterator[Any]:
        # A generator, as the official client's: routing and its errors come at the first next().
        shaper = _Chunks(endpoint, body["model"])
        try:
            stream = self.fleet_client._forward(endpoint, self._wire(body), stream=True, direct=self._direct, keep_events=False)
        except AICortexError as exc:
            _raise(exc)
        with stream:
            try:
                for event in stream:
                    out = shaper.on_event(event, stream)
                    if out is not None:
                        yield out
            except AICortexError as exc:
                _raise(exc)

    @overload
    def chat(self, model: str = "", messages: Any = None, *, tools: Any = None, stream: Literal[False] = False, think: Any = None,
             logprobs: bool | None = None, top_logprobs: int | None = None, format: Any = None, options: Any = None,
             keep_alive: Any = None) -> ChatResponse: ...
    @overload
    def chat(self, model: str = "", messages: Any = None, *, tools: Any = None, stream: Literal[True] = True, think: Any = None,
             logprobs: bool | None = None, top_logprobs: int | None = None, format: Any = None, options: Any = None,
             keep_alive: Any = None) -> Iterator[ChatResponse]: ...
    def chat(self, model: str = "", messages: Any = None, *, tools: Any = None, stream: bool = False, think: Any = None,
             logprobs: bool | None = None, top_logprobs: int | None = None, format: Any = None, options: Any = None,
             keep_alive: Any = None) -> "ChatResponse | Iterator[ChatResponse]":
        """``POST /api/chat`` (Ollama ``docs/api.md`` "Generate a chat completion"), as the
        official ``Client.chat``: a :class:`ChatResponse`, or with ``stream=True`` an
        iterator of them (the last one ``done``). Raises ``ResponseError``,
        ``RequestError``, ``ConnectionError``."""
        body = chat_body(model, messages, tools=tools, stream=stream, think=think, logprobs=logprobs,
                         top_logprobs=top_logprobs, format=format, options=options, keep_alive=keep_alive)
        return self._infer("chat", body, stream)  # type: ignore[no-any-return]

    @overload
    def generate(self, model: str = "", prompt: str | None = None, suffix: str | None = None, *, system: str | None = None,
                 template: str | None = None, context: Sequence[int] | None = None, stream: Literal[False] = False,
                 think: Any = None, logprobs: bool | None = None, top_logprobs: int | None = None, raw: bool | None = None,
                 format: Any = None, images: Any = None, options: Any = None, keep_alive: Any = None,
                 width: int | None = None, height: int | None = None, steps: int | None = None) -> GenerateResponse: ...
    @overload
    def generate(self, model: str = "", prompt: str | None = None, suffix: str | None = None, *, system: str | None = None,
                 template: str | None = None, context: Sequence[int] | None = None, stream: Literal[True] = True,
                 think: Any = None, logprobs: bool | None = None, top_logprobs: int | None = None, raw: bool | None = None,
                 format: Any = None, images: Any = None, options: Any = None, keep_alive: Any = None,
                 width: int | None = None, height: int | None = None, steps: int | None = None) -> Iterator[GenerateResponse]: ...
    def generate(self, model: str = "", prompt: str | None = None, suffix: str | None = None, *, system: str | None = None,
                 template: str | None = None, context: Sequence[int] | None = None, stream: bool = False,
                 think: Any = None, logprobs: bool | None = None, top_logprobs: int | None = None, raw: bool | None = None,
                 format: Any = None, images: Any = None, options: Any = None, keep_alive: Any = None,
                 width: int | None = None, height: int | None = None,
                 steps: int | None = None) -> "GenerateResponse | Iterator[GenerateResponse]":
        """``POST /api/generate`` (Ollama ``docs/api.md`` "Generate a completion"), as the
        official ``Client.generate``. Raises as :meth:`chat`."""
        body = generate_body(model, prompt, suffix, system=system, template=template, context=context, stream=stream,
                             think=think, logprobs=logprobs, top_logprobs=top_logprobs, raw=raw, format=format,
                             images=images, options=options, keep_alive=keep_alive, width=width, height=height, steps=steps)
        return self._infer("generate", body, stream)  # type: ignore[no-any-return]

    def embed(self, model: str = "", input: "str | Sequence[str]" = "", truncate: bool | None = None, options: Any = None,
              keep_alive: Any = None, dimensions: int | None = None) -> EmbedResponse:
        """``POST /api/embed``, as the official ``Client.embed``. One host: that server,
        the official body. A fleet: a long input list is split into batches spread over
        every server with the model (aicortex's :meth:`aicortex.Client.embed`), vectors in
        input order; ``.aicortex`` is the :class:`~aicortex.EmbedResult`. An empty input
        (``""``, ``[]``) goes as it is to the first server with the model, which loads it
        and answers no vectors, as one Ollama does."""
        body = _build(lambda: _t.EmbedRequest(model=model, input=input, truncate=truncate, options=options,
                                              keep_alive=keep_alive, dimensions=dimensions))
        if body.get("input") in ("", []):  # Ollama loads the model and answers no vectors
            return _json_reply(EmbedResponse, self._first_with(model, "POST", "/api/embed", body))  # type: ignore[no-any-return]
        try:
            if self._direct:
                return _json_reply(EmbedResponse, self._raw("POST", "/api/embed", body, limit=_embed_limit(body)))  # type: ignore[no-any-return]
            result = self.fleet_client.embed(input, model=model, truncate=truncate, dimensions=dimensions,
                                             options=body.get("options"), keep_alive=keep_alive)
        except AICortexError as exc:
            _raise(exc)
        return _riding(EmbedResponse, {"model": model, "embeddings": result.embeddings}, result)

    def embeddings(self, model: str = "", prompt: str | None = None, options: Any = None, keep_alive: Any = None) -> Any:
        """``POST /api/embeddings`` (deprecated by Ollama in favour of ``/api/embed``), as
        the official ``Client.embeddings``: on the first server that lists the model."""
        body = _build(lambda: _t.EmbeddingsRequest(model=model, prompt=prompt, options=options, keep_alive=keep_alive))
        return _json_reply(EmbeddingsResponse, self._first_with(model, "POST", "/api/embeddings", body))

    # -- fleet operations -----------------------------------------------------------------------
    def _raw(self, method: str, path: str, body: Mapping[str, Any] | None, url: str | None = None,
             limit: int = MAX_PROBE_BYTES) -> bytes:
        core = self.fleet_client
        data: bytes = core._transport.request_json(
            url or self._url(), method, path, body, connect_timeout_s=core.timeouts.connect, read_timeout_s=self._read_timeout_s, limit=limit,
        )
        return data

    def _first_with(self, model: str, method: str, path: str, body: Mapping[str, Any]) -> bytes:
        """One JSON request, to the one host, or to the first server that lists
        ``model`` (routing order), going on to the next on a server error."""
        from ._fleetops import _drive, _route_urls

        try:
            if self._direct:
                return self._raw(method, path, body)
            core = self.fleet_client
            core._maybe_refresh()
            _, data, failures = _drive(in_order(_route_urls(core, model), _accept_json), lambda u: self._raw(method, path, body, u))
        except (AICortexError, ValidationError) as exc:
            _raise(exc)
        if data is None:
            _raise(AllServersFailed(f"every server that lists {model!r} failed {path}", model=model, attempts=tuple(failures)))
        return data  # type: ignore[no-any-return]

    def list(self) -> Any:
        """``GET /api/tags``: a ``ListResponse``. A fleet: one entry per model across the
        fleet (what the last refresh found; see ``aicortex.Client.list``)."""
        try:
            if self._direct:
                return _json_reply(ListResponse, self._raw("GET", "/api/tags", None))
            return _list_response(self.fleet_client.list())
        except AICortexError as exc:
            _raise(exc)

    def ps(self) -> Any:
        """``GET /api/ps``: a ``ProcessResponse``. A fleet: every server's loaded models,
        asked live (a server that does not answer is left out)."""
        try:
            if self._direct:
                return _json_reply(ProcessResponse, self._raw("GET", "/api/ps", None))
            return _ps_response(self.fleet_client.ps())
        except AICortexError as exc:
            _raise(exc)

    def show(self, model: str) -> Any:
        """``POST /api/show``: a ``ShowResponse``, from the first server that lists it."""
        body = _build(lambda: _t.ShowRequest(model=model))
        return _json_reply(ShowResponse, self._first_with(model, "POST", "/api/show", body))

    @overload
    def pull(self, model: str, *, insecure: bool = False, stream: Literal[False] = False) -> ProgressResponse: ...
    @overload
    def pull(self, model: str, *, insecure: bool = False, stream: Literal[True] = True) -> Iterator[ProgressResponse]: ...
    def pull(self, model: str, *, insecure: bool = False, stream: bool = False) -> "ProgressResponse | Iterator[ProgressResponse]":
        """``POST /api/pull``. One host: as the official client. A fleet: on every server
        at once; ``stream=True`` yields every server's progress lines as they arrive (the
        server on ``.aicortex.server``), then one ``"success"``; a server that failed is a
        ``ResponseError`` naming it, after the others finished. Leaving the stream early
        (``break``, ``close()``) stops the pulls, as a closed stream stops Ollama's."""
        body = _build(lambda: _t.PullRequest(model=model, insecure=insecure, stream=stream))
        if self._direct:
            return self._stream_or_json("/api/pull", body, stream)  # type: ignore[no-any-return]
        if not stream:
            try:
                results = self.fleet_client.pull(model, insecure=insecure)
            except AICortexError as exc:
                _raise(exc)
            _status(results, f"pull {model!r}")
            return _riding(ProgressResponse, {"status": "success"}, results)
        return self._fleet_pull(model, insecure)

    def _fleet_pull(self, model: str, insecure: bool) -> Iterator[Any]:
        import queue

        items: "queue.Queue[Any]" = queue.Queue()
        done = object()
        left = threading.Event()  # the caller stopped reading: stop the pulls, as a closed stream does

        def report(progress: Any) -> None:
            if left.is_set():
                raise _PullLeft  # aicortex.Client.pull stops reading every server on it
            items.put(progress)

        def run() -> None:
            try:
                items.put(self.fleet_client.pull(model, on_progress=report, insecure=insecure))
            except _PullLeft:
                pass
            except BaseException as exc:  # handed to the reading thread
                items.put(exc)
            items.put(done)

        thread = threading.Thread(target=run, name="aicortex-ollama-pull", daemon=True)
        thread.start()
        results: Any = None
        try:
            while (item := items.get()) is not done:
                if isinstance(item, BaseException):
                    _raise(item)
                if isinstance(item, builtins.list):
                    results = item
                    continue
                yield _progress(item)
        finally:
            left.set()
        thread.join()
        _status(results or [], f"pull {model!r}")
        yield _riding(ProgressResponse, {"status": "success"}, results)

    def _stream_or_json(self, path: str, body: dict[str, Any], stream: bool) -> Any:
        if not stream:
            try:
                return _json_reply(ProgressResponse, self._raw("POST", path, body))
            except AICortexError as exc:  # the server's HTTP error: a ResponseError, as there
                _raise(exc)
        return self._lines(path, body)

    def _lines(self, path: str, body: dict[str, Any]) -> Iterator[Any]:
        try:
            core = self.fleet_client  # built on first use: a bad setting is a RequestError here too
        except AICortexError as exc:
            _raise(exc)
        lines = core._transport.stream_lines(self._url(), "POST", path, body, connect_timeout_s=core.timeouts.connect, read_timeout_s=self._read_timeout_s)
        try:
            for obj in lines:
                if obj.get("error"):
                    raise ResponseError(str(obj["error"]), -1)
                yield _line_reply(ProgressResponse, obj)
        except AICortexError as exc:
            _raise(exc)
        finally:
            lines.close()

    @overload
    def push(self, model: str, *, insecure: bool = False, stream: Literal[False] = False) -> ProgressResponse: ...
    @overload
    def push(self, model: str, *, insecure: bool = False, stream: Literal[True] = True) -> Iterator[ProgressResponse]: ...
    def push(self, model: str, *, insecure: bool = False, stream: bool = False) -> "ProgressResponse | Iterator[ProgressResponse]":
        """``POST /api/push``, from the one host, or from the first server of the fleet
        that lists the model (the whole reply, then yielded line by line if asked)."""
        body = _build(lambda: _t.PushRequest(model=model, insecure=insecure, stream=stream))
        if self._direct:
            return self._stream_or_json("/api/push", body, stream)  # type: ignore[no-any-return]
        data = self._first_with(model, "POST", "/api/push", {**body, "stream": False})
        response = _json_reply(ProgressResponse, data)
        return iter([response]) if stream else response

    def create(self, model: str, quantize: str | None = None, from_: str | None = None, files: Any = None,
               adapters: Any = None, template: str | None = None, license: Any = None, system: str | None = None,
               parameters: Any = None, messages: Any = None, *, stream: bool = False) -> Any:
        """``POST /api/create``, on the one host, or on every server of the fleet (a
        failure on any is a ``ResponseError`` naming it; ``stream=True`` then yields the
        final status)."""
        body = _build(lambda: _t.CreateRequest(
            model=model, stream=stream, quantize=quantize, from_=from_, files=files, adapters=adapters, license=license,
            template=template, system=system, parameters=parameters, messages=messages,
        ))
        if self._direct:
            return self._stream_or_json("/api/create", body, stream)
        try:
            from ._fleetops import _enabled, ops_sync

            core = self.fleet_client
            core._maybe_refresh()
            results = ops_sync(core, [s.url for s in _enabled(core)], lambda _: ("POST", "/api/create", {**body, "stream": False}))
        except AICortexError as exc:
            _raise(exc)
        status = _status(results, f"create {model!r}")
        response = _riding(ProgressResponse, {"status": status.status}, results)
        return iter([response]) if stream else response

    def delete(self, model: str) -> Any:
        """``DELETE /api/delete``: on the one host, or on every server that lists it.
        ``StatusResponse(status="success")``, or a ``ResponseError`` naming each server
        that failed."""
        body = _build(lambda: _t.DeleteRequest(model=model))
        try:
            if self._direct:
                self._raw("DELETE", "/api/delete", body)
                return StatusResponse(status="success")
            return _status(self.fleet_client.delete(model), f"delete {model!r}")
        except AICortexError as exc:
            _raise(exc)

    def copy(self, source: str, destination: str) -> Any:
        """``POST /api/copy``: on the one host, or on every server that lists ``source``."""
        body = _build(lambda: _t.CopyRequest(source=source, destination=destination))
        try:
            if self._direct:
                self._raw("POST", "/api/copy", body)
                return StatusResponse(status="success")
            return _status(self.fleet_client.copy(source, destination), f"copy {source!r}")
        except AICortexError as exc:
            _raise(exc)


class AsyncClient(_Base):
    """The official ``ollama.AsyncClient`` API over one server or a fleet; as
    :class:`Client`, awaited. ``await client.chat(..., stream=True)`` gives an async
    iterator of responses."""

    _core_class = _AsyncCore

    async def close(self) -> None:
        """Close the connections (and the registry the client opened)."""
        with self._lock:
            core, self._core = self._core, None
        if core is not None:
            await core.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _built(self, core: Any) -> None:
        # The official README lets its AsyncClient go unclosed and httpx says nothing of
        # it; aiohttp's pool would log "Unclosed client session". When the client
        # underneath is let go (or at exit), drop its pool quietly.
        import weakref

        weakref.finalize(core, core._transport.release)

    async def _infer(self, endpoint: Literal["chat", "generate"], body: dict[str, Any], stream: bool) -> Any:
        if stream:
            return self._chunks(endpoint, body)
        try:
            result = await self.fleet_client._forward(endpoint, self._wire(body), stream=False, direct=self._direct, keep_events=False)
        except AICortexError as exc:
            _raise(exc)
        return _whole(endpoint, result, body["model"])

    async def _chunks(self, endpoint: Literal["chat", "generate"], body: dict[str, Any]) -> AsyncIterator[Any]:
        # As the official client's async generator: routing and its errors come while iterating.
        shaper = _Chunks(endpoint, body["model"])
        try:
            stream = await self.fleet_client._forward(endpoint, self._wire(body), stream=True, direct=self._direct, keep_events=False)
        except AICortexError as exc:
            _raise(exc)
        async with stream:
            try:
                async for event in stream:
                    out = shaper.on_event(event, stream)
                    if out is not None:
                        yield out
            except AICortexError as exc:
                _raise(exc)

    async def chat(self, model: str = "", messages: Any = None, *, tools: Any = None, stream: bool = False, think: Any = None,
                   logprobs: bool | None = None, top_logprobs: int | None = None, format: Any = None, options: Any = None,
                   keep_alive: Any = None) -> Any:
        """As :meth:`Client.chat`, awaited: a :class:`ChatResponse`, or with
        ``stream=True`` an async iterator of them."""
        body = chat_body(model, messages, tools=tools, stream=stream, think=think, logprobs=logprobs,
                         top_logprobs=top_logprobs, format=format, options=options, keep_alive=keep_alive)
        return await self._infer("chat", body, stream)

    async def generate(self, model: str = "", prompt: str | None = None, suffix: str | None = None, *, system: str | None = None,
                       template: str | None = None, context: Sequence[int] | None = None, stream: bool = False,
                       think: Any = None, logprobs: bool | None = None, top_logprobs: int | None = None, raw: bool | None = None,
                       format: Any = None, images: Any = None, options: Any = None, keep_alive: Any = None,
                       width: int | None = None, height: int | None = None, steps: int | None = None) -> Any:
        """As :meth:`Client.generate`, awaited."""
        body = generate_body(model, prompt, suffix, system=system, template=template, context=context, stream=stream,
                             think=think, logprobs=logprobs, top_logprobs=top_logprobs, raw=raw, format=format,
                             images=images, options=options, keep_alive=keep_alive, width=width, height=height, steps=steps)
        return await self._infer("generate", body, stream)

    async def embed(self, model: str = "", input: "str | Sequence[str]" = "", truncate: bool | None = None, options: Any = None,
                    keep_alive: Any = None, dimensions: int | None = None) -> EmbedResponse:
        """As :meth:`Client.embed`, awaited."""
        body = _build(lambda: _t.EmbedRequest(model=model, input=input, truncate=truncate, options=options,
                                              keep_alive=keep_alive, dimensions=dimensions))
        if body.get("input") in ("", []):  # Ollama loads the model and answers no vectors
            return _json_reply(EmbedResponse, await self._first_with(model, "POST", "/api/embed", body))  # type: ignore[no-any-return]
        try:
            if self._direct:
                return _json_reply(EmbedResponse, await self._raw("POST", "/api/embed", body, limit=_embed_limit(body)))  # type: ignore[no-any-return]
            result = await self.fleet_client.embed(input, model=model, truncate=truncate, dimensions=dimensions,
                                                   options=body.get("options"), keep_alive=keep_alive)
        except AICortexError as exc:
            _raise(exc)
        return _riding(EmbedResponse, {"model": model, "embeddings": result.embeddings}, result)

    async def embeddings(self, model: str = "", prompt: str | None = None, options: Any = None, keep_alive: Any = None) -> Any:
        """As :meth:`Client.embeddings`, awaited."""
        body = _build(lambda: _t.EmbeddingsRequest(model=model, prompt=prompt, options=options, keep_alive=keep_alive))
        return _json_reply(EmbeddingsResponse, await self._first_with(model, "POST", "/api/embeddings", body))

    async def _raw(self, method: str, path: str, body: Mapping[str, Any] | None, url: str | None = None,
                   limit: int = MAX_PROBE_BYTES) -> bytes:
        core = self.fleet_client
        data: bytes = await core._transport.request_json(
            url or self._url(), method, path, body, connect_timeout_s=core.timeouts.connect, read_timeout_s=self._read_timeout_s, limit=limit,
        )
        return data

    async def _first_with(self, model: str, method: str, path: str, body: Mapping[str, Any]) -> bytes:
        from ._fleetops import _adrive, _route_urls

        try:
            if self._direct:
                return await self._raw(method, path, body)
            core = self.fleet_client
            await core._maybe_refresh()
            _, data, failures = await _adrive(in_order(_route_urls(core, model), _accept_json), lambda u: self._raw(method, path, body, u))
        except (AICortexError, ValidationError) as exc:
            _raise(exc)
        if data is None:
            _raise(AllServersFailed(f"every server that lists {model!r} failed {path}", model=model, attempts=tuple(failures)))
        return data  # type: ignore[no-any-return]

    async def list(self) -> Any:
        """As :meth:`Client.list`, awaited."""
        try:
            if self._direct:
                return _json_reply(ListResponse, await self._raw("GET", "/api/tags", None))
            return _list_response(await self.fleet_client.list())
        except AICortexError as exc:
            _raise(exc)

    async def ps(self) -> Any:
        """As :meth:`Client.ps`, awaited."""
        try:
            if self._direct:
                return _json_reply(ProcessResponse, await self._raw("GET", "/api/ps", None))
            return _ps_response(await self.fleet_client.ps())
        except AICortexError as exc:
            _raise(exc)

    async def show(self, model: str) -> Any:
        """As :meth:`Client.show`, awaited."""
        body = _build(lambda: _t.ShowRequest(model=model))
        return _json_reply(ShowResponse, await self._first_with(model, "POST", "/api/show", body))

    async def pull(self, model: str, *, insecure: bool = False, stream: bool = False) -> Any:
        """As :meth:`Client.pull`, awaited (``stream=True``: an async iterator)."""
        body = _build(lambda: _t.PullRequest(model=model, insecure=insecure, stream=stream))
        if self._direct:
            return await self._stream_or_json("/api/pull", body, stream)
        if not stream:
            try:
                results = await self.fleet_client.pull(model, insecure=insecure)
            except AICortexError as exc:
                _raise(exc)
            _status(results, f"pull {model!r}")
            return _riding(ProgressResponse, {"status": "success"}, results)
        return self._fleet_pull(model, insecure)

    async def _fleet_pull(self, model: str, insecure: bool) -> AsyncIterator[Any]:
        import asyncio

        items: "asyncio.Queue[Any]" = asyncio.Queue()
        task = asyncio.ensure_future(self.fleet_client.pull(model, on_progress=items.put_nowait, insecure=insecure))
        task.add_done_callback(lambda _: items.put_nowait(None))
        try:
            while (item := await items.get()) is not None:
                yield _progress(item)
            try:
                results = task.result()
            except AICortexError as exc:
                _raise(exc)
        finally:
            task.cancel()
        _status(results, f"pull {model!r}")
        yield _riding(ProgressResponse, {"status": "success"}, results)

    async def _stream_or_json(self, path: str, body: dict[str, Any], stream: bool) -> Any:
        if not stream:
            try:
                return _json_reply(ProgressResponse, await self._raw("POST", path, body))
            except AICortexError as exc:  # the server's HTTP error: a ResponseError, as there
                _raise(exc)
        return self._lines(path, body)

    async def _lines(self, path: str, body: dict[str, Any]) -> AsyncIterator[Any]:
        try:
            core = self.fleet_client  # built on first use: a bad setting is a RequestError here too
        except AICortexError as exc:
            _raise(exc)
        lines = core._transport.stream_lines(self._url(), "POST", path, body, connect_timeout_s=core.timeouts.connect, read_timeout_s=self._read_timeout_s)
        try:
            async for obj in lines:
                if obj.get("error"):
                    raise ResponseError(str(obj["error"]), -1)
                yield _line_reply(ProgressResponse, obj)
        except AICortexError as exc:
            _raise(exc)
        finally:
            await lines.aclose()

    async def push(self, model: str, *, insecure: bool = False, stream: bool = False) -> Any:
        """As :meth:`Client.push`, awaited."""
        body = _build(lambda: _t.PushRequest(model=model, insecure=insecure, stream=stream))
        if self._direct:
            return await self._stream_or_json("/api/push", body, stream)
        response = _json_reply(ProgressResponse, await self._first_with(model, "POST", "/api/push", {**body, "stream": False}))
        return _aiter_one(response) if stream else response

    async def create(self, model: str, quantize: str | None = None, from_: str | None = None, files: Any = None,
                     adapters: Any = None, template: str | None = None, license: Any = None, system: str | None = None,
                     parameters: Any = None, messages: Any = None, *, stream: bool = False) -> Any:
        """As :meth:`Client.create`, awaited."""
        body = _build(lambda: _t.CreateRequest(
            model=model, stream=stream, quantize=quantize, from_=from_, files=files, adapters=adapters, license=license,
            template=template, system=system, parameters=parameters, messages=messages,
        ))
        if self._direct:
            return await self._stream_or_json("/api/create", body, stream)
        try:
            from ._fleetops import _enabled, aops

            core = self.fleet_client
            await core._maybe_refresh()
            results = await aops(core, [s.url for s in _enabled(core)], lambda _: ("POST", "/api/create", {**body, "stream": False}))
        except AICortexError as exc:
            _raise(exc)
        status = _status(results, f"create {model!r}")
        response = _riding(ProgressResponse, {"status": status.status}, results)
        return _aiter_one(response) if stream else response

    async def delete(self, model: str) -> Any:
        """As :meth:`Client.delete`, awaited."""
        body = _build(lambda: _t.DeleteRequest(model=model))
        try:
            if self._direct:
                await self._raw("DELETE", "/api/delete", body)
                return StatusResponse(status="success")
            return _status(await self.fleet_client.delete(model), f"delete {model!r}")
        except AICortexError as exc:
            _raise(exc)

    async def copy(self, source: str, destination: str) -> Any:
        """As :meth:`Client.copy`, awaited."""
        body = _build(lambda: _t.CopyRequest(source=source, destination=destination))
        try:
            if self._direct:
                await self._raw("POST", "/api/copy", body)
                return StatusResponse(status="success")
            return _status(await self.fleet_client.copy(source, destination), f"copy {source!r}")
        except AICortexError as exc:
            _raise(exc)


async def _aiter_one(item: Any) -> AsyncIterator[Any]:
    yield item


# -- module-level functions: one default client, built on first use (no I/O at import) --------
_default = Client()

chat = _default.chat
generate = _default.generate
embed = _default.embed
embeddings = _default.embeddings
pull = _default.pull
push = _default.push
create = _default.create
delete = _default.delete
list = _default.list
copy = _default.copy
show = _default.show
ps = _default.ps
create_blob = _default.create_blob
web_search = _default.web_search
web_fetch = _default.web_fetch
systemone = _default.systemone

# The official public types this module does not extend (WebSearchResponse, the
# SystemOne* types...), re-exported unchanged.
globals().update({name: getattr(_official, name) for name in _official.__all__ if name not in globals() and name[0].isupper()})
