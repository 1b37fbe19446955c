"""``Client`` and ``AsyncClient`` wire the fleet view, routing, the request flow and the
transports together; ``BaseClient`` holds what both share (settings, request preparation,
routing, health bookkeeping), as ``httpx._client.BaseClient`` does.

The module-level ``chat()``, ``models()``, ``list_model_servers()`` and ``refresh()`` use a
default :class:`Client` built on first use (never at import). Importing aicortex loads
neither httpx, aiohttp nor sqlite-utils: they are imported when the first client is built.
"""

from __future__ import annotations

import atexit
import builtins
import os
import random
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Callable, Generator, Iterable, Literal, Mapping, Sequence, overload

from ._config import Timeouts, env_model
from ._exceptions import AICortexError, AllServersFailed, ConfigError, ModelNotFound
from ._failover import MIDSTREAM_POLICIES, MidstreamPolicy
from ._models import Reply, Server, event_filter
from ._protocol import build_messages, encode_body
from ._session import Candidate, ChatSession
from ._tools import DEFAULT_TOOL_ROUNDS
from ._stream import AsyncStream, Stream

if TYPE_CHECKING:  # pragma: no cover
    import sqlite_utils

    from ._bench import BenchResult
    from ._discovery import ProbeResult, RefreshReport
    from ._embed import EmbedPlan, EmbedResult
    from ._fleet import FleetView
    from ._fleetops import OpResult, PsReport, PullProgress, PullResult, ShowResult
    from ._models import FleetModel
    from ._registry import Registry
    from ._routing import Route
    from ._tools import ToolLoop

__all__ = ["BaseClient", "Client", "AsyncClient", "chat", "generate", "embed", "models", "list_model_servers", "refresh", "DEFAULT_REFRESH_TTL_S"]

#: Registry data older than this (seconds) is refreshed before a chat. 10 minutes.
DEFAULT_REFRESH_TTL_S = 600.0

def _looks_like_url(value: object) -> bool:
    return isinstance(value, str) and value.strip().lower().startswith(("http://", "https://"))


