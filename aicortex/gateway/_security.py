"""API keys of the gateway: loading them, and checking a request's bearer token in
constant time.

Keys come from ``AICORTEX_GATEWAY_KEYS`` (comma-separated), from a file named by
``AICORTEX_GATEWAY_KEYS_FILE`` or ``--keys-file`` (one key per line; blank lines and
lines starting with ``#`` are skipped), or are passed to :func:`~aicortex.gateway.create_app`.
A client sends one as ``Authorization: Bearer KEY`` (what the OpenAI SDK does with
``api_key=``, and the official ``ollama`` client with ``headers=`` or ``OLLAMA_API_KEY``).
The caller's ``Authorization`` header is never sent on to fleet servers: the gateway builds
every upstream request itself (per-server headers come from the registry's
``headers_env``).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
from pathlib import Path
from typing import Iterable, Mapping

from .._config import env_gateway_keys
from .._exceptions import ConfigError

__all__ = ["KeyRing", "load_keys", "is_loopback"]

#: Shortest key accepted (characters): shorter ones are guessable.
MIN_KEY_CHARS = 16


def load_keys(keys: Iterable[str] | None = None, keys_file: "str | os.PathLike[str] | None" = None, *, environ: bool = True) -> tuple[str, ...]:
    """Every key given: ``keys``, the lines of ``keys_file``, and (with ``environ``) those
    of ``AICORTEX_GATEWAY_KEYS`` / ``AICORTEX_GATEWAY_KEYS_FILE``.

    Raises:
        ConfigError: a key file cannot be read, or a key is shorter than 16 characters
            or holds whitespace.
    """
    found = [k.strip() for k in (keys or ()) if k.strip()]
    files = [keys_file] if keys_file else []
    if environ:
        env_keys, env_file = env_gateway_keys()
        found += [k.strip() for k in (env_keys or "").split(",") if k.strip()]
        if env_file:
            files.append(env_file)
    for path in files:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read the API key file {path}: {exc.strerror or exc}") from exc
        found += [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    for key in found:
        if len(key) < MIN_KEY_CHARS or any(ch.isspace() for ch in key):
            raise ConfigError(
                f"an API key is too short or holds whitespace (keys need at least {MIN_KEY_CHARS} "
                "characters: generate one with `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
            )
    return tuple(dict.fromkeys(found))


class KeyRing:
    """The accepted keys, kept as SHA-256 digests and compared with
    :func:`hmac.compare_digest` against every key (no early exit), so neither a key's
    content nor its length leaks through timing."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = [hashlib.sha256(k.encode()).digest() for k in keys]

    def __bool__(self) -> bool:
        return bool(self._digests)

    def check(self, headers: Mapping[str, str]) -> tuple[bool, str]:
        """``(ok, why)`` for a request's headers (lower-case names): ``ok`` when keys are
        off or the bearer token is one of them; ``why`` words a refusal."""
        if not self._digests:
            return True, ""
        auth = headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if not auth:
            return False, "missing API key: send it as 'Authorization: Bearer KEY'"
        if scheme.lower() != "bearer" or not token.strip():
            return False, "malformed Authorization header: send 'Authorization: Bearer KEY'"
        digest = hashlib.sha256(token.strip().encode()).digest()
        ok = False
        for known in self._digests:
            ok |= hmac.compare_digest(digest, known)
        return (True, "") if ok else (False, "invalid API key")

    def client_id(self, headers: Mapping[str, str]) -> str | None:
        """A short, non-secret id of the request's key (for per-client limits and logs)."""
        auth = headers.get("authorization", "")
        if not self._digests or not auth:
            return None
        return "key:" + hashlib.sha256(auth.partition(" ")[2].strip().encode()).hexdigest()[:12]


def is_loopback(host: str) -> bool:
    """``host`` (an address or ``localhost``) is a loopback address."""
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
