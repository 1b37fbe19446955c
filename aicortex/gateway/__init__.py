"""The aicortex gateway: Ollama's and OpenAI's HTTP APIs in front of a fleet of Ollama
servers, with mid-reply failover that clients do not see.

Any client of Ollama (the official ``ollama`` package, Open WebUI, LangChain's
``ChatOllama``, curl) or of OpenAI's API (the ``openai`` SDK, on ``/v1``) points at the
gateway instead of one server; the gateway routes each request to a warm, healthy server
that has the model (an :class:`~aicortex.AsyncClient` underneath) and, when that server
dies in the middle of a reply, continues the reply on the next one: the client receives
one unbroken stream, token for token.

Run it::

    aicortex serve                      # 127.0.0.1:11435, the default registry
    uvicorn aicortex.gateway:app        # the same app under your own ASGI server

or build it in code::

    from aicortex.gateway import create_app
    app = create_app(registry="fleet.db", api_keys=["..."])

Routes: ``/``, ``/api/version``, ``/api/tags``, ``/api/ps``, ``/api/show``,
``/api/chat``, ``/api/generate``, ``/api/embed``, ``/api/embeddings``,
``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``, ``/v1/models/{model}``, ``/v1/embeddings``,
``/health``, ``/metrics``.

Needs the ``gateway`` extra: ``pip install 'aicortex[gateway]'`` (Starlette, uvicorn,
prometheus-client), imported only here.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Iterable

from .._exceptions import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from .._client import AsyncClient
    from .._registry import Registry
    from ._app import Gateway, GatewayConfig
    from ._server import ServerThread, http_protocol

__all__ = ["create_app", "Gateway", "GatewayConfig", "REQUEST_ID_HEADER", "ServerThread", "http_protocol"]

_MISSING = (
    "the aicortex gateway needs Starlette, uvicorn and prometheus-client: "
    "pip install 'aicortex[gateway]'"
)


def _require() -> None:
    try:
        import prometheus_client  # noqa: F401
        import starlette  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"{_MISSING} ({exc})") from exc


def create_app(
    registry: "Registry | str | os.PathLike[str] | None" = None,
    *,
    client: "AsyncClient | None" = None,
    config: "GatewayConfig | None" = None,
    api_keys: Iterable[str] | None = None,
    keys_file: "str | os.PathLike[str] | None" = None,
    **limits: Any,
) -> "Gateway":
    """Build the gateway ASGI app.

    Args:
        registry: the fleet's registry (a :class:`~aicortex.Registry`, a file path, or
            ``None`` for the default: ``AICORTEX_DB`` or the user data dir); ignored
            when ``client`` is given.
        client: an :class:`~aicortex.AsyncClient` to use (the caller closes it);
            default: one made on ``registry`` for the gateway (closed at shutdown), with
            refreshes in the background rather than on the request path.
        config: a :class:`GatewayConfig`; ``limits`` override its fields by name
            (``max_active=64, per_client=8``...).
        api_keys, keys_file: accepted bearer tokens, added to those of
            ``AICORTEX_GATEWAY_KEYS`` / ``AICORTEX_GATEWAY_KEYS_FILE``.

    Returns:
        a :class:`Gateway` (an ASGI application).

    Raises:
        ConfigError: the ``gateway`` extra is not installed; an unknown limit name; a key
            file that cannot be read or a key shorter than 16 characters.
        RegistryError: the registry cannot be opened.
    """
    import dataclasses

    _require()
    from .._client import AsyncClient
    from ._app import Gateway, GatewayConfig
    from ._security import load_keys

    base = config or GatewayConfig()
    unknown = set(limits) - {f.name for f in dataclasses.fields(GatewayConfig)}
    if unknown:
        raise ConfigError(f"unknown gateway setting(s): {', '.join(sorted(unknown))}")
    keys = load_keys([*base.api_keys, *(api_keys or ())], keys_file)
    cfg = dataclasses.replace(base, api_keys=keys, **limits)
    owns = client is None
    if client is None:
        # The pool must hold every admitted stream (a full pool is a PoolTimeout).
        client = AsyncClient(registry, refresh_ttl_s=None, keep_events=False, max_connections=cfg.max_active + 16)
    return Gateway(client, cfg, owns_client=owns)


def __getattr__(name: str) -> Any:
    # ``aicortex.gateway:app`` for ``uvicorn aicortex.gateway:app``: built on first access,
    # from the environment (AICORTEX_DB, AICORTEX_GATEWAY_KEYS[_FILE]).
    if name == "app":
        global _default_app
        if _default_app is None:
            _default_app = create_app()
        return _default_app
    if name in ("ServerThread", "http_protocol"):
        from . import _server

        return getattr(_server, name)
    if name in ("Gateway", "GatewayConfig", "REQUEST_ID_HEADER"):
        _require()
        from . import _app as module

        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_default_app: Any = None  # (not ``_app``: that is the submodule's name)