class BaseClient:
    """What :class:`Client` and :class:`AsyncClient` share: settings, the registry and its
    in-memory fleet view, routing and request preparation.

    Args:
        registry: a :class:`~aicortex.Registry`; a path to a registry file; ``":memory:"``;
            a server URL or a list of URLs (the official client's habit:
            ``Client("http://gpu1:11434")`` builds an in-memory fleet of those servers,
            refreshed on first use; no file is created); or ``None`` for the default
            registry (``AICORTEX_DB`` or the user data dir).
        model: default model for :meth:`chat` (else ``AICORTEX_MODEL``).
        timeout: a :class:`~aicortex.Timeouts`, a number of seconds for every
            per-attempt limit, or a dict of ``Timeouts`` fields.
        on_midstream: after a failure once output was sent: ``"continue"`` (default:
            prefill the partial reply on the next server), ``"restart"`` or ``"raise"``.
        refresh_ttl_s: registry data older than this many seconds is refreshed
            (Ollama /api/version, /api/tags, /api/ps) before a chat; ``None`` = only when
            never refreshed.
        probe_timeout_s: read timeout of each discovery probe, seconds.
        headers: extra HTTP headers for every server (e.g. ``{"Authorization": ...}``,
            read from your own environment; nothing is stored in the registry).
        verify: TLS certificate verification: ``True`` (default), ``False``, or the path
            of a CA bundle.
        spread_load: shuffle servers that are equal in every routing respect (warmth,
            priority, in-flight count, measured TTFT band) to spread load.
        max_connections: size of the HTTP connection pool (streams open at once, all
            servers together); a full pool is a ``PoolTimeout``, not the server's fault.
        keep_events: streams keep every event in ``stream.events`` (default); ``False``
            keeps none, so a long reply holds no more memory than its text.

    Raises:
        ConfigError: an unknown ``on_midstream``, a bad timeout, an unreadable CA bundle.
        RegistryError: the registry file cannot be opened.
    """

    def __init__(
        self,
        registry: "Registry | str | os.PathLike[str] | sqlite_utils.Database | Sequence[str] | None" = None,
        *,
        model: str | None = None,
        timeout: "Timeouts | float | dict[str, float | None] | None" = Timeouts(),
        on_midstream: MidstreamPolicy = "continue",
        refresh_ttl_s: float | None = DEFAULT_REFRESH_TTL_S,
        probe_timeout_s: float = 5.0,
        headers: Mapping[str, str] | None = None,
        verify: bool | str = True,
        spread_load: bool = True,
        max_connections: int = 100,
        keep_events: bool = True,
    ) -> None:
        from ._fleet import FleetView
        from ._registry import Registry

        _check_policy(on_midstream)
        self.timeouts = Timeouts.of(timeout)
        self.model = model
        self.on_midstream = on_midstream
        self.refresh_ttl_s = refresh_ttl_s
        self.probe_timeout_s = probe_timeout_s
        self.keep_events = keep_events
        self._rng = random.Random() if spread_load else None
        self._transport = self._make_transport(headers=headers, verify=verify, max_connections=max_connections)
        if isinstance(registry, Registry):
            self.registry, self._owns_registry = registry, False
        elif isinstance(registry, str) and _looks_like_url(registry) or (
            isinstance(registry, (list, tuple)) and registry and all(isinstance(u, str) for u in registry)
        ):
            urls: list[str] = [registry] if isinstance(registry, str) else list(registry)
            self.registry, self._owns_registry = Registry.memory(), True
            for url in urls:
                self.registry.add(url)
        else:
            self.registry, self._owns_registry = Registry(registry), True  # type: ignore[arg-type]
        try:
            self._fleet: "FleetView" = FleetView(self.registry)
        except BaseException:
            if self._owns_registry:
                self.registry.close()
            raise

    def _make_transport(self, **kw: Any) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def fleet(self) -> "FleetView":
        """The in-memory fleet view (breakers, EWMA metrics, in-flight counts) that
        routing reads; ``fleet.storage_errors`` counts registry writes that failed."""
        return self._fleet

    # -- routing ------------------------------------------------------------------------------
    def _stale(self) -> bool:
        last = self._fleet.snapshot.last_refresh_at
        return last is None or (self.refresh_ttl_s is not None and time.time() - last > self.refresh_ttl_s)

    def _route_now(self, model: str) -> "Route":
        route = self._fleet.route(model, now=time.time(), rng=self._rng)
        if not route.candidates and not route.skipped:
            raise self._model_not_found(model)
        return route

    def _model_not_found(self, model: str) -> AICortexError:
        snap = self._fleet.snapshot
        servers = [s for s in snap.servers if s.enabled]
        known = sorted({e.name for entries in snap.entries.values() for _, e in entries})
        if not servers:
            return ModelNotFound(
                f"no registered server lists model {model!r}: no enabled server is registered: "
                "add one with `aicortex servers add http://HOST:11434`",
                model=model,
            )
        down = [s for s in servers if s.status == "down"]
        if len(down) == len(servers):
            reasons = "; ".join(f"{s.url}: {s.last_error or 'down'}" for s in down)
            return AllServersFailed(
                f"every server was down at the last refresh, so whether one has model {model!r} is "
                f"not known: {reasons}",
                model=model,
                attempts=(),
            )
        hint = f"models available: {', '.join(known[:20]) or 'none'}"
        if down:
            hint += f"; {len(down)} of {len(servers)} servers are down ({down[0].name}: {down[0].last_error})"
        hint += "; add a server that has it (`aicortex servers add URL`), pull it there, then `aicortex refresh`"
        return ModelNotFound(f"no registered server lists model {model!r}: {hint}", model=model)

    def _pinned(self, route: "Route", model: str, servers: Sequence[str]) -> "Route":
        from ._routing import Route

        urls = {self.registry.get(s).url for s in servers}
        chosen = [
            Candidate(server=c.server, warm=c.warm) for c in route.candidates + route.skipped if c.server.url in urls
        ]
        if not chosen:
            raise ModelNotFound(
                f"none of the servers {', '.join(servers)} lists model {model!r}; "
                f"`aicortex models {model}` shows which do",
                model=model,
            )
        return Route(candidates=chosen)

    def _session(
        self,
        prompt: "str | Sequence[Mapping[str, Any]]",
        *,
        model: str | None,
        system: str | None,
        options: Mapping[str, Any] | None,
        format: str | Mapping[str, Any] | None,
        think: bool | str | None,
        keep_alive: str | float | None,
        tools: "Sequence[Mapping[str, Any] | Callable[..., Any]] | None",
        on_midstream: MidstreamPolicy | None,
        timeout: "Timeouts | float | dict[str, float | None] | None",
        more: Mapping[str, Any] | None = None,
        output_type: Any = None,
    ) -> Generator[str, "Route", ChatSession]:
        """Prepare one chat (see :meth:`_prepare`)."""
        from ._tools import prepare_tools

        messages = build_messages(prompt, system)
        schemas, _ = prepare_tools(tools)  # Python functions become Ollama tool schemas
        request = {"options": options, "format": _format(format, output_type), "think": think, "keep_alive": keep_alive, "tools": schemas}
        request.update(more or {})
        return self._prepare("chat", model, on_midstream, timeout, request, messages=messages, output_type=output_type)

    def _prepare(
        self,
        endpoint: str,
        model: str | None,
        on_midstream: MidstreamPolicy | None,
        timeout: "Timeouts | float | dict[str, float | None] | None",
        request: dict[str, Any],
        *,
        messages: list[dict[str, Any]] | None = None,
        prompt: str = "",
        output_type: Any = None,
        body: Mapping[str, Any] | None = None,
    ) -> Generator[str, "Route", ChatSession]:
        """Prepare one request: validate everything the caller gave (``ConfigError``
        before any request, here and not after ``start``), then receive the route for the
        model (sent in by the caller, which refreshes first if needed) and build the session."""
        name = _require_model(model or self.model or env_model())
        policy = on_midstream or self.on_midstream
        _check_policy(policy)
        timeouts = self.timeouts if timeout is None else Timeouts.of(timeout, base=self.timeouts)
        encode_body({"messages": messages, "prompt": prompt, **request})
        route = yield name
        session = ChatSession(
            model=name,
            messages=messages or (),
            candidates=route.candidates,
            skipped=route.skipped,
            timeouts=timeouts,
            policy=policy,
            request=request,
            headers=_server_headers(c.server for c in route.candidates + route.skipped),
            endpoint=endpoint,
            prompt=prompt,
            body=body,
        )
        session.output_type = output_type
        return session

    def _forward_session(
        self,
        endpoint: str,
        body: Mapping[str, Any],
        *,
        on_midstream: MidstreamPolicy | None = None,
        timeout: "Timeouts | float | dict[str, float | None] | None" = None,
    ) -> Generator[str, "Route", ChatSession]:
        """Prepare a request whose whole Ollama body the caller built (the drop-in
        :mod:`aicortex.ollama`, a gateway): ``body`` is sent as it is, with its own
        ``stream`` value; a mid-stream continuation replaces only ``messages`` (chat) or
        ``prompt`` (generate, ``raw`` only). See :meth:`_prepare`.

        Raises:
            ConfigError: ``body`` is not a JSON object with a ``model``, its ``messages``
                is not a list of objects (chat) or its ``prompt`` not a string (generate).
        """
        if not isinstance(body, Mapping):
            raise ConfigError(f"the request body must be a JSON object, got {type(body).__name__}")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise ConfigError("the request body has no model: add \"model\": \"NAME\"")
        request = {"format": body.get("format"), "raw": body.get("raw")}
        if endpoint == "generate":
            prompt = body.get("prompt") or ""
            if not isinstance(prompt, str):
                raise ConfigError(f"prompt must be a string, got {type(prompt).__name__}")
            return self._prepare(endpoint, model, on_midstream, timeout, request, prompt=prompt, body=body)
        messages = body.get("messages") or []
        if not isinstance(messages, list) or not all(isinstance(m, Mapping) for m in messages):
            raise ConfigError("messages must be a list of message objects ({\"role\": ..., \"content\": ...})")
        return self._prepare(endpoint, model, on_midstream, timeout, request, messages=list(messages), body=body)

    def _direct_route(self) -> "Route":
        """Every enabled server as a candidate, in registry order, with no discovery
        and no breaker (a one-host drop-in client sends where it was told to)."""
        from ._routing import Route

        servers = [s for s in self._fleet.snapshot.servers if s.enabled]
        return Route(candidates=[Candidate(server=s, warm=True) for s in servers])

    def _embed_plan(
        self,
        input: "str | Sequence[str]",
        model: str | None,
        route_for: "Callable[[str], Route]",
        *,
        truncate: bool | None,
        dimensions: int | None,
        options: Mapping[str, Any] | None,
        keep_alive: str | float | None,
        batch_size: int | None,
        timeout: "Timeouts | float | dict[str, float | None] | None",
        servers: Sequence[str] | None,
    ) -> "tuple[EmbedPlan, Timeouts]":
        from ._embed import EmbedPlan

        inputs = [input] if isinstance(input, str) else input
        if not isinstance(inputs, (list, tuple)) or not inputs or not all(isinstance(t, str) for t in inputs):
            raise ConfigError("input must be a str or a non-empty list of str")
        name = _require_model(model or self.model or env_model())
        timeouts = self.timeouts if timeout is None else Timeouts.of(timeout, base=self.timeouts)
        request = {"truncate": truncate, "dimensions": dimensions, "options": options, "keep_alive": keep_alive}
        encode_body(request)
        route = route_for(name)
        if servers is not None:
            route = self._pinned(route, name, servers)
        self._transport.set_server_headers(_server_headers(c.server for c in route.candidates))
        plan = EmbedPlan(name, inputs, route.candidates, batch_size=batch_size, request=request, deadline_s=timeouts.deadline)
        return plan, timeouts

    def _generate_session(
        self,
        prompt: str,
        *,
        model: str | None,
        suffix: str | None,
        system: str | None,
        template: str | None,
        context: Sequence[int] | None,
        raw: bool | None,
        images: "Sequence[str | bytes | os.PathLike[str]] | None",
        format: str | Mapping[str, Any] | None,
        options: Mapping[str, Any] | None,
        think: bool | str | None,
        keep_alive: str | float | None,
        on_midstream: MidstreamPolicy | None,
        timeout: "Timeouts | float | dict[str, float | None] | None",
        more: Mapping[str, Any] | None = None,
        output_type: Any = None,
    ) -> Generator[str, "Route", ChatSession]:
        """Prepare one /api/generate request (see :meth:`_prepare`)."""
        from ._protocol import build_generate_body

        if not isinstance(prompt, str):
            raise ConfigError(f"prompt must be a str, got {type(prompt).__name__}")
        request: dict[str, Any] = {
            "suffix": suffix, "system": system, "template": template, "context": context, "raw": raw,
            "images": encode_images(images), "format": _format(format, output_type), "options": options, "think": think,
            "keep_alive": keep_alive, **(more or {}),
        }
        build_generate_body("m", prompt, **request)  # raw with template/system/context: ConfigError now
        return self._prepare("generate", model, on_midstream, timeout, request, prompt=prompt, output_type=output_type)

    def _close_registry(self) -> None:
        self._fleet.close()
        if self._owns_registry:
            self.registry.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} registry={self.registry!r}>"


