"""Exceptions: one root, every foreign error translated at one boundary.

The tree::

    AICortexError
    ├── ConfigError (ValueError)          bad input from the caller: no model, empty prompt,
    │   └── InvalidURL                    a server URL that is not http(s)://host[:port]
    ├── RegistryError                     the registry file cannot be opened or is not SQLite
    ├── ModelNotFound (LookupError)       no enabled server in the registry lists the model
    ├── ServerError                       one server failed one attempt (``.server`` = its URL)
    │   ├── ConnectError (ConnectionError)   refused, reset before a reply, DNS failure
    │   ├── TimeoutError (builtins.TimeoutError)
    │   │   ├── ConnectTimeout            no TCP connection within the connect timeout
    │   │   ├── PoolTimeout               our own connection pool is full (not the server's fault)
    │   │   ├── FirstTokenTimeout         no first content/thinking chunk in time
    │   │   └── StallTimeout              no bytes between chunks for the stall timeout
    │   ├── HTTPStatusError               an HTTP error status with Ollama's {"error": ...}
    │   │   ├── BadRequest                HTTP 400: the caller's mistake, never failed over
    │   │   └── ServerModelNotFound       HTTP 404 {"error": "model 'x' not found"}
    │   ├── OllamaError                   an in-stream {"error": ...} line on an HTTP 200 stream
    │   └── ProtocolError                 a malformed reply: bad NDJSON, a line over the cap,
    │       └── IncompleteStream          the body ended cleanly without a done:true chunk
    ├── InvalidOutput (ValueError)        a reply that does not validate against output_type
    ├── DeadlineExceeded (TimeoutError)   the total deadline across all attempts ran out
    └── AllServersFailed (RuntimeError)   every candidate failed; ``.attempts`` says how

``httpx``, ``sqlite3`` and ``json`` errors never escape: they are translated in
``_transport`` and ``_registry`` with ``raise ... from exc`` so the cause stays attached.
"""

from __future__ import annotations

import builtins
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from ._models import Attempt

__all__ = [
    "AICortexError",
    "ConfigError",
    "InvalidURL",
    "RegistryError",
    "ModelNotFound",
    "ServerError",
    "ConnectError",
    "TimeoutError",
    "ConnectTimeout",
    "PoolTimeout",
    "FirstTokenTimeout",
    "StallTimeout",
    "HTTPStatusError",
    "BadRequest",
    "ServerModelNotFound",
    "OllamaError",
    "ProtocolError",
    "IncompleteStream",
    "DeadlineExceeded",
    "AllServersFailed",
    "InvalidOutput",
    "error_reason",
]


class AICortexError(Exception):
    """Root of every error aicortex raises."""


class ConfigError(AICortexError, ValueError):
    """The caller gave something unusable (no model, an empty prompt, a bad option).

    The message says what was wrong and how to fix it.
    """


class InvalidURL(ConfigError):
    """A server URL that is not ``http://`` or ``https://`` with a host."""


class RegistryError(AICortexError):
    """The server registry could not be opened, read or written.

    Raised for a file that is not an SQLite database, an unwritable directory, or an
    unknown server name/URL. The file is never modified or replaced when this is raised.
    """


class ModelNotFound(AICortexError, LookupError):
    """No enabled server in the registry lists the requested model (Ollama /api/tags).

    Attributes:
        model: the model name that was asked for.
    """

    def __init__(self, message: str, *, model: str) -> None:
        super().__init__(message)
        self.model = model


class ServerError(AICortexError):
    """One server failed one attempt.

    Attributes:
        server: URL of the server the error came from (``None`` if unknown).
    """

    #: Short machine-readable name of the failure kind, used by the failover table.
    kind = "server_error"

    def __init__(self, message: str, *, server: str | None = None) -> None:
        super().__init__(message)
        self.server = server

    @property
    def reason(self) -> str:
        """The message without the server's URL (for places that name the server already)."""
        return super().__str__()

    def __str__(self) -> str:
        msg = super().__str__()
        return f"{msg} ({self.server})" if self.server else msg


class ConnectError(ServerError, ConnectionError):
    """The TCP/TLS connection could not be made or was reset (refused, reset, DNS)."""

    kind = "connect"


