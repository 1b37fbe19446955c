"""``Client`` wires registry, routing, the failover session and the transport together.

The module-level ``chat()``, ``models()``, ``list_model_servers()`` and ``refresh()`` use a
default :class:`Client` built on first use (never at import). Importing aicortex loads
neither httpx nor sqlite-utils: they are imported when the first ``Client`` is built.
"""

from __future__ import annotations

import atexit
import os
import random
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping, Sequence, overload

from ._config import Timeouts, env_model
from ._exceptions import ConfigError, ModelNotFound, error_reason
from ._failover import MIDSTREAM_POLICIES, MidstreamPolicy
from ._models import Attempt, Reply, Server
from ._protocol import build_messages
from ._session import Candidate, ChatSession
from ._stream import Stream

if TYPE_CHECKING:  # pragma: no cover
    import sqlite_utils

    from ._bench import BenchResult
    from ._discovery import ProbeResult, RefreshReport
    from ._registry import Registry
    from ._routing import Route

__all__ = ["Client", "chat", "models", "list_model_servers", "refresh", "DEFAULT_REFRESH_TTL_S"]

#: Registry data older than this (seconds) is refreshed before a chat. 10 minutes.
DEFAULT_REFRESH_TTL_S = 600.0

Prompt = "str | Sequence[Mapping[str, Any]]"