_CHAT_DOC = """Send a chat to the fleet: the first healthy server with the model answers.

        Args:
            prompt: a ``str`` (one user message) or a list of Ollama message dicts
                (``{"role": "user", "content": "..."}``; a trailing assistant message
                is a prefill the server continues).
            model: model name (else the client's, else ``AICORTEX_MODEL``).
            stream: ``True`` returns a stream of events; ``False`` a :class:`Reply`.
            system: a system prompt, prepended as a system message.
            options, format, think, keep_alive: passed to Ollama /api/chat as is
                (Ollama ``docs/api.md``, "Generate a chat completion").
            tools: Ollama tool dicts, or Python functions (their schema is built from the
                signature and docstring).
            run_tools: run the tool calls of each reply (the Python functions in
                ``tools``), send the results back as ``tool`` messages and ask again,
                until a reply has no tool call or ``max_tool_rounds`` rounds of calls ran
                (default 8). Returns the final answer's :class:`Reply` with
                ``tool_results`` and every round's ``attempts``; with ``stream=True``, a
                stream of every round's events, one ``"tool_result"`` per call run and one
                ``start``/``end`` for the whole loop. A tool that raises, or an unknown
                tool name, is answered with the error's text (never raised).
            on_midstream: overrides the client's mid-stream policy for this request.
            timeout: overrides the client's :class:`Timeouts` for this request (a dict
                changes only the fields it names; a number sets every per-attempt limit
                and keeps the client's deadline).
            servers: names or URLs to restrict this request to (e.g. to measure one
                server); they are tried in routing order, circuit breakers ignored.
            keep_events: overrides the client's ``keep_events`` for this stream.
            include: the event types a stream hands out (``"token"``, ``"tool_call"``...,
                or the aliases ``"generating"``, ``"thinking"``, ``"tool_calling"``);
                ``stream.events`` keeps every event all the same.
            output_type: a pydantic model class: its JSON schema is sent as ``format``
                and ``reply.output`` / ``stream.output`` is the reply validated as it
                (``InvalidOutput`` when it does not validate).
            logprobs, top_logprobs, truncate, shift: passed to Ollama as they are
                (``docs/api.md``); logprobs ride on the token events and ``reply.logprobs``.

        Raises:
            ConfigError: no model, an empty prompt, a malformed message list, a value
                that is not JSON (e.g. in ``options``), an unknown ``include`` name, before
                any request; with ``run_tools=True``, no tool given as a function, a bad
                ``max_tool_rounds``, or (``Client`` only) an ``async def`` tool.
            InvalidOutput: with ``output_type``, a reply that does not validate.
            ModelNotFound: no enabled server lists the model.
            AllServersFailed: every candidate failed (``.attempts``), or every server was
                down at the last refresh.
            BadRequest: HTTP 400 from a server (no failover: the request is wrong).
            DeadlineExceeded: the total deadline ran out.
            With ``stream=True`` the last three are raised while iterating.
        """


_GENERATE_DOC = """A completion from the fleet over Ollama /api/generate (``docs/api.md``,
        "Generate a completion"), with the same events, metrics, routing and failover
        rules as :meth:`chat`.

        Mid-stream, a ``raw=True`` prompt is continued exactly on the next server (the
        prompt plus the partial text, no template in between); any other prompt restarts
        (a ``reset`` event), since the server's template would wrap the partial text.

        Args:
            prompt: the prompt text.
            suffix, system, template, context, raw, format, options, think, keep_alive:
                passed to Ollama as they are (``raw`` cannot go with ``template``,
                ``system`` or ``context``: a ``ConfigError``).
            images: file paths, raw ``bytes`` or base64 strings (sent as base64).
            stream, model, on_midstream, timeout, servers, keep_events, include,
                output_type, logprobs, top_logprobs, truncate, shift: as :meth:`chat`.

        Returns a :class:`Reply` (``reply.context`` holds Ollama's final ``context`` when
        not raw) or, with ``stream=True``, a stream. Raises as :meth:`chat`.
        """


