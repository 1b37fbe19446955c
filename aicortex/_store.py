"""The store interface: what the in-memory fleet view needs from persistent storage.

:class:`~aicortex.Registry` (SQLite, ``_registry.py``) implements it, and so does its
subclass ``PostgresRegistry`` (``_store_postgres.py``, chosen by a ``postgresql://``
location). The request path never calls a store: the fleet view (``_fleet.py``) reads a
:class:`Snapshot` about once a second and writes outcomes in batches from one background
thread.

A store shared by several machines may also have (the fleet view uses them when present):

* ``subscribe(callback)`` / ``unsubscribe(callback)``: call ``callback()`` after every
  change by any process (PostgreSQL: ``LISTEN``/``NOTIFY``), so views reload at once;
* ``sync_inflight(owner, {url: requests}) -> {url: requests}``: write this process's
  in-flight counts as leases that expire, and read the other processes' counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping, Protocol, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from ._health import Health, Outcome
    from ._models import ModelEntry, Server

__all__ = ["Snapshot", "Store"]


@dataclass(frozen=True)
class Snapshot:
    """One consistent read of the fleet.

    Fields:
        servers: every registered server, highest priority first, then in the order added.
        entries: ``{model key: [(server, entry), ...]}`` for the *enabled* servers, in
            the same order (``model key`` as :func:`aicortex._protocol.model_key`).
        health: ``{(url, record): Health}``; ``record`` is ``""`` (the server) or a model key.
        last_refresh_at: Unix seconds of the last refresh, ``None`` if never refreshed.
    """

    servers: "tuple[Server, ...]" = ()
    entries: "Mapping[str, list[tuple[Server, ModelEntry]]]" = field(default_factory=dict)
    health: "Mapping[tuple[str, str], Health]" = field(default_factory=dict)
    last_refresh_at: float | None = None


class Store(Protocol):
    """Persistent fleet state shared by processes (SQLite, or PostgreSQL across machines).

    Every method may raise :class:`~aicortex.RegistryError`; the fleet view logs and
    counts it and goes on from memory.
    """

    def snapshot(self) -> Snapshot:
        """Read servers, model entries, health and the last refresh time."""

    #: Writes committed through this object (a cheap in-memory check, no I/O).
    write_count: int

    def data_version(self) -> int:
        """A number that changes whenever the store changed (this process or another)."""

    def apply_outcomes(self, outcomes: "Sequence[Outcome]") -> None:
        """Fold outcomes into the health records (read-modify-write, atomically)."""

    def claim_trial(self, url: str, model: str, now: float) -> bool:
        """Claim the one half-open trial of (url, model) across processes."""