class TimeoutError(ServerError, builtins.TimeoutError):  # noqa: A001 - mirrors httpx
    """A per-attempt timeout expired. ``.timeout_s`` is the limit in seconds."""

    kind = "timeout"

    def __init__(
        self, message: str, *, server: str | None = None, timeout_s: float | None = None
    ) -> None:
        super().__init__(message, server=server)
        self.timeout_s = timeout_s


class ConnectTimeout(TimeoutError):
    """No TCP connection within the connect timeout."""

    kind = "connect_timeout"


class PoolTimeout(TimeoutError):
    """No free connection in this client's own pool within the connect timeout.

    The server is not to blame (no breaker penalty); raise ``Client(max_connections=...)``
    if many streams run at once.
    """

    kind = "pool"


class FirstTokenTimeout(TimeoutError):
    """No first content or thinking chunk within the first-token timeout.

    Ollama sends nothing, not even headers, while it loads a model or waits for a slot
    (ollama-protocol §3.4), so this is also how a blackholed server shows up.
    """

    kind = "first_token_timeout"


class StallTimeout(TimeoutError):
    """The reply had started but no bytes arrived for longer than the stall timeout."""

    kind = "stall"


class HTTPStatusError(ServerError):
    """The server answered with an HTTP error status.

    Attributes:
        status_code: the HTTP status (e.g. 500, 503, 429).
        error: the text of Ollama's ``{"error": "..."}`` body, or the raw body.
    """

    kind = "http_status"

    def __init__(
        self, message: str, *, server: str | None = None, status_code: int, error: str = ""
    ) -> None:
        super().__init__(message, server=server)
        self.status_code = status_code
        self.error = error


class BadRequest(HTTPStatusError):
    """HTTP 400: the request itself is wrong (bad option, unsupported think...).

    Another server would refuse it the same way, so it is raised at once, no failover.
    """

    kind = "bad_request"


class ServerModelNotFound(HTTPStatusError):
    """HTTP 404 from /api/chat: this server does not have the model (any more)."""

    kind = "model_not_found"


class OllamaError(ServerError):
    """An ``{"error": "..."}`` line inside an HTTP 200 NDJSON stream (ollama-protocol §3.3).

    ``.error`` holds the server's text.
    """

    kind = "error_line"

    def __init__(self, message: str, *, server: str | None = None, error: str = "") -> None:
        super().__init__(message, server=server)
        self.error = error


class ProtocolError(ServerError):
    """The reply broke the protocol: a line that is not JSON, a line over the size cap."""

    kind = "malformed"


class IncompleteStream(ProtocolError):
    """The body ended cleanly (EOF) without a ``done: true`` chunk (ollama-protocol §3.3).

    A connection dropped mid-reply is a :class:`ConnectError` instead (server-level).
    """

    kind = "incomplete"


class DeadlineExceeded(AICortexError, builtins.TimeoutError):
    """The total deadline for the request (across all attempts) ran out.

    Attributes:
        deadline_s: the deadline in seconds.
        attempts: the attempts made before it ran out.
    """

    kind = "deadline"

    def __init__(
        self, message: str, *, deadline_s: float, attempts: Sequence["Attempt"] = ()
    ) -> None:
        super().__init__(message)
        self.deadline_s = deadline_s
        self.attempts = tuple(attempts)


class InvalidOutput(AICortexError, ValueError):
    """A complete reply that does not validate against the ``output_type`` asked for.

    Attributes:
        server: URL of the server that produced the reply.
        model: the model asked for.
        text: the reply's text.
    """

    def __init__(self, message: str, *, server: str | None, model: str, text: str) -> None:
        super().__init__(message)
        self.server = server
        self.model = model
        self.text = text


class AllServersFailed(AICortexError, RuntimeError):
    """Every candidate server failed.

    Attributes:
        model: the model asked for.
        attempts: one :class:`~aicortex.Attempt` per server tried, in order, each with
            its ``error``.
    """

    def __init__(self, message: str, *, model: str, attempts: Sequence["Attempt"]) -> None:
        super().__init__(message)
        self.model = model
        self.attempts = tuple(attempts)


def error_reason(error: BaseException | None) -> str:
    """An error's text without the server URL (``ServerError.reason``), for messages and
    events that name the server already; ``str(error)`` for any other error."""
    return error.reason if isinstance(error, ServerError) else str(error)