class Client(BaseClient):
    """A fleet of Ollama servers seen as one (blocking I/O; see :class:`AsyncClient`).

    Arguments as :class:`BaseClient`. A context manager: leaving it closes the HTTP pool,
    writes the pending health outcomes and, if the client opened it, closes the registry.
    Every method is thread-safe; one client is meant to be shared by many threads.
    """

    def _make_transport(self, **kw: Any) -> Any:
        from ._transport import Transport

        return Transport(**kw)

    # -- lifecycle --------------------------------------------------------------------------
    def close(self) -> None:
        """Close the HTTP connection pool, write pending outcomes, and close the registry
        if this client opened it."""
        self._transport.close()
        self._close_registry()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- fleet ------------------------------------------------------------------------------
    def refresh(
        self,
        servers: Sequence[str] | None = None,
        *,
        max_workers: int = 16,
        on_result: "Callable[[ProbeResult], None] | None" = None,
    ) -> "RefreshReport":
        """Probe servers concurrently and store what they serve (Ollama /api/version,
        /api/tags, /api/ps).

        Args:
            servers: URLs or names to probe; default every enabled server.
            max_workers: probes in flight at once.
            on_result: called with each :class:`ProbeResult` as it is stored.

        Returns a :class:`RefreshReport`. Never raises for a server that is down: it is
        marked ``down`` with its error. Raises ``RegistryError`` for an unknown name.
        """
        from ._discovery import refresh_registry

        urls = _refresh_urls(self, servers)
        report = refresh_registry(
            self.registry,
            self._transport,
            urls,
            connect_timeout_s=self.timeouts.connect,
            read_timeout_s=self.probe_timeout_s,
            max_workers=max_workers,
            on_result=on_result,
        )
        self._fleet.reload()
        return report

    def _maybe_refresh(self) -> None:
        if self._stale():
            with _refresh_lock(self):
                if self._stale():
                    try:
                        self.refresh()
                    except AICortexError as exc:  # a registry that cannot be written: go on
                        self._fleet._storage_failed("refresh", exc)

    def models(self) -> builtins.list[str]:
        """Sorted distinct model names across enabled servers (as Ollama /api/tags names them).

        Refreshes first if the registry was never refreshed or is older than the TTL.
        """
        self._maybe_refresh()
        return self.registry.models()

    def route(self, model: str) -> "Route":
        """How :meth:`chat` would route ``model`` now: ``candidates`` in try order (with
        each breaker state) and ``skipped`` servers (breaker open, in cooldown).

        Raises:
            ModelNotFound: no enabled server lists the model.
            AllServersFailed: every server was down at the last refresh.
        """
        self._maybe_refresh()
        return self._route_now(_require_model(model))

    def list_model_servers(self, model: str) -> builtins.list[Server]:
        """The enabled servers that list ``model``, in the order :meth:`chat` would try
        them; servers whose circuit breaker is open (in cooldown) come last.

        Raises:
            ModelNotFound: no enabled server lists it.
        """
        route = self.route(_require_model(model))
        return [c.server for c in route.candidates + route.skipped]

    def bench(
        self,
        model: str,
        runs: int = 5,
        *,
        prompt: str | None = None,
        max_tokens: int | None = 32,
        warmup: int = 0,
        on_result: "Callable[[BenchResult], None] | None" = None,
    ) -> "builtins.list[BenchResult]":
        """Measure each enabled server that lists ``model`` with ``runs`` short replies.

        Each reply is pinned to one server (no failover). Returns one
        :class:`~aicortex._bench.BenchResult` per server, in try order, with p50/p95 TTFT
        (seconds) and tokens/s (client-measured; p50 server-reported). The figures are
        stored in the registry (``bench`` table) and feed the EWMA metrics routing uses.

        Args:
            runs: measured replies per server; ``warmup``: extra ones first (e.g. 1 to
                load a cold model), left out of the figures.
            prompt: the user message (default: count from 1 to 20).
            max_tokens: ``options.num_predict`` of each reply (``None``: server default).
            on_result: called with each server's result as soon as it is measured.

        Raises:
            ModelNotFound: no enabled server lists the model.
            ConfigError: ``runs < 1`` or ``warmup < 0``.
        """
        from ._bench import DEFAULT_BENCH_PROMPT, bench_servers

        return bench_servers(
            self, _require_model(model), runs, prompt=prompt or DEFAULT_BENCH_PROMPT,
            max_tokens=max_tokens, warmup=warmup, on_result=on_result,
        )

    # -- fleet operations (the logic is in aicortex._fleetops) -----------------------------------
    def list(self) -> "builtins.list[FleetModel]":
        """The fleet's models from the registry: one :class:`~aicortex.FleetModel` per model
        name (``x`` and ``x:latest`` are one), with the enabled servers that list it, its
        size in bytes, digest(s), details and where it was loaded, sorted by name.

        Refreshes first when the registry is stale, as :meth:`models` does; for what is
        loaded right now, ask :meth:`ps`.
        """
        from ._fleetops import fleet_models

        self._maybe_refresh()
        return fleet_models(self._fleet.snapshot)

    def ps(self, servers: Sequence[str] | None = None) -> "PsReport":
        """What is loaded where, live: ``GET /api/ps`` on every enabled server (or the
        ``servers`` named) concurrently, in threads.

        Returns a :class:`~aicortex.PsReport`: iterate it for
        :class:`~aicortex.LoadedModel` entries (server, name, size, size_vram, expires_at,
        context_length); a server that did not answer is in ``report.errors``, never
        raised. Raises ``RegistryError`` for an unknown server name.
        """
        from ._fleetops import ps_sync

        return ps_sync(self, servers)

    def show(self, model: str) -> "ShowResult":
        """``POST /api/show`` for ``model`` on the first server that lists it (routing
        order), going on to the next on a server error.

        Returns a :class:`~aicortex.ShowResult`: the reply's JSON object (a ``dict``:
        ``template``, ``details``, ``model_info``, ``capabilities``...) with ``.server``
        (the URL that answered) and ``.attempts`` (the servers that failed before it).

        Raises:
            ModelNotFound: no enabled server lists the model.
            AllServersFailed: every server that lists it failed (``.attempts``).
            BadRequest: HTTP 400 (no failover: the request is wrong).
        """
        from ._fleetops import show_sync

        return show_sync(self, _require_model(model))

    def pull(
        self,
        model: str,
        servers: Sequence[str] | None = None,
        on_progress: "Callable[[PullProgress], None] | None" = None,
        *,
        insecure: bool = False,
        timeout_s: float | None = 600.0,
    ) -> "builtins.list[PullResult]":
        """``POST /api/pull`` of ``model`` on every enabled server (or the ``servers``
        named or given by URL), concurrently, reading each server's progress lines as
        they arrive; then refreshes the servers that succeeded, so the registry lists it.

        Args:
            on_progress: called with each :class:`~aicortex.PullProgress` (server, status,
                digest, total, completed), from the calling thread, in the order each
                server sent its lines (servers interleaved).
            insecure: Ollama's ``insecure`` (a registry without TLS).
            timeout_s: the longest silence between two progress lines, seconds.

        Returns one :class:`~aicortex.PullResult` per server, in the order given: ``ok``,
        or the ``error`` (an in-stream ``{"error": ...}``, an HTTP error, a server that is
        down); one server's failure is never raised. Raises ``RegistryError`` for an
        unknown server name; an exception from ``on_progress`` stops the pulls' reading
        and is raised.
        """
        from ._fleetops import pull_sync

        return pull_sync(self, _require_model(model), servers, on_progress, insecure, timeout_s)

    def delete(self, model: str, servers: Sequence[str] | None = None) -> "builtins.list[OpResult]":
        """``DELETE /api/delete`` of ``model`` on every enabled server that lists it (or the
        ``servers`` given), concurrently; then refreshes the servers where it succeeded.

        Returns one :class:`~aicortex.OpResult` per server (``ok``, ``error``); never
        raises for one server. Raises ``ModelNotFound`` when no server is given and none
        lists the model.
        """
        from ._fleetops import delete_sync

        return delete_sync(self, _require_model(model), servers)

    def copy(self, source: str, destination: str, servers: Sequence[str] | None = None) -> "builtins.list[OpResult]":
        """``POST /api/copy`` of ``source`` to ``destination`` on every enabled server that
        lists ``source`` (or the ``servers`` given), concurrently; then refreshes the
        servers where it succeeded. Returns and raises as :meth:`delete`.
        """
        from ._fleetops import copy_sync

        return copy_sync(self, _require_model(source), _require_model(destination), servers)

    def warm(
        self, model: str, servers: Sequence[str] | None = None, *, keep_alive: str | float | None = None
    ) -> "builtins.list[OpResult]":
        """Load ``model`` into memory: an empty ``POST /api/generate`` (Ollama loads the
        model and answers ``done_reason: "load"``), on the first server in routing order
        (going on to the next when one fails), or on every server in ``servers``. Then
        refreshes the servers where it succeeded, so routing sees the model warm.

        Args:
            keep_alive: how long it stays loaded (Ollama's ``keep_alive``: ``"10m"``,
                seconds, ``-1`` for ever); default the server's (5 minutes).

        Returns one :class:`~aicortex.OpResult` per server tried. Raises
        ``ModelNotFound`` when no server is given and none lists the model.
        """
        from ._fleetops import warm_sync

        return warm_sync(self, _require_model(model), servers, keep_alive)

    def unload(self, model: str, servers: Sequence[str] | None = None) -> "builtins.list[OpResult]":
        """Unload ``model`` (an empty ``POST /api/generate`` with ``keep_alive: 0``) on
        every server where a live ``/api/ps`` shows it loaded (or on the ``servers``
        given); then refreshes them. Returns one :class:`~aicortex.OpResult` per server
        (none when it is loaded nowhere).
        """
        from ._fleetops import unload_sync

        return unload_sync(self, _require_model(model), servers)

    # -- chat -------------------------------------------------------------------------------
    @overload
    def chat(
        self, prompt: "str | Sequence[Mapping[str, Any]]", *, stream: Literal[False] = False, model: str | None = ...,
        system: str | None = ..., options: Mapping[str, Any] | None = ..., format: str | Mapping[str, Any] | None = ...,
        think: bool | str | None = ..., keep_alive: str | float | None = ..., tools: "Sequence[Mapping[str, Any] | Callable[..., Any]] | None" = ..., run_tools: bool = ..., max_tool_rounds: int = ...,
        on_midstream: MidstreamPolicy | None = ..., timeout: "Timeouts | float | dict[str, float | None] | None" = ...,
        servers: Sequence[str] | None = ..., keep_events: bool | None = ...,
        include: "str | Sequence[str] | None" = ..., output_type: Any = ..., logprobs: bool | None = ...,
        top_logprobs: int | None = ..., truncate: bool | None = ..., shift: bool | None = ...,
    ) -> Reply: ...
    @overload
    def chat(
        self, prompt: "str | Sequence[Mapping[str, Any]]", *, stream: Literal[True], model: str | None = ...,
        system: str | None = ..., options: Mapping[str, Any] | None = ..., format: str | Mapping[str, Any] | None = ...,
        think: bool | str | None = ..., keep_alive: str | float | None = ..., tools: "Sequence[Mapping[str, Any] | Callable[..., Any]] | None" = ..., run_tools: bool = ..., max_tool_rounds: int = ...,
        on_midstream: MidstreamPolicy | None = ..., timeout: "Timeouts | float | dict[str, float | None] | None" = ...,
        servers: Sequence[str] | None = ..., keep_events: bool | None = ...,
        include: "str | Sequence[str] | None" = ..., output_type: Any = ..., logprobs: bool | None = ...,
        top_logprobs: int | None = ..., truncate: bool | None = ..., shift: bool | None = ...,
    ) -> Stream: ...

    def chat(
        self,
        prompt: "str | Sequence[Mapping[str, Any]]",
        *,
        stream: bool = False,
        model: str | None = None,
        system: str | None = None,
        options: Mapping[str, Any] | None = None,
        format: str | Mapping[str, Any] | None = None,
        think: bool | str | None = None,
        keep_alive: str | float | None = None,
        tools: "Sequence[Mapping[str, Any] | Callable[..., Any]] | None" = None,
        run_tools: bool = False,
        max_tool_rounds: int = DEFAULT_TOOL_ROUNDS,
        on_midstream: MidstreamPolicy | None = None,
        timeout: "Timeouts | float | dict[str, float | None] | None" = None,
        servers: Sequence[str] | None = None,
        keep_events: bool | None = None,
        include: "str | Sequence[str] | None" = None,
        output_type: Any = None,
        logprobs: bool | None = None,
        top_logprobs: int | None = None,
        truncate: bool | None = None,
        shift: bool | None = None,
    ) -> Reply | Stream:
        if run_tools:
            return self._tool_loop(
                prompt, stream, max_tool_rounds, dict(
                    model=model, system=system, options=options, format=format, think=think, keep_alive=keep_alive,
                    tools=tools, on_midstream=on_midstream, timeout=timeout, servers=servers, output_type=output_type,
                    logprobs=logprobs, top_logprobs=top_logprobs, truncate=truncate, shift=shift,
                    keep_events=keep_events, include=include,
                ),
            )
        prep = self._session(
            prompt, model=model, system=system, options=options, format=format, think=think,
            keep_alive=keep_alive, tools=tools, on_midstream=on_midstream, timeout=timeout,
            more={"logprobs": logprobs, "top_logprobs": top_logprobs, "truncate": truncate, "shift": shift},
            output_type=output_type,
        )
        return self._run(prep, stream, servers, keep_events, include)

    chat.__doc__ = _CHAT_DOC

    @overload
    def generate(
        self, prompt: str, *, stream: Literal[False] = False, model: str | None = ..., suffix: str | None = ..., system: str | None = ...,
        template: str | None = ..., context: Sequence[int] | None = ..., raw: bool | None = ...,
        images: "Sequence[str | bytes | os.PathLike[str]] | None" = ..., format: str | Mapping[str, Any] | None = ...,
        options: Mapping[str, Any] | None = ..., think: bool | str | None = ..., keep_alive: str | float | None = ...,
        on_midstream: MidstreamPolicy | None = ..., timeout: "Timeouts | float | dict[str, float | None] | None" = ...,
        servers: Sequence[str] | None = ..., keep_events: bool | None = ...,
        include: "str | Sequence[str] | None" = ..., output_type: Any = ..., logprobs: bool | None = ...,
        top_logprobs: int | None = ..., truncate: bool | None = ..., shift: bool | None = ...,
    ) -> Reply: ...
    @overload
    def generate(
        self, prompt: str, *, stream: Literal[True], model: str | None = ..., suffix: str | None = ..., system: str | None = ...,
        template: str | None = ..., context: Sequence[int] | None = ..., raw: bool | None = ...,
        images: "Sequence[str | bytes | os.PathLike[str]] | None" = ..., format: str | Mapping[str, Any] | None = ...,
        options: Mapping[str, Any] | None = ..., think: bool | str | None = ..., keep_alive: str | float | None = ...,
        on_midstream: MidstreamPolicy | None = ..., timeout: "Timeouts | float | dict[str, float | None] | None" = ...,
        servers: Sequence[str] | None = ..., keep_events: bool | None = ...,
        include: "str | Sequence[str] | None" = ..., output_type: Any = ..., logprobs: bool | None = ...,
        top_logprobs: int | None = ..., truncate: bool | None = ..., shift: bool | None = ...,
    ) -> Stream: ...

    def generate(
        self,
        prompt: str,
        *,
        stream: bool = False,
        model: str | None = None,
        suffix: str | None = None,
        system: str | None = None,
        template: str | None = None,
        context: Sequence[int] | None = None,
        raw: bool | None = None,
        images: "Sequence[str | bytes | os.PathLike[str]] | None" = None,
        format: str | Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        think: bool | str | None = None,
        keep_alive: str | float | None = None,
        on_midstream: MidstreamPolicy | None = None,
        timeout: "Timeouts | float | dict[str, float | None] | None" = None,
        servers: Sequence[str] | None = None,
        keep_events: bool | None = None,
        include: "str | Sequence[str] | None" = None,
        output_type: Any = None,
        logprobs: bool | None = None,
        top_logprobs: int | None = None,
        truncate: bool | None = None,
        shift: bool | None = None,
    ) -> Reply | Stream:
        prep = self._generate_session(
            prompt, model=model, suffix=suffix, system=system, template=template, context=context, raw=raw,
            images=images, format=format, options=options, think=think, keep_alive=keep_alive,
            on_midstream=on_midstream, timeout=timeout,
            more={"logprobs": logprobs, "top_logprobs": top_logprobs, "truncate": truncate, "shift": shift},
            output_type=output_type,
        )
        return self._run(prep, stream, servers, keep_events, include)

    generate.__doc__ = _GENERATE_DOC

    def embed(
        self,
        input: "str | Sequence[str]",
        *,
        model: str | None = None,
        truncate: bool | None = None,
        dimensions: int | None = None,
        options: Mapping[str, Any] | None = None,
        keep_alive: str | float | None = None,
        batch_size: int | None = None,
        timeout: "Timeouts | float | dict[str, float | None] | None" = None,
        servers: Sequence[str] | None = None,
    ) -> "EmbedResult":
        """Embed ``input`` (one text or a list) with ``model`` across the fleet (Ollama
        ``POST /api/embed``, ``docs/api.md`` "Generate Embeddings").

        A list is split into batches spread over every healthy server that lists the
        model, embedded concurrently (one request at a time per server; a faster server
        takes more batches) and returned in input order. A batch whose server fails is
        retried on another; that server takes no more batches in this call.

        Args:
            input: a ``str`` or a list of ``str``.
            model, timeout, servers: as :meth:`chat` (the read timeout of a batch is
                ``first_token_cold``; ``deadline`` bounds the whole call).
            truncate, dimensions, options, keep_alive: passed to Ollama as they are.
            batch_size: inputs per request (default: about 8 batches per server, of 16 to 256 inputs).

        Returns an :class:`~aicortex.EmbedResult` (``.embeddings``: one list of floats per
        input).

        Raises:
            ConfigError: no model, an input that is not text, a bad ``batch_size``.
            ModelNotFound: no enabled server lists the model.
            AllServersFailed: a batch failed on every server.
            BadRequest: HTTP 400 (the request itself is wrong).
            DeadlineExceeded: the deadline ran out.
        """
        from ._embed import embed_sync

        plan, timeouts = self._embed_plan(
            input, model, self.route, truncate=truncate, dimensions=dimensions, options=options,
            keep_alive=keep_alive, batch_size=batch_size, timeout=timeout, servers=servers,
        )
        return embed_sync(plan, self._transport, self._fleet, timeouts)

    def _tool_loop(self, prompt: Any, stream: bool, rounds: int, kw: dict[str, Any]) -> "Reply | Stream":
        """``run_tools=True``: ask, run the tool calls of the reply, send the results back,
        ask again, until a reply has no tool call or ``rounds`` rounds of calls ran (the
        flow is :func:`aicortex._tools.tool_loop_flow`). A :class:`ToolStream` with
        ``stream=True``; else that stream read to its end, for its :class:`Reply`."""
        import inspect

        from ._toolstream import ToolStream

        loop, tools, keep, include = _tool_loop_start(prompt, rounds, kw)
        if any(inspect.iscoroutinefunction(f) for f in loop.functions.values()):
            raise ConfigError("a tool is an async function: run it with AsyncClient, or pass a plain function")

        def open_round(messages: builtins.list[dict[str, Any]]) -> Stream:
            return self.chat(messages, stream=True, tools=tools, keep_events=False, **kw)

        first = open_round(loop.messages)  # bad input, no such model: raised here, at the call
        keep = (self.keep_events if keep is None else keep) and stream
        s = ToolStream(loop, first, open_round, keep_events=keep, include=include)
        if stream:
            return s
        with s:
            return s.reply()

    def _forward(
        self,
        endpoint: str,
        body: Mapping[str, Any],
        *,
        stream: bool,
        direct: bool = False,
        on_midstream: MidstreamPolicy | None = None,
        timeout: "Timeouts | float | dict[str, float | None] | None" = None,
        keep_events: bool | None = None,
    ) -> Reply | Stream:
        """Send a caller-built Ollama body (``/api/chat`` or ``/api/generate``) with
        failover; ``direct=True`` skips discovery and routing (every enabled server in
        registry order). Returns a :class:`Stream` (``stream=True``) or a :class:`Reply`."""
        prep = self._forward_session(endpoint, body, on_midstream=on_midstream, timeout=timeout)
        return self._run(prep, stream, None, keep_events, None, direct=direct)

    def _run(
        self,
        prep: Generator[str, "Route", ChatSession],
        stream: bool,
        servers: Sequence[str] | None,
        keep_events: bool | None,
        include: "str | Sequence[str] | None",
        direct: bool = False,
    ) -> Reply | Stream:
        wanted = event_filter(include)
        name = next(prep)
        route = self._direct_route() if direct else self.route(name)
        if servers is not None:
            route = self._pinned(route, name, servers)
        session = _finish(prep, route)
        keep = self.keep_events if keep_events is None else keep_events
        s = Stream(session, self._transport, self._fleet, keep_events=keep and stream, include=wanted)
        if stream:
            return s
        with s:
            return s.reply()


