"""Settings, and the only place that reads environment variables.

Environment variables:
    ``AICORTEX_DB``      registry file (default: ``servers.db`` in the user data directory)
    ``AICORTEX_MODEL``   model used when ``chat()`` gets none
    ``OLLAMA_HOST``      seeds an empty registry (default ``http://127.0.0.1:11434``)
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

from ._exceptions import ConfigError, InvalidURL

__all__ = [
    "Timeouts",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "parse_host",
    "normalize_url",
    "default_registry_path",
    "env_model",
    "env_registry_path",
    "env_ollama_host",
]

DEFAULT_PORT = 11434
DEFAULT_HOST = f"http://127.0.0.1:{DEFAULT_PORT}"


@dataclass(frozen=True)
class Timeouts:
    """Time limits, in seconds, for one request (``None`` = no limit).

    Fields:
        connect: to open the TCP (and TLS) connection. Default 2.0: a server on the
            LAN either answers fast or is not there.
        first_token: from sending the request to the first content or thinking chunk
            when the model is warm (listed by the server's /api/ps). Ollama sends
            nothing, not even headers, before that (ollama-protocol §3.4). Default 30.
        first_token_cold: the same when the model is not loaded there and may have to
            load first. Default 120 (Ollama's own load timeout is 5 minutes).
        stall: the longest silence between two chunks once the reply is flowing (the
            read timeout). Default 30.
        deadline: total budget for the whole request across all attempts, or ``None``.

    ``Timeouts.of(5.0)`` sets every per-attempt limit to 5 seconds, like ``httpx.Timeout``.
    """

    connect: float | None = 2.0
    first_token: float | None = 30.0
    first_token_cold: float | None = 120.0
    stall: float | None = 30.0
    deadline: float | None = None

    def __post_init__(self) -> None:
        for name in ("connect", "first_token", "first_token_cold", "stall", "deadline"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
                raise ConfigError(
                    f"timeout {name}={value!r} must be a positive number of seconds or None"
                )

    @classmethod
    def of(cls, value: "Timeouts | float | None | dict", base: "Timeouts | None" = None) -> "Timeouts":
        """Coerce a number (all per-attempt limits), a dict of fields (applied over
        ``base``, default ``Timeouts()``), or a Timeouts. A number keeps ``base``'s
        deadline (``chat(timeout=5)`` on a client with a deadline keeps that deadline)."""
        if isinstance(value, Timeouts):
            return value
        if isinstance(value, dict):
            try:
                return replace(base or cls(), **value)
            except TypeError as exc:
                raise ConfigError(f"unknown timeout in {value!r}: {exc}") from exc
        if value is None:
            return cls(None, None, None, None, None)
        # A number sets every per-attempt limit; the total deadline stays base's.
        return cls(value, value, value, value, base.deadline if base is not None else None)


_HOST_RE = re.compile(r"^[A-Za-z0-9._~%-]+$")


def parse_host(host: str | None) -> str:
    """Parse an ``OLLAMA_HOST`` value the way the official client does.

    >>> parse_host(None)
    'http://127.0.0.1:11434'
    >>> parse_host('1.2.3.4')
    'http://1.2.3.4:11434'
    >>> parse_host(':56789')
    'http://127.0.0.1:56789'
    >>> parse_host('http://example.com')
    'http://example.com:80'
    >>> parse_host('https://example.com')
    'https://example.com:443'
    >>> parse_host('example.com/path/')
    'http://example.com:11434/path'
    >>> parse_host('[::1]:8080')
    'http://[::1]:8080'

    Raises:
        InvalidURL: not http(s), no host, or a bad port.
    """
    host = (host or "").strip()
    if not host:
        return DEFAULT_HOST
    scheme, sep, rest = host.partition("://")
    if not sep:
        scheme, rest = "http", host
        default_port = DEFAULT_PORT
    else:
        scheme = scheme.lower()
        default_port = {"http": 80, "https": 443}.get(scheme, 0)
    if scheme not in ("http", "https"):
        raise InvalidURL(
            f"{host!r}: only http:// and https:// servers are supported "
            f"(for example http://gpu1:{DEFAULT_PORT})"
        )
    if any(c.isspace() for c in rest):
        raise InvalidURL(f"{host!r}: a URL cannot contain spaces")
    try:
        parts = urlsplit(f"{scheme}://{rest}")
        hostname = parts.hostname
        port = parts.port
    except ValueError as exc:
        raise InvalidURL(f"{host!r}: {exc} (expected http(s)://host[:port])") from exc
    if parts.query or parts.fragment or parts.username or parts.password:
        raise InvalidURL(
            f"{host!r}: no query, fragment or credentials in a server URL; "
            "credentials go in environment variables, never in the registry"
        )
    netloc_host = parts.netloc.rsplit("@", 1)[-1]
    if not hostname and netloc_host.startswith(":"):
        hostname = "127.0.0.1"
    if not hostname:
        raise InvalidURL(f"{host!r}: no host name (expected http(s)://host[:port])")
    try:
        ip = ipaddress.ip_address(hostname)
        host_text = f"[{ip.compressed}]" if ip.version == 6 else ip.compressed
    except ValueError:
        if not _HOST_RE.match(hostname) or hostname.startswith((".", "-")):
            raise InvalidURL(f"{host!r}: {hostname!r} is not a valid host name") from None
        host_text = hostname.lower()
    path = parts.path.rstrip("/")
    return f"{scheme}://{host_text}:{port or default_port}{path}"


def normalize_url(url: str) -> str:
    """Validate and normalise a server URL for the registry.

    Accepts ``http://host[:port][/path]``, ``https://...`` and, like ``OLLAMA_HOST``,
    a bare ``host[:port]`` (port 11434 by default). Scheme and host are lowercased, the
    port made explicit, a trailing ``/`` dropped.

    Raises:
        InvalidURL: with what was wrong and an example of a valid URL.
    """
    if not isinstance(url, str) or not url.strip():
        raise InvalidURL(f"empty server URL (expected http(s)://host[:port], e.g. http://gpu1:{DEFAULT_PORT})")
    return parse_host(url)


def _user_data_dir() -> Path:
    if sys.platform == "win32":  # pragma: no cover - not our CI
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "aicortex"
    if sys.platform == "darwin":  # pragma: no cover
        return Path.home() / "Library" / "Application Support" / "aicortex"
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "aicortex"


def env_registry_path() -> str | None:
    """``AICORTEX_DB`` if set and non-empty."""
    return os.environ.get("AICORTEX_DB") or None


def default_registry_path() -> Path:
    """Registry file: ``AICORTEX_DB``, else ``servers.db`` in the user data directory.

    The user data directory is ``$XDG_DATA_HOME/aicortex`` (``~/.local/share/aicortex``)
    on Linux, ``~/Library/Application Support/aicortex`` on macOS and
    ``%LOCALAPPDATA%\\aicortex`` on Windows. Nothing is created here.
    """
    env = env_registry_path()
    return Path(env).expanduser() if env else _user_data_dir() / "servers.db"


def env_model() -> str | None:
    """``AICORTEX_MODEL`` if set and non-empty."""
    return os.environ.get("AICORTEX_MODEL") or None


def env_ollama_host() -> str:
    """The server an empty registry is seeded with: ``OLLAMA_HOST`` parsed, or the default."""
    return parse_host(os.environ.get("OLLAMA_HOST"))
