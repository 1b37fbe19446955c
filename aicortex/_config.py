"""Settings, and the only place that reads environment variables.

Environment variables:
    ``AICORTEX_DB``      registry file (default: ``servers.db`` in the user data directory),
                         or a ``postgresql://`` URL
    ``AICORTEX_MODEL``   model used when ``chat()`` gets none
    ``OLLAMA_HOST``      seeds an empty registry (default ``http://127.0.0.1:11434``)
    per-server header variables, named in the registry (``servers add --header-env``)
        and read by :func:`resolve_headers` when a request is sent
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping
from urllib.parse import urlsplit

from ._exceptions import ConfigError, InvalidURL

if TYPE_CHECKING:  # pragma: no cover
    from ._models import Server

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
    "env_gateway_keys",
    "mask_url",
    "looks_like_url",
    "is_postgres_url",
    "short_error",
    "MAX_ERROR_CHARS",
    "check_headers_env",
    "resolve_headers",
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
    def of(cls, value: "Timeouts | float | None | dict[str, Any]", base: "Timeouts | None" = None) -> "Timeouts":
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
_NO_CREDENTIALS = (
    "no query, fragment or credentials in a server URL; credentials go in environment "
    "variables, never in the registry (aicortex servers add URL --header-env Authorization=VAR_NAME)"
)


def mask_url(url: str) -> str:
    """``url`` with the credentials it may carry masked, for error messages.

    The password is replaced by ``***``; a user name given without a password is masked
    too, since ``https://TOKEN@host`` carries a secret there. Everything up to the last
    ``@`` after the scheme counts as credentials, so a password holding ``/``, ``#`` or
    ``@`` is masked whole (over-masking a rare ``@`` in a path is the safe side).

    >>> mask_url("http://user:secret@gpu1:11434")
    'http://user:***@gpu1:11434'
    >>> mask_url("https://TOKEN@gpu1")
    'https://***@gpu1'
    >>> mask_url("http://gpu1:11434")
    'http://gpu1:11434'
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    if "@" not in rest:
        return url
    userinfo, _, hostpart = rest.rpartition("@")
    user, colon, _password = userinfo.partition(":")
    masked = f"{user}:***" if colon else "***"
    return f"{scheme}{sep}{masked}@{hostpart}"


def looks_like_url(value: object) -> bool:
    """True for a ``str`` that starts with ``http://`` or ``https://`` (any case, leading
    blanks ignored): a server URL given where a registry path (or a ``Client`` fleet) is
    expected. Anything else (paths, ``None``, ``Database`` objects) is ``False``.

    >>> looks_like_url("HTTPS://gpu1"), looks_like_url("servers.db"), looks_like_url(None)
    (True, False, False)
    """
    return isinstance(value, str) and value.lstrip().lower().startswith(("http://", "https://"))


def is_postgres_url(value: object) -> bool:
    """True for a ``str`` that starts with ``postgresql://`` or ``postgres://`` (any case,
    leading blanks ignored): a registry in PostgreSQL rather than an SQLite file.

    >>> is_postgres_url("postgresql://app@db1/fleet"), is_postgres_url("servers.db")
    (True, False)
    """
    return isinstance(value, str) and value.lstrip().lower().startswith(("postgresql://", "postgres://"))


#: Longest server error text kept in the registry (``servers.last_error``,
#: ``health.last_error``), in characters; a server may echo whole pages back.
MAX_ERROR_CHARS = 300