class AsyncClient(BaseClient):
    """A fleet of Ollama servers seen as one, for ``asyncio`` (aiohttp underneath).

    The same arguments and methods as :class:`Client`, awaited: ``await chat(...)``,
    ``await models()``, ``await list_model_servers(m)``, ``await refresh()``,
    ``await bench(...)``; ``await aclose()`` or ``async with``. Both clients can share one
    registry (a file, or the same :class:`~aicortex.Registry` object): breakers, EWMA
    metrics and trials are the same fleet state.

    Streaming, in both forms users know::

        async with client.chat("Hi", model="llama3.2", stream=True) as stream:
            async for event in stream: ...
        async for event in await client.chat("Hi", model="llama3.2", stream=True): ...

    The registry is read and written from worker threads, never on the event loop.
    """

    def _make_transport(self, **kw: Any) -> Any:
        from ._aio import AsyncTransport

        return AsyncTransport(**kw)

    async def aclose(self) -> None:
        """Close the HTTP pool, write pending outcomes, close the registry if this client
        opened it."""
        import asyncio

        await self._transport.aclose()
        await asyncio.to_thread(self._close_registry)

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def refresh(
        self,
        servers: Sequence[str] | None = None,
        *,
        max_workers: int = 16,
        on_result: "Callable[[ProbeResult], None] | None" = None,
    ) -> "RefreshReport":
        """Probe servers concurrently with asyncio (at most ``max_workers`` at once) and
        store what they serve. As :meth:`Client.refresh`."""
        import asyncio

        from ._discovery import arefresh_registry

        urls = await asyncio.to_thread(_refresh_urls, self, servers)
        report = await arefresh_registry(
            self.registry,
            self._transport,
            urls,
            connect_timeout_s=self.timeouts.connect,
            read_timeout_s=self.probe_timeout_s,
            max_workers=max_workers,
            on_result=on_result,
        )
        await asyncio.to_thread(self._fleet.reload)
        return report

    async def _maybe_refresh(self) -> None:
        if self._stale():
            try:
                await self.refresh()
            except AICortexError as exc:
                self._fleet._storage_failed("refresh", exc)

    async def models(self) -> builtins.list[str]:
        """As :meth:`Client.models`."""
        import asyncio

        await self._maybe_refresh()
        return await asyncio.to_thread(self.registry.models)

    async def route(self, model: str) -> "Route":
        """As :meth:`Client.route`."""
        await self._maybe_refresh()
        return self._route_now(_require_model(model))

    async def list_model_servers(self, model: str) -> builtins.list[Server]:
        """As :meth:`Client.list_model_servers`."""
        route = await self.route(_require_model(model))
        return [c.server for c in route.candidates + route.skipped]

    async def bench(self, model: str, runs: int = 5, **kw: Any) -> "builtins.list[BenchResult]":
        """As :meth:`Client.bench` (run in a worker thread with a sync client on the
        same registry)."""
        import asyncio

        def run() -> "list[BenchResult]":
            with Client(self.registry, timeout=self.timeouts) as client:
                return client.bench(model, runs, **kw)

        return await asyncio.to_thread(run)

    async def list(self) -> "builtins.list[FleetModel]":
        """As :meth:`Client.list`."""
        from ._fleetops import fleet_models

        await self._maybe_refresh()
        return fleet_models(self._fleet.snapshot)

    async def ps(self, servers: Sequence[str] | None = None) -> "PsReport":
        """As :meth:`Client.ps`, with one asyncio task per server."""
        from ._fleetops import ps_async

        return await ps_async(self, servers)

    async def show(self, model: str) -> "ShowResult":
        """As :meth:`Client.show`."""
        from ._fleetops import show_async

        return await show_async(self, _require_model(model))

    async def pull(
        self,
        model: str,
        servers: Sequence[str] | None = None,
        on_progress: "Callable[[PullProgress], None] | None" = None,
        *,
        insecure: bool = False,
        timeout_s: float | None = 600.0,
    ) -> "builtins.list[PullResult]":
        """As :meth:`Client.pull`, with one asyncio task per server; ``on_progress`` is
        called on the event loop as each line arrives (keep it quick)."""
        from ._fleetops import pull_async

        return await pull_async(self, _require_model(model), servers, on_progress, insecure, timeout_s)

    async def delete(self, model: str, servers: Sequence[str] | None = None) -> "builtins.list[OpResult]":
        """As :meth:`Client.delete`."""
        from ._fleetops import delete_async

        return await delete_async(self, _require_model(model), servers)

    async def copy(self, source: str, destination: str, servers: Sequence[str] | None = None) -> "builtins.list[OpResult]":
        """As :meth:`Client.copy`."""
        from ._fleetops import copy_async

        return await copy_async(self, _require_model(source), _require_model(destination), servers)

    async def warm(
        self, model: str, servers: Sequence[str] | None = None, *, keep_alive: str | float | None = None
    ) -> "builtins.list[OpResult]":
        """As :meth:`Client.warm`."""
        from ._fleetops import warm_async

        return await warm_async(self, _require_model(model), servers, keep_alive)

    async def unload(self, model: str, servers: Sequence[str] | None = None) -> "builtins.list[OpResult]":
        """As :meth:`Client.unload`."""
        from ._fleetops import unload_async

        return await unload_async(self, _require_model(model), servers)

    def chat(
        self,
        prompt: "str | Sequence[Mapping[str, Any]]",
        *,
        stream: bool = False,
        model: str | None = None,
        system: str | None = None,
        options: Mapping[str, Any] | None = None,
        format: str | Mapping[str, Any] | None = None,
        think: bool | str | None = None,
        keep_alive: str | float | None = None,
        tools: "Sequence[Mapping[str, Any] | Callable[..., Any]] | None" = None,
        run_tools: bool = False,
        max_tool_rounds: int = DEFAULT_TOOL_ROUNDS,
        on_midstream: MidstreamPolicy | None = None,
        timeout: "Timeouts | float | dict[str, float | None] | None" = None,
        servers: Sequence[str] | None = None,
        keep_events: bool | None = None,
        include: "str | Sequence[str] | None" = None,
        output_type: Any = None,
        logprobs: bool | None = None,
        top_logprobs: int | None = None,
        truncate: bool | None = None,
        shift: bool | None = None,
    ) -> "ChatCall":
        if run_tools:
            return self._tool_loop(
                prompt, stream, max_tool_rounds, dict(
                    model=model, system=system, options=options, format=format, think=think, keep_alive=keep_alive,
                    tools=tools, on_midstream=on_midstream, timeout=timeout, servers=servers, output_type=output_type,
                    logprobs=logprobs, top_logprobs=top_logprobs, truncate=truncate, shift=shift,
                    keep_events=keep_events, include=include,
                ),
            )
        prep = self._session(
            prompt, model=model, system=system, options=options, format=format, think=think,
            keep_alive=keep_alive, tools=tools, on_midstream=on_midstream, timeout=timeout,
            more={"logprobs": logprobs, "top_logprobs": top_logprobs, "truncate": truncate, "shift": shift},
            output_type=output_type,
        )
        keep = self.keep_events if keep_events is None else keep_events
        return ChatCall(self, prep, stream=stream, servers=servers, keep_events=keep and stream, include=event_filter(include))

    chat.__doc__ = _CHAT_DOC + """
        Returns a :class:`ChatCall`: ``await`` it for the :class:`Reply` (or, with
        ``stream=True``, the :class:`AsyncStream`), or use it as ``async with`` (streams).
        """

    def _forward(
        self,
        endpoint: str,
        body: Mapping[str, Any],
        *,
        stream: bool,
        direct: bool = False,
        on_midstream: MidstreamPolicy | None = None,
        timeout: "Timeouts | float | dict[str, float | None] | None" = None,
        keep_events: bool | None = None,
    ) -> "ChatCall":
        """As :meth:`Client._forward`, awaited (or ``async with`` for a stream)."""
        prep = self._forward_session(endpoint, body, on_midstream=on_midstream, timeout=timeout)
        keep = self.keep_events if keep_events is None else keep_events
        return ChatCall(self, prep, stream=stream, servers=None, keep_events=keep and stream, direct=direct)

    def _tool_loop(self, prompt: Any, stream: bool, rounds: int, kw: dict[str, Any]) -> "ChatCall":
        """As :meth:`Client._tool_loop`, with an :class:`AsyncToolStream`; a tool that is
        a coroutine function is awaited."""
        loop, tools, keep, include = _tool_loop_start(prompt, rounds, kw)

        def call(messages: builtins.list[dict[str, Any]]) -> ChatCall:
            made = self.chat(messages, stream=True, tools=tools, keep_events=False, **kw)
            assert isinstance(made, ChatCall)
            return made

        keep = (self.keep_events if keep is None else keep) and stream
        return _ToolChatCall(loop, call(loop.messages), call, stream=stream, keep_events=keep, include=include)

    async def embed(
        self,
        input: "str | Sequence[str]",
        *,
        model: str | None = None,
        truncate: bool | None = None,
        dimensions: int | None = None,
        options: Mapping[str, Any] | None = None,
        keep_alive: str | float | None = None,
        batch_size: int | None = None,
        timeout: "Timeouts | float | dict[str, float | None] | None" = None,
        servers: Sequence[str] | None = None,
    ) -> "EmbedResult":
        """As :meth:`Client.embed`, with one asyncio task per server."""
        from ._embed import embed_async

        await self._maybe_refresh()
        plan, timeouts = self._embed_plan(
            input, model, self._route_now, truncate=truncate, dimensions=dimensions, options=options,
            keep_alive=keep_alive, batch_size=batch_size, timeout=timeout, servers=servers,
        )
        return await embed_async(plan, self._transport, self._fleet, timeouts)

    def generate(
        self,
        prompt: str,
        *,
        stream: bool = False,
        model: str | None = None,
        suffix: str | None = None,
        system: str | None = None,
        template: str | None = None,
        context: Sequence[int] | None = None,
        raw: bool | None = None,
        images: "Sequence[str | bytes | os.PathLike[str]] | None" = None,
        format: str | Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        think: bool | str | None = None,
        keep_alive: str | float | None = None,
        on_midstream: MidstreamPolicy | None = None,
        timeout: "Timeouts | float | dict[str, float | None] | None" = None,
        servers: Sequence[str] | None = None,
        keep_events: bool | None = None,
        include: "str | Sequence[str] | None" = None,
        output_type: Any = None,
        logprobs: bool | None = None,
        top_logprobs: int | None = None,
        truncate: bool | None = None,
        shift: bool | None = None,
    ) -> "ChatCall":
        prep = self._generate_session(
            prompt, model=model, suffix=suffix, system=system, template=template, context=context, raw=raw,
            images=images, format=format, options=options, think=think, keep_alive=keep_alive,
            on_midstream=on_midstream, timeout=timeout,
            more={"logprobs": logprobs, "top_logprobs": top_logprobs, "truncate": truncate, "shift": shift},
            output_type=output_type,
        )
        keep = self.keep_events if keep_events is None else keep_events
        return ChatCall(self, prep, stream=stream, servers=servers, keep_events=keep and stream, include=event_filter(include))

    generate.__doc__ = _GENERATE_DOC + """
        Returns a :class:`ChatCall`, as :meth:`chat` does.
        """