class Client:
    """A fleet of Ollama servers seen as one.

    Args:
        registry: a :class:`~aicortex.Registry`, a path to a registry file, ``":memory:"``,
            or ``None`` for the default registry (``AICORTEX_DB`` or the user data dir).
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
        verify: TLS certificate verification (on by default).
        spread_load: shuffle servers that are equal in every routing respect
            (warmth, priority, measured TTFT band) to spread load; servers never
            measured keep registration order.
        max_connections: size of the HTTP connection pool (streams open at once, all
            servers together); a full pool is a ``PoolTimeout``, not the server's fault.

    A context manager: leaving it closes the HTTP pool and, if the client opened it,
    the registry.

    Raises:
        ConfigError: an unknown ``on_midstream`` or a bad timeout.
        RegistryError: the registry file cannot be opened.
    """

    def __init__(
        self,
        registry: "Registry | str | os.PathLike[str] | sqlite_utils.Database | None" = None,
        *,
        model: str | None = None,
        timeout: Timeouts | float | dict | None = Timeouts(),
        on_midstream: MidstreamPolicy = "continue",
        refresh_ttl_s: float | None = DEFAULT_REFRESH_TTL_S,
        probe_timeout_s: float = 5.0,
        headers: Mapping[str, str] | None = None,
        verify: bool | str = True,
        spread_load: bool = True,
        max_connections: int = 100,
    ) -> None:
        from ._registry import Registry
        from ._transport import Transport

        _check_policy(on_midstream)
        self.timeouts = Timeouts.of(timeout)
        self.model = model
        self.on_midstream = on_midstream
        self.refresh_ttl_s = refresh_ttl_s
        self.probe_timeout_s = probe_timeout_s
        if isinstance(registry, Registry):
            self.registry = registry
            self._owns_registry = False
        else:
            self.registry = Registry(registry)
            self._owns_registry = True
        self._rng = random.Random() if spread_load else None
        self._transport = Transport(headers=headers, verify=verify, max_connections=max_connections)
        self._refresh_lock = threading.Lock()

    # -- lifecycle --------------------------------------------------------------------------
    def close(self) -> None:
        """Close the HTTP connection pool, and the registry if this client opened it."""
        self._transport.close()
        if self._owns_registry:
            self.registry.close()

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

        if servers is None:
            urls = [s.url for s in self.registry.servers(enabled_only=True)]
        else:
            urls = [self.registry.get(s).url for s in servers]
        return refresh_registry(
            self.registry,
            self._transport,
            urls,
            connect_timeout_s=self.timeouts.connect,
            read_timeout_s=self.probe_timeout_s,
            max_workers=max_workers,
            on_result=on_result,
        )

    def _maybe_refresh(self) -> None:
        last = self.registry.last_refresh_at()
        stale = last is None or (self.refresh_ttl_s is not None and time.time() - last > self.refresh_ttl_s)
        if not stale:
            return
        with self._refresh_lock:
            last2 = self.registry.last_refresh_at()
            if last2 == last:  # nobody refreshed while we waited for the lock
                self.refresh()

    def models(self) -> list[str]:
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
        """
        from ._routing import order_candidates

        self._maybe_refresh()
        entries = self.registry.model_entries(model)
        if not entries:
            raise self._model_not_found(model)
        return order_candidates(entries, self.registry.health_for_model(model), now=time.time(), rng=self._rng)

    def list_model_servers(self, model: str) -> list[Server]:
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
    ) -> "list[BenchResult]":
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

    def _model_not_found(self, model: str) -> ModelNotFound:
        servers = self.registry.servers(enabled_only=True)
        known = self.registry.models()
        if not servers:
            hint = "no enabled server is registered: add one with `aicortex servers add http://HOST:11434`"
        else:
            down = [s for s in servers if s.status == "down"]
            hint = f"models available: {', '.join(known[:20]) or 'none'}"
            if down:
                hint += f"; {len(down)} of {len(servers)} servers are down ({down[0].name}: {down[0].last_error})"
            hint += "; add a server that has it (`aicortex servers add URL`), pull it there, then `aicortex refresh`"
        return ModelNotFound(f"no registered server lists model {model!r}: {hint}", model=model)

    # -- chat -------------------------------------------------------------------------------
    @overload
    def chat(self, prompt: Any, *, stream: Literal[False] = False, **kw: Any) -> Reply: ...
    @overload
    def chat(self, prompt: Any, *, stream: Literal[True], **kw: Any) -> Stream: ...

    def chat(
        self,
        prompt: "str | Sequence[Mapping[str, Any]]",
        *,
        model: str | None = None,
        stream: bool = False,
        system: str | None = None,
        options: Mapping[str, Any] | None = None,
        format: str | Mapping[str, Any] | None = None,
        think: bool | str | None = None,
        keep_alive: str | float | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        on_midstream: MidstreamPolicy | None = None,
        timeout: Timeouts | float | dict | None = None,
        servers: Sequence[str] | None = None,
    ) -> Reply | Stream:
        """Send a chat to the fleet: the first healthy server with the model answers.

        Args:
            prompt: a ``str`` (one user message) or a list of Ollama message dicts
                (``{"role": "user", "content": "..."}``; a trailing assistant message
                is a prefill the server continues).
            model: model name (else the client's, else ``AICORTEX_MODEL``).
            stream: ``True`` returns a :class:`Stream` of events; ``False`` a :class:`Reply`.
            system: a system prompt, prepended as a system message.
            options, format, think, keep_alive, tools: passed to Ollama /api/chat as is.
            on_midstream: overrides the client's mid-stream policy for this request.
            timeout: overrides the client's :class:`Timeouts` for this request (a dict
                changes only the fields it names).
            servers: names or URLs to restrict this request to (e.g. to measure one
                server); they are tried in routing order, circuit breakers ignored.

        Raises:
            ConfigError: no model, an empty prompt, a malformed message list.
            ModelNotFound: no enabled server lists the model.
            AllServersFailed: every candidate failed (``.attempts``).
            BadRequest: HTTP 400 from a server (no failover: the request is wrong).
            DeadlineExceeded: the total deadline ran out.
            With ``stream=True`` the last three are raised while iterating.
        """
        name = _require_model(model or self.model or env_model())
        policy = on_midstream or self.on_midstream
        _check_policy(policy)
        messages = build_messages(prompt, system)
        timeouts = self.timeouts if timeout is None else Timeouts.of(timeout, base=self.timeouts)
        route = self.route(name)
        if servers is not None:
            route = self._pinned(route, name, servers)
        session = ChatSession(
            model=name,
            messages=messages,
            candidates=route.candidates,
            skipped=route.skipped,
            timeouts=timeouts,
            policy=policy,
            request={"options": options, "format": format, "think": think, "keep_alive": keep_alive, "tools": tools},
            admit=lambda cand: self._claim_trial(name, cand),
        )
        s = Stream(session, self._transport, on_attempt=lambda a: self._record_attempt(name, a, session))
        if stream:
            return s
        with s:
            return s.reply()

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

    def _claim_trial(self, model: str, cand: Candidate) -> bool:
        """Claim the one half-open trial of ``cand`` (server-level and model-level).

        Decided inside one registry write transaction per record, so of several
        requests or processes routed while the breaker was half-open exactly one gets
        the trial; the others see it open again and skip the server.
        """
        from ._health import breaker_state, claim_trial

        now = time.time()
        for scope in ("", model):
            verdict: list[bool] = []

            def change(h: Any) -> Any:
                state = breaker_state(h, now)
                verdict.append(state != "open")
                return claim_trial(h, now) if state == "half_open" else None

            self.registry.update_health(cand.server.url, scope, change)
            if verdict and not verdict[0]:
                return False
        return True

    def _record_attempt(self, model: str, attempt: Attempt, session: ChatSession) -> None:
        """Fold one finished attempt into the breakers and metrics (shared via the registry)."""
        from ._failover import RULES, failure_kind
        from ._health import after_backoff, after_failure, after_success

        now = time.time()
        url = attempt.server
        error = attempt.error
        if error is None:
            usage = session.usage
            server_tps = usage.tokens_per_second if usage else None
            self.registry.update_health(url, "", lambda h: after_success(h, now) if h.failures or h.open_until else None)
            self.registry.update_health(
                url,
                model,
                lambda h: after_success(
                    h, now, ttft_s=attempt.ttft_s, tps=attempt.tokens_per_second, server_tps=server_tps
                ),
            )
            return
        text = error_reason(error)
        self.registry.record_error(url, text)
        scope = RULES.get(failure_kind(error), RULES["server_error"]).scope
        if scope == "server":
            self.registry.update_health(url, "", lambda h: after_failure(h, now, text))
        elif scope == "model":
            self.registry.update_health(url, model, lambda h: after_failure(h, now, text))
        elif scope == "backoff":
            self.registry.update_health(url, "", lambda h: after_backoff(h, now, text))

    def __repr__(self) -> str:
        return f"<Client registry={self.registry!r}>"


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
_clients: dict[Any, Client] = {}
_clients_lock = threading.Lock()


def _client_for(registry: Any) -> Client:
    """The shared client for ``registry`` (``None`` = the default registry), built on first use."""
    key = ("default",) if registry is None else ("obj", id(registry)) if not isinstance(registry, (str, os.PathLike)) else ("path", os.fspath(registry))
    with _clients_lock:
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
def chat(prompt: Any, *, stream: Literal[False] = False, registry: Any = None, **kw: Any) -> Reply: ...
@overload
def chat(prompt: Any, *, stream: Literal[True], registry: Any = None, **kw: Any) -> Stream: ...


def chat(prompt: "str | Sequence[Mapping[str, Any]]", *, stream: bool = False, registry: Any = None, **kw: Any) -> Reply | Stream:
    """:meth:`Client.chat` on the default client (or the shared client of ``registry``).

    ``registry`` is a :class:`Registry`, a registry file path or ``None`` (default
    registry). Every other keyword is :meth:`Client.chat`'s: ``model``, ``system``,
    ``options``, ``format``, ``think``, ``keep_alive``, ``tools``, ``on_midstream``,
    ``timeout``. Same returns and raises.
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