def short_error(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """``text`` cut to at most ``limit`` characters, ending in ``…`` when cut.

    Used before an error text a server sent (or echoed) is stored or shown.

    >>> short_error("x" * 400)[-3:], len(short_error("x" * 400))
    ('xx…', 300)
    >>> short_error("connection refused")
    'connection refused'
    """
    if len(text) <= limit:
        return text
    return text[: max(limit - 1, 0)] + "…"


# RFC 9110 token: the characters allowed in a header field name.
_HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_headers_env(mapping: Mapping[str, str] | None) -> dict[str, str]:
    """Validate per-server headers given by reference: ``{header name: env var name}``.

    Returns a plain dict (empty for ``None``), in the order given. Header names are
    HTTP tokens (``Authorization``, ``X-Api-Key``); variable names match
    ``[A-Za-z_][A-Za-z0-9_]*``. Only the names are kept: the values are read at request
    time by :func:`resolve_headers`.

    Raises:
        ConfigError: a header or variable name that is not valid, or one header given
            twice (header names are case-insensitive); the message says which and how
            to write it.
    """
    if mapping is None:
        return {}
    if not isinstance(mapping, Mapping):
        raise ConfigError(
            f"headers_env must be a mapping of header name to environment variable name, "
            f"e.g. {{'Authorization': 'GPU1_TOKEN'}}, not {type(mapping).__name__}"
        )
    out: dict[str, str] = {}
    seen: dict[str, str] = {}
    for header, var in mapping.items():
        if not isinstance(header, str) or not _HEADER_NAME_RE.match(header):
            raise ConfigError(
                f"{header!r} is not a valid HTTP header name (letters, digits and !#$%&'*+-.^_`|~ only, "
                "e.g. Authorization or X-Api-Key)"
            )
        if not isinstance(var, str) or not _ENV_NAME_RE.match(var):
            raise ConfigError(
                f"{var!r} (for header {header}) is not a valid environment variable name: "
                "give the NAME of the variable that holds the value (letters, digits, _; "
                "not starting with a digit), e.g. Authorization=GPU1_TOKEN, never the value itself"
            )
        if header.lower() in seen:
            raise ConfigError(f"header {header!r} is given twice (also as {seen[header.lower()]!r}); give it once")
        seen[header.lower()] = header
        out[header] = var
    return out


def resolve_headers(server: "Server") -> dict[str, str]:
    """The extra HTTP headers for one server, read from the environment now.

    ``server.headers_env`` maps header names to environment variable names (the
    registry stores only the names); each variable is read at the time of the call, so
    call it when a request is sent. Returns ``{header name: value}``, empty when the
    server has no such header.

    Raises:
        ConfigError: a variable is not set (or empty), or its value cannot be sent in a
            header (not printable ASCII), naming the server, the header and the variable.
    """
    out: dict[str, str] = {}
    for header, var in (server.headers_env or {}).items():
        value = os.environ.get(var)
        if not value:
            raise ConfigError(
                f"server {server.name} ({server.url}) sends header {header} from environment variable "
                f"{var}, which is not set: export {var}=..., or change it with "
                f"`aicortex servers add` / Registry.set_headers_env"
            )
        if not all(" " <= c <= "~" or c == "\t" for c in value):
            # httpx sends ASCII only (UnicodeEncodeError otherwise), and a line break would
            # be a header injection that both HTTP stacks refuse: the caller's to fix.
            raise ConfigError(
                f"server {server.name} ({server.url}) sends header {header} from environment variable "
                f"{var}, whose value has a character that cannot be sent in an HTTP header (a "
                "non-ASCII character, a line break or another control character)"
            )
        out[header] = value
    return out


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
    shown = repr(mask_url(host))  # every message names the input with its password masked
    scheme, sep, rest = host.partition("://")
    if not sep:
        scheme, rest = "http", host
        default_port = DEFAULT_PORT
    else:
        scheme = scheme.lower()
        default_port = {"http": 80, "https": 443}.get(scheme, 0)
    if scheme not in ("http", "https"):
        raise InvalidURL(
            f"{shown}: only http:// and https:// servers are supported "
            f"(for example http://gpu1:{DEFAULT_PORT})"
        )
    if any(c.isspace() for c in rest):
        raise InvalidURL(f"{shown}: a URL cannot contain spaces")
    if "@" in rest:  # before urlsplit: a password holding "/" or "#" would reach its messages
        raise InvalidURL(f"{shown}: {_NO_CREDENTIALS}")
    try:
        parts = urlsplit(f"{scheme}://{rest}")
        hostname = parts.hostname
        port = parts.port
    except ValueError as exc:
        raise InvalidURL(f"{shown}: {exc} (expected http(s)://host[:port])") from exc
    if parts.query or parts.fragment or parts.username or parts.password:
        raise InvalidURL(f"{shown}: {_NO_CREDENTIALS}")
    netloc_host = parts.netloc.rsplit("@", 1)[-1]
    if not hostname and netloc_host.startswith(":"):
        hostname = "127.0.0.1"
    if not hostname:
        raise InvalidURL(f"{shown}: no host name (expected http(s)://host[:port])")
    try:
        ip = ipaddress.ip_address(hostname)
        host_text = f"[{ip.compressed}]" if ip.version == 6 else ip.compressed
    except ValueError:
        if not _HOST_RE.match(hostname) or hostname.startswith((".", "-")):
            raise InvalidURL(f"{shown}: {hostname!r} is not a valid host name") from None
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


def env_gateway_keys() -> tuple[str | None, str | None]:
    """The gateway's API keys as configured in the environment:
    ``(AICORTEX_GATEWAY_KEYS, AICORTEX_GATEWAY_KEYS_FILE)`` (comma-separated keys; a file
    of one key per line), each ``None`` when unset or empty."""
    return os.environ.get("AICORTEX_GATEWAY_KEYS") or None, os.environ.get("AICORTEX_GATEWAY_KEYS_FILE") or None