def _tool_loop_start(
    prompt: Any, rounds: Any, kw: dict[str, Any]
) -> "tuple[ToolLoop, Any, bool | None, frozenset[str] | None]":
    """The :class:`~aicortex._tools.ToolLoop`, tool schemas, ``keep_events`` and
    ``include`` of a ``run_tools=True`` call (shared by both clients); ``kw`` keeps the
    arguments of each round's chat.

    Raises:
        ConfigError: no tool given as a Python function, a bad ``max_tool_rounds`` or
            ``include``, a malformed prompt.
    """
    from ._tools import ToolLoop, check_rounds, prepare_tools

    if kw.get("servers") is None:
        kw.pop("servers", None)
    keep, include = kw.pop("keep_events"), event_filter(kw.pop("include"))
    tools, functions = prepare_tools(kw.pop("tools"))
    if not functions:
        raise ConfigError("run_tools=True needs tools given as Python functions (tools=[get_weather, ...])")
    loop = ToolLoop(build_messages(prompt, kw.pop("system")), functions, check_rounds(rounds))
    return loop, tools, keep, include


class ChatCall:
    """The pending result of :meth:`AsyncClient.chat`: awaitable, and with
    ``stream=True`` an async context manager that closes the stream on exit."""

    def __init__(
        self, client: AsyncClient, prep: Generator[str, "Route", ChatSession], *, stream: bool,
        servers: Sequence[str] | None, keep_events: bool, include: "frozenset[str] | None" = None,
        direct: bool = False,
    ) -> None:
        self._client, self._prep, self._stream, self._servers, self._keep = client, prep, stream, servers, keep_events
        self._include, self._direct = include, direct
        self._name = next(prep)  # validation errors are raised at the call, as in Client.chat
        self._open: AsyncStream | None = None

    async def _make(self) -> AsyncStream:
        client = self._client
        route = client._direct_route() if self._direct else await client.route(self._name)
        if self._servers is not None:
            import asyncio

            route = await asyncio.to_thread(client._pinned, route, self._name, self._servers)
        return AsyncStream(
            _finish(self._prep, route), client._transport, client._fleet, keep_events=self._keep, include=self._include
        )

    async def _result(self) -> "AsyncStream | Reply":
        s = await self._make()
        if self._stream:
            return s
        async with s:
            return await s.reply()

    def __await__(self) -> Generator[Any, None, "AsyncStream | Reply"]:
        return self._result().__await__()

    async def __aenter__(self) -> AsyncStream:
        if not self._stream:
            raise ConfigError("`async with client.chat(...)` is for streams: pass stream=True, or `await` the call")
        self._open = await self._make()
        return self._open

    async def __aexit__(self, *exc: object) -> None:
        if self._open is not None:
            await self._open.aclose()


