"""aicortex: talk to many Ollama servers as if they were one.

A SQLite registry knows which server has which model; ``chat()`` streams the reply
token by token as timestamped events and, when a server fails before or during the
reply, goes on on the next one without losing or repeating a word. Every reply gets
TTFT and tokens/s figures.

    >>> from aicortex import chat                         # doctest: +SKIP
    >>> for event in chat("Why is the sky blue?", model="llama3.2", stream=True):
    ...     if event.type == "token":
    ...         print(event.content, end="", flush=True)

Importing this package opens no file and no connection; httpx and sqlite-utils are
loaded when the first :class:`Client` is built.
"""

from typing import TYPE_CHECKING

from ._client import AsyncClient, ChatCall, Client, chat, embed, generate, list_model_servers, models, refresh
from ._bench import BenchResult
from ._config import Timeouts
from ._discovery import ProbeResult, RefreshReport
from ._embed import EmbedResult
from ._fleet import FleetView
from ._fleetops import OpResult, PsReport, PullProgress, PullResult, ShowResult
from ._health import Health, Outcome
from ._hedge import HedgePolicy
from ._exceptions import (
    AICortexError,
    AllServersFailed,
    BadRequest,
    ConfigError,
    ConnectError,
    ConnectTimeout,
    DeadlineExceeded,
    FirstTokenTimeout,
    HTTPStatusError,
    IncompleteStream,
    InvalidOutput,
    InvalidURL,
    ModelNotFound,
    OllamaError,
    PoolTimeout,
    ProtocolError,
    RegistryError,
    ServerError,
    ServerModelNotFound,
    StallTimeout,
    TimeoutError,
)
from ._models import Attempt, FleetModel, LoadedModel, ModelEntry, ModelList, Reply, Server, StreamEvent, Usage
from ._routing import Route
from ._session import Candidate
from ._store import Snapshot
from ._stream import AsyncStream, Stream
from ._version import __version__

if TYPE_CHECKING:  # type checkers see the class; at run time it loads on first use (below)
    from ._registry import Registry

__all__ = [
    "__version__",
    # functions
    "chat",
    "generate",
    "embed",
    "models",
    "list_model_servers",
    "refresh",
    # objects
    "Client",
    "AsyncClient",
    "ChatCall",
    "Registry",
    "Stream",
    "AsyncStream",
    "StreamEvent",
    "Reply",
    "Usage",
    "Attempt",
    "Server",
    "ModelEntry",
    "ModelList",
    "Timeouts",
    "HedgePolicy",
    "FleetModel",
    "LoadedModel",
    "PsReport",
    "ShowResult",
    "PullProgress",
    "PullResult",
    "OpResult",
    # types that appear in signatures
    "EmbedResult",
    "RefreshReport",
    "ProbeResult",
    "BenchResult",
    "Route",
    "Candidate",
    "Health",
    "Outcome",
    "FleetView",
    "Snapshot",
    # exceptions
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
]


def __getattr__(name: str) -> object:
    # Registry imports sqlite-utils: load it on first use, not at import (PEP 562).
    if name == "Registry":
        from ._registry import Registry

        return Registry
    raise AttributeError(f"module 'aicortex' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