class _ToolChatCall(ChatCall):
    """The pending result of :meth:`AsyncClient.chat` with ``run_tools=True``: as
    :class:`ChatCall`, giving an :class:`~aicortex._toolstream.AsyncToolStream` (or, awaited
    without ``stream=True``, the loop's final :class:`Reply`)."""

    def __init__(
        self, loop: "ToolLoop", first: ChatCall, open_round: Callable[[builtins.list[dict[str, Any]]], ChatCall], *,
        stream: bool, keep_events: bool, include: "frozenset[str] | None",
    ) -> None:
        self._loop, self._first, self._open_round = loop, first, open_round
        self._stream, self._keep, self._include = stream, keep_events, include
        self._open: AsyncStream | None = None

    async def _make(self) -> AsyncStream:
        from ._toolstream import AsyncToolStream

        open_round = self._open_round

        async def opened(messages: builtins.list[dict[str, Any]]) -> AsyncStream:
            return await open_round(messages)._make()

        first = await self._first._make()
        return AsyncToolStream(self._loop, first, opened, keep_events=self._keep, include=self._include)


def _format(format: "str | Mapping[str, Any] | None", output_type: Any) -> "str | Mapping[str, Any] | None":
    """``format=``, or the JSON schema of ``output_type`` (a pydantic model class).

    Raises:
        ConfigError: ``output_type`` is not a pydantic model class (pydantic is an
            optional dependency: ``pip install 'aicortex[structured]'``).
    """
    if output_type is None:
        return format
    schema = getattr(output_type, "model_json_schema", None)
    if not callable(schema) or not hasattr(output_type, "model_validate_json"):
        raise ConfigError(
            f"output_type={output_type!r}: pass a pydantic model class (pip install 'aicortex[structured]')"
        )
    if format is not None:
        raise ConfigError("pass format= or output_type=, not both (output_type sends its JSON schema as format)")
    return dict(schema())


def encode_images(images: "Sequence[str | bytes | os.PathLike[str]] | None") -> list[str] | None:
    """Ollama's ``images`` (base64 strings, ``docs/api.md``) from paths, raw bytes or
    base64 strings. A ``str`` that names an existing file is read; any other ``str`` is
    taken as base64 already.

    Raises:
        ConfigError: a path that cannot be read, or a value of another type.
    """
    import base64

    if images is None:
        return None
    if isinstance(images, (str, bytes, os.PathLike)):
        images = [images]
    out = []
    for i, image in enumerate(images):
        if isinstance(image, (bytes, bytearray)):
            out.append(base64.b64encode(bytes(image)).decode())
            continue
        if isinstance(image, (str, os.PathLike)):
            path = os.fspath(image)
            looks_like_file = isinstance(image, os.PathLike) or (len(path) < 4096 and os.path.isfile(path))
            if looks_like_file:
                try:
                    with open(path, "rb") as f:
                        out.append(base64.b64encode(f.read()).decode())
                except OSError as exc:
                    raise ConfigError(f"images[{i}]: cannot read {path!r} ({exc})") from exc
            else:
                out.append(path)
            continue
        raise ConfigError(f"images[{i}] is a {type(image).__name__}: pass a file path, bytes or a base64 string")
    return out


def _finish(prep: Generator[str, "Route", ChatSession], route: "Route") -> ChatSession:
    try:
        prep.send(route)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    raise AssertionError("request preparation did not finish")  # pragma: no cover


def _server_headers(servers: "Iterable[Server]") -> dict[str, dict[str, str]]:
    """``{url: headers}`` of the servers that send their own headers, read from the
    environment now (``ConfigError`` naming a variable that is not set)."""
    from ._config import resolve_headers

    return {s.url: resolve_headers(s) for s in servers if s.headers_env}


def _refresh_urls(client: BaseClient, servers: Sequence[str] | None) -> list[str]:
    """The URLs to probe, and each one's own headers set on the client's transport."""
    registry = client.registry
    chosen = registry.servers(enabled_only=True) if servers is None else [registry.get(s) for s in servers]
    client._transport.set_server_headers(_server_headers(chosen))
    return [s.url for s in chosen]


_refresh_locks: "weakref.WeakKeyDictionary[BaseClient, threading.Lock]" = weakref.WeakKeyDictionary()
_refresh_locks_guard = threading.Lock()


def _refresh_lock(client: BaseClient) -> threading.Lock:
    with _refresh_locks_guard:
        lock = _refresh_locks.get(client)
        if lock is None:
            lock = _refresh_locks[client] = threading.Lock()
        return lock


def _check_policy(policy: str) -> None:
    if policy not in MIDSTREAM_POLICIES:
        raise ConfigError(f"on_midstream={policy!r}: use one of {', '.join(MIDSTREAM_POLICIES)}")


def _require_model(model: str | None) -> str:
    if not model or not str(model).strip():
        raise ConfigError(
            "no model given: pass model='llama3.2' (or `-m MODEL` on the command line), "
            "or set the AICORTEX_MODEL environment variable"
        )
    return str(model).strip()


# -- module-level functions on default clients ----------------------------------------------------
_clients: dict[Any, Client] = {}  # by registry path (None = the default registry)
_clients_lock = threading.Lock()


def _client_for(registry: Any) -> Client:
    """The shared client for ``registry`` (``None`` = the default registry), built on
    first use. The client for a :class:`Registry` *object* is kept on that object, so it
    lives exactly as long as the registry does."""
    with _clients_lock:
        if registry is not None and not isinstance(registry, (str, os.PathLike)):
            client = getattr(registry, "_aicortex_client", None)
            if client is None:
                client = Client(registry)
                registry._aicortex_client = client
            return client
        key = os.fspath(registry) if registry is not None else None
        client = _clients.get(key)
        if client is None:
            if not _clients:
                atexit.register(_close_all)
            client = _clients[key] = Client(registry)
        return client


def _close_all() -> None:
    with _clients_lock:
        for client in _clients.values():
            client.close()
        _clients.clear()


@overload
def chat(
    prompt: "str | Sequence[Mapping[str, Any]]", *, stream: Literal[False] = False, model: str | None = ..., system: str | None = ..., options: Mapping[str, Any] | None = ...,
    format: str | Mapping[str, Any] | None = ..., think: bool | str | None = ..., keep_alive: str | float | None = ...,
    tools: "Sequence[Mapping[str, Any] | Callable[..., Any]] | None" = ..., run_tools: bool = ..., max_tool_rounds: int = ..., on_midstream: MidstreamPolicy | None = ...,
    timeout: "Timeouts | float | dict[str, float | None] | None" = ..., servers: Sequence[str] | None = ...,
    keep_events: bool | None = ..., include: "str | Sequence[str] | None" = ..., output_type: Any = ...,
    logprobs: bool | None = ..., top_logprobs: int | None = ..., truncate: bool | None = ..., shift: bool | None = ...,
    registry: "Registry | str | os.PathLike[str] | None" = ...,
) -> Reply: ...
@overload
def chat(
    prompt: "str | Sequence[Mapping[str, Any]]", *, stream: Literal[True], model: str | None = ..., system: str | None = ..., options: Mapping[str, Any] | None = ...,
    format: str | Mapping[str, Any] | None = ..., think: bool | str | None = ..., keep_alive: str | float | None = ...,
    tools: "Sequence[Mapping[str, Any] | Callable[..., Any]] | None" = ..., run_tools: bool = ..., max_tool_rounds: int = ..., on_midstream: MidstreamPolicy | None = ...,
    timeout: "Timeouts | float | dict[str, float | None] | None" = ..., servers: Sequence[str] | None = ...,
    keep_events: bool | None = ..., include: "str | Sequence[str] | None" = ..., output_type: Any = ...,
    logprobs: bool | None = ..., top_logprobs: int | None = ..., truncate: bool | None = ..., shift: bool | None = ...,
    registry: "Registry | str | os.PathLike[str] | None" = ...,
) -> Stream: ...


def chat(
    prompt: "str | Sequence[Mapping[str, Any]]",
    *,
    stream: bool = False,
    registry: "Registry | str | os.PathLike[str] | None" = None,
    **kw: Any,
) -> Reply | Stream:
    """:meth:`Client.chat` on the default client (or the shared client of ``registry``).

    ``registry`` is a :class:`Registry`, a registry file path or ``None`` (default
    registry). Every other keyword is :meth:`Client.chat`'s: ``model``, ``system``,
    ``options``, ``format``, ``think``, ``keep_alive``, ``tools``, ``on_midstream``,
    ``timeout``, ``servers``, ``keep_events``. Same returns and raises.
    """
    return _client_for(registry).chat(prompt, stream=stream, **kw)  # type: ignore[call-overload,no-any-return]


def models(*, registry: Any = None) -> list[str]:
    """Sorted distinct model names across the enabled servers (see :meth:`Client.models`)."""
    return _client_for(registry).models()


def list_model_servers(model: str, *, registry: Any = None) -> list[Server]:
    """Servers that list ``model``, in the order ``chat()`` would try them.

    Raises:
        ModelNotFound: no enabled server lists it.
    """
    return _client_for(registry).list_model_servers(model)


def refresh(servers: Sequence[str] | None = None, *, registry: Any = None) -> "RefreshReport":
    """Probe servers and update the registry (see :meth:`Client.refresh`)."""
    return _client_for(registry).refresh(servers)


def generate(
    prompt: str, *, stream: bool = False, registry: "Registry | str | os.PathLike[str] | None" = None, **kw: Any
) -> Reply | Stream:
    """:meth:`Client.generate` on the default client (or the shared client of
    ``registry``); every other keyword is :meth:`Client.generate`'s. Same returns and raises."""
    return _client_for(registry).generate(prompt, stream=stream, **kw)  # type: ignore[call-overload,no-any-return]


def embed(input: "str | Sequence[str]", *, registry: "Registry | str | os.PathLike[str] | None" = None, **kw: Any) -> "EmbedResult":
    """:meth:`Client.embed` on the default client (or the shared client of ``registry``);
    every other keyword is :meth:`Client.embed`'s. Same returns and raises."""
    return _client_for(registry).embed(input, **kw)
