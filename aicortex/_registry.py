"""The server registry: SQLite through sqlite-utils. The only module that imports it.

Tables (created by migrations, see ``MIGRATIONS``):

* ``servers``: one row per registered Ollama server: unique ``url``, unique ``name``,
  ``priority``, ``enabled``, ``added_at``/``updated_at`` (Unix seconds), what the last
  refresh found (``status``, ``version``, ``last_seen_at``, ``last_refresh_at``,
  ``last_error``, ``probe_latency_s``).
* ``models``: the models each server lists (Ollama /api/tags): ``name``, ``digest``,
  ``size`` (bytes), ``details`` (JSON), ``modified_at``, and ``loaded`` (listed by /api/ps).
* ``meta``: key/value facts about the registry itself (when it was seeded, refreshed).

``servers.headers_env`` (m004) holds per-server request headers by reference: a JSON
object ``{header name: environment variable name}``; the values are read from the
environment at request time (:func:`aicortex._config.resolve_headers`).

No secret is ever stored: credentials are referenced by environment-variable name only.
A file registry runs in WAL mode with a busy timeout, so several processes can share it.
Every write happens inside ``db.atomic()``; one lock makes a ``Registry`` thread-safe.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Sequence

import sqlite_utils
from sqlite_utils.migrations import Migrations

from ._config import (
    check_headers_env,
    default_registry_path,
    MAX_ERROR_CHARS,
    env_ollama_host,
    env_registry_path,
    is_postgres_url,
    looks_like_url,
    mask_url,
    normalize_url,
    short_error,
)
from ._exceptions import ConfigError, RegistryError
from ._health import Health
from ._models import ModelEntry, ModelList, Server
from ._protocol import model_key

if TYPE_CHECKING:  # pragma: no cover
    from ._health import Outcome
    from ._store import Snapshot

__all__ = ["Registry", "MIGRATIONS", "BUSY_TIMEOUT_S", "copy_registry"]

#: How long a writer waits for another process's lock before "database is locked".
BUSY_TIMEOUT_S = 10.0

MIGRATIONS = Migrations("aicortex")


@MIGRATIONS()
def m001_servers_and_models(db: sqlite_utils.Database) -> None:
    db.table("servers").create(
        {
            "id": int,
            "url": str,
            "name": str,
            "priority": int,
            "enabled": int,
            "added_at": float,
            "updated_at": float,
            "status": str,
            "version": str,
            "last_seen_at": float,
            "last_refresh_at": float,
            "last_error": str,
            "probe_latency_s": float,
        },
        pk="id",
        not_null={"url", "name", "priority", "enabled", "added_at", "updated_at", "status"},
        defaults={"priority": 0, "enabled": 1, "status": "unknown"},
    )
    db.table("servers").create_index(["url"], unique=True)
    db.table("servers").create_index(["name"], unique=True)
    db.table("models").create(
        {
            "server_id": int,
            "name": str,
            "key": str,
            "digest": str,
            "size": int,
            "details": str,
            "modified_at": str,
            "loaded": int,
        },
        pk=("server_id", "name"),
        foreign_keys=[("server_id", "servers", "id")],
        not_null={"server_id", "name", "key"},
        defaults={"loaded": 0},
    )
    db.table("models").create_index(["key"])
    db.table("meta").create({"key": str, "value": str}, pk="key")


@MIGRATIONS()
def m002_health(db: sqlite_utils.Database) -> None:
    # One row per server (model = "") and per (server, model): breaker state and EWMAs.
    db.table("health").create(
        {
            "server_id": int,
            "model": str,
            "failures": int,
            "open_until": float,
            "last_error": str,
            "successes": int,
            "total_failures": int,
            "ewma_ttft_s": float,
            "ewma_tps": float,
            "ewma_server_tps": float,
            "last_success_at": float,
            "last_failure_at": float,
        },
        pk=("server_id", "model"),
        foreign_keys=[("server_id", "servers", "id")],
        not_null={"server_id", "model", "failures", "successes", "total_failures"},
        defaults={"failures": 0, "successes": 0, "total_failures": 0},
    )


@MIGRATIONS()
def m003_bench(db: sqlite_utils.Database) -> None:
    # The latest `aicortex bench` figures per (server, model).
    db.table("bench").create(
        {
            "server_id": int,
            "model": str,
            "measured_at": float,
            "runs": int,
            "ok": int,
            "ttft_p50_s": float,
            "ttft_p95_s": float,
            "tps_p50": float,
            "tps_p95": float,
            "server_tps_p50": float,
        },
        pk=("server_id", "model"),
        foreign_keys=[("server_id", "servers", "id")],
    )


@MIGRATIONS()
def m004_server_headers_env(db: sqlite_utils.Database) -> None:
    # Per-server headers by reference: JSON {header name: environment variable name}.
    db.table("servers").add_column("headers_env", str)


def _now() -> float:
    return time.time()


class Registry:
    """The set of Ollama servers aicortex may use, and what each one serves.

    Args:
        path: an SQLite file path (created on first use, with its directory, unless
            ``create=False``), the string ``":memory:"`` for a private in-memory
            registry, a ``sqlite_utils.Database`` (used as it is, and left open by
            :meth:`close`: it stays the caller's), or ``None`` for the default
            (``AICORTEX_DB``, else ``servers.db`` in the user data directory).
        seed: when the registry is new, register ``OLLAMA_HOST`` (parsed like the
            official client; default ``http://127.0.0.1:11434``). Happens once per file:
            removing the seeded server does not bring it back. :attr:`seeded` tells
            whether this call did it.
        create: when ``False``, a file that does not exist is an error instead of a new
            registry (and new folders): for tools that only read. Ignored for
            ``":memory:"`` and a ``Database``.

    Attributes:
        path: the file, or ``None`` (in memory, or a caller's ``Database``).
        seeded: the URL this constructor registered as the seed, or ``None``.

    Raises:
        ConfigError: ``path`` (or ``AICORTEX_DB``) is a server URL, not a file.
        RegistryError: the file is not an SQLite database, or cannot be created; or
            ``create=False`` and there is no file. The file is left untouched.
    """

    def __new__(
        cls,
        path: str | os.PathLike[str] | sqlite_utils.Database | None = None,
        *,
        seed: bool = True,
        create: bool = True,
    ) -> "Registry":
        # The registry location chooses the store: a postgresql:// URL is a PostgresRegistry.
        if cls is Registry and is_postgres_url(path if path is not None else env_registry_path()):
            try:
                from ._store_postgres import PostgresRegistry
            except ImportError as exc:  # pragma: no cover - psycopg is there but broken
                raise ConfigError(f"a postgresql:// registry needs 'aicortex[postgres]': {exc}") from exc
            return super().__new__(PostgresRegistry)
        return super().__new__(cls)

    def __init__(
        self,
        path: str | os.PathLike[str] | sqlite_utils.Database | None = None,
        *,
        seed: bool = True,
        create: bool = True,
    ) -> None:
        self._lock = threading.RLock()
        #: Write transactions committed through this object (the fleet view reloads
        #: when it changes; other processes' writes show in :meth:`data_version`).
        self.write_count = 0
        self.seeded: str | None = None
        self._owns_db = not isinstance(path, sqlite_utils.Database)
        if isinstance(path, sqlite_utils.Database):
            self.path: Path | None = None
            self.db = path
        elif path == ":memory:":
            self.path = None
            self.db = sqlite_utils.Database(sqlite3.connect(":memory:", check_same_thread=False))
        else:
            given = path if path is not None else env_registry_path()
            if looks_like_url(given):
                url = mask_url(str(given).strip())
                raise ConfigError(
                    f"{url!r} is a server URL, not a registry file: use Client({url!r}) to talk to that "
                    f"server, or Registry.memory() and then .add({url!r}) for an in-memory registry "
                    "(a file registry takes a path, e.g. Registry('servers.db'))"
                )
            self.path = Path(path).expanduser() if path is not None else default_registry_path()
            self.db = self._open_file(self.path, create=create)
        try:
            self._setup(seed)
        except sqlite3.DatabaseError as exc:
            if self._owns_db:
                self.db.close()
            raise RegistryError(self._describe(exc)) from exc

    @classmethod
    def memory(cls, *, seed: bool = False) -> "Registry":
        """A private in-memory registry (not seeded unless asked), for tests and scripts."""
        return cls(":memory:", seed=seed)

    def _describe(self, exc: Exception) -> str:
        where = str(self.path) if self.path else "in-memory registry"
        msg = str(exc)
        if "not a database" in msg or "malformed" in msg or "encrypted" in msg:
            return (
                f"registry file {where} is not an SQLite database ({msg}); it was left untouched. "
                "Move it aside or point AICORTEX_DB / --db at another file."
            )
        return f"registry {where}: {msg}"

    def _open_file(self, path: Path, *, create: bool = True) -> sqlite_utils.Database:
        missing = RegistryError(f"no registry at {path}: add a server first with `aicortex servers add URL`")
        if not create and not path.exists():
            raise missing
        try:
            if create:
                path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, check_same_thread=False)
            else:  # mode=rw: never create the file, even if it vanished since the check
                uri = f"{path.absolute().as_uri()}?mode=rw"
                conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            if not create and not path.exists():
                raise missing from exc
            raise RegistryError(f"cannot open registry file {path}: {exc}") from exc
        try:
            conn.execute("PRAGMA schema_version").fetchone()
            return sqlite_utils.Database(conn)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise RegistryError(self._describe(exc)) from exc

    def _setup(self, seed: bool) -> None:
        db = self.db
        db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        db.execute("PRAGMA foreign_keys = ON")
        if self.path is not None:
            self._enable_wal()
        with self._lock:
            if not self._needs_setup(seed):
                return
            # Several processes may open a new file at once: take the write lock first
            # (BEGIN IMMEDIATE), then look again, so exactly one of them migrates and seeds.
            with self._write_txn():
                if MIGRATIONS.pending(db):
                    MIGRATIONS.apply(db)
                if seed and self._meta("seeded_at") is None:
                    if not db["servers"].count:
                        self.seeded = env_ollama_host()
                        self._insert(self.seeded, name=None, priority=0, enabled=True)
                    self._set_meta("seeded_at", str(_now()))

    def _enable_wal(self) -> None:
        """Switch a file registry to WAL, once. SQLite may answer "database is locked" at
        once, without waiting on the busy timeout, while other processes open the same new
        file, so the switch is retried (bounded by ``BUSY_TIMEOUT_S``); another process
        may also have done it meanwhile."""
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                self.db.enable_wal()  # a no-op once the file is in WAL mode
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def _needs_setup(self, seed: bool) -> bool:
        return bool(MIGRATIONS.pending(self.db)) or (seed and self._meta("seeded_at") is None)

    # -- helpers ---------------------------------------------------------------------------
    def _meta(self, key: str) -> str | None:
        rows = list(self.db.query("select value from meta where key = ?", [key]))
        return rows[0]["value"] if rows else None

    def _set_meta(self, key: str, value: str) -> None:
        self.db.table("meta").upsert({"key": key, "value": value}, pk="key")

    def _insert(
        self, url: str, *, name: str | None, priority: int, enabled: bool, headers_env: dict[str, str] | None = None
    ) -> None:
        now = _now()
        self.db.table("servers").insert(
            {
                "url": url,
                "name": name or _default_name(url),
                "priority": int(priority),
                "enabled": int(bool(enabled)),
                "added_at": now,
                "updated_at": now,
                "status": "unknown",
                "headers_env": json.dumps(headers_env) if headers_env else None,
            }
        )

    def _find(self, server: str) -> dict[str, Any] | None:
        """The servers row for a URL or a name, or ``None``."""
        rows = list(self.db.query("select * from servers where name = ?", [server]))
        if not rows:
            try:
                url = normalize_url(server)
            except ConfigError:
                url = server
            rows = list(self.db.query("select * from servers where url = ?", [url]))
        return rows[0] if rows else None

    def _row(self, server: str) -> dict[str, Any]:
        """The servers row for a URL or a name; ``RegistryError`` naming the known ones."""
        row = self._find(server)
        if row is None:
            known = ", ".join(r["name"] for r in self.db.query("select name from servers order by id")) or "none"
            raise RegistryError(
                f"no registered server {mask_url(server)!r} (registered: {known}); see `aicortex servers list`"
            )
        return row

    def _server(self, row: dict[str, Any], models: Sequence[dict[str, Any]] = ()) -> Server:
        return Server(
            url=row["url"],
            name=row["name"],
            priority=row["priority"],
            enabled=bool(row["enabled"]),
            status=row["status"] or "unknown",
            version=row["version"],
            last_seen_at=row["last_seen_at"],
            last_error=row["last_error"],
            probe_latency_s=row["probe_latency_s"],
            models=tuple(m["name"] for m in models),
            loaded=tuple(m["name"] for m in models if m["loaded"]),
            added_at=row["added_at"],
            headers_env=json.loads(row.get("headers_env") or "{}"),
        )

    def _wrap(self, write: bool = False) -> "contextlib.AbstractContextManager[None]":
        return self._write_txn() if write else _Guard(self)

    @contextlib.contextmanager
    def _write_txn(self) -> Iterator[None]:
        """Lock, then ``BEGIN IMMEDIATE`` (take the write lock up front, so a read-then-write
        never fails with "database is locked"), then ``db.atomic()`` inside it."""
        with _Guard(self):
            conn = self.db.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                with self.db.atomic():
                    yield
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            else:
                conn.execute("COMMIT")
                self.write_count += 1

    # -- public API -------------------------------------------------------------------------
    def add(
        self,
        url: str,
        *,
        name: str | None = None,
        priority: int = 0,
        enabled: bool = True,
        headers_env: Mapping[str, str] | None = None,
    ) -> Server:
        """Register a server.

        Args:
            url: ``http(s)://host[:port]`` or a bare ``host[:port]`` (port 11434).
            name: short unique name (default ``host:port``).
            priority: higher is tried first among equally healthy servers (default 0).
            headers_env: extra request headers for this server by reference,
                ``{header name: environment variable name}`` (e.g.
                ``{"Authorization": "GPU1_TOKEN"}``); only the names are stored.

        Returns the new :class:`~aicortex.Server`.

        Raises:
            InvalidURL: the URL is not http(s) with a host.
            ConfigError: a header or environment variable name is not valid.
            RegistryError: the URL or the name is already registered.
        """
        normalized = normalize_url(url)
        refs = check_headers_env(headers_env)
        if name is not None and not name.strip():
            raise RegistryError("server name cannot be empty")
        with self._wrap(write=True):
            existing = list(self.db.query("select name, url from servers where url = ? or name = ?", [normalized, name or _default_name(normalized)]))
            if existing:
                e = existing[0]
                raise RegistryError(
                    f"server {e['name']!r} ({e['url']}) is already registered; "
                    "use a different --name, or `aicortex servers remove` it first"
                )
            self._insert(normalized, name=name, priority=priority, enabled=enabled, headers_env=refs)
            return self.get(normalized)

    def set_headers_env(self, server: str, headers_env: Mapping[str, str] | None) -> Server:
        """Replace the request headers a server (by URL or name) gets by reference:
        ``{header name: environment variable name}``; ``None`` or ``{}`` removes them.

        Returns the updated :class:`~aicortex.Server`.

        Raises:
            ConfigError: a header or environment variable name is not valid.
            RegistryError: no such server.
        """
        refs = check_headers_env(headers_env)
        with self._wrap(write=True):
            row = self._row(server)
            self.db.table("servers").update(
                row["id"], {"headers_env": json.dumps(refs) if refs else None, "updated_at": _now()}
            )
            return self.get(row["url"])

    def remove(self, server: str) -> Server:
        """Remove a server (by URL or name) and its model list. Returns what was removed.

        Raises:
            RegistryError: no such server.
        """
        with self._wrap(write=True):
            row = self._row(server)
            removed = self._server(row)
            self.db.execute("delete from models where server_id = ?", [row["id"]])
            self.db.execute("delete from health where server_id = ?", [row["id"]])
            self.db.execute("delete from bench where server_id = ?", [row["id"]])
            self.db.execute("delete from servers where id = ?", [row["id"]])
            return removed

    def _set_enabled(self, server: str, enabled: bool) -> Server:
        with self._wrap(write=True):
            row = self._row(server)
            self.db.table("servers").update(row["id"], {"enabled": int(enabled), "updated_at": _now()})
            return self.get(row["url"])

    def enable(self, server: str) -> Server:
        """Enable a server (by URL or name). Raises RegistryError if unknown."""
        return self._set_enabled(server, True)

    def disable(self, server: str) -> Server:
        """Disable a server (kept, never used until enabled). Raises RegistryError if unknown."""
        return self._set_enabled(server, False)

    def get(self, server: str) -> Server:
        """One server by URL or name. Raises RegistryError if unknown."""
        with self._wrap():
            row = self._row(server)
            models = list(self.db.query("select name, loaded from models where server_id = ? order by name", [row["id"]]))
            return self._server(row, models)

    def servers(self, *, enabled_only: bool = False) -> list[Server]:
        """Every registered server, highest priority first, then in the order added."""
        with self._wrap():
            where = "where enabled = 1" if enabled_only else ""
            rows = list(self.db.query(f"select * from servers {where} order by priority desc, id"))
            models: dict[int, list[dict[str, Any]]] = {}
            for m in self.db.query("select server_id, name, loaded from models order by name"):
                models.setdefault(m["server_id"], []).append(m)
            return [self._server(r, models.get(r["id"], [])) for r in rows]

    def models(self) -> ModelList:
        """Sorted distinct model names listed by enabled servers (Ollama /api/tags names).

        A :class:`~aicortex._models.ModelList`: the names as listed, and ``in`` follows
        Ollama's rule (``"llama3.2" in registry.models()`` when a server lists
        ``"llama3.2:latest"``, and the other way round).
        """
        with self._wrap():
            rows = self.db.query(
                "select distinct models.name from models join servers on servers.id = models.server_id "
                "where servers.enabled = 1 order by models.name"
            )
            return ModelList(r["name"] for r in rows)

    def model_entries(self, model: str) -> list[tuple[Server, ModelEntry]]:
        """Enabled servers that list ``model`` (``x`` and ``x:latest`` match), with the entry.

        Ordered by priority (highest first), then the order servers were added.
        """
        with self._wrap():
            rows = list(
                self.db.query(
                    "select servers.*, models.name as m_name, models.digest as m_digest, models.size as m_size, "
                    "models.details as m_details, models.modified_at as m_modified_at, models.loaded as m_loaded "
                    "from models join servers on servers.id = models.server_id "
                    "where servers.enabled = 1 and models.key = ? order by servers.priority desc, servers.id",
                    [model_key(model)],
                )
            )
            ids = sorted({r["id"] for r in rows})
            listed: dict[int, list[dict[str, Any]]] = {}
            if ids:
                marks = ",".join("?" * len(ids))
                for m in self.db.query(
                    f"select server_id, name, loaded from models where server_id in ({marks}) order by name", ids
                ):
                    listed.setdefault(m["server_id"], []).append(m)
            out = []
            for r in rows:
                entry = ModelEntry(
                    name=r["m_name"],
                    digest=r["m_digest"] or "",
                    size=r["m_size"] or 0,
                    details=json.loads(r["m_details"] or "{}"),
                    modified_at=r["m_modified_at"] or "",
                    loaded=bool(r["m_loaded"]),
                )
                out.append((self._server(r, listed.get(r["id"], [])), entry))
            return out

    def record_refresh(
        self,
        url: str,
        *,
        version: str | None = None,
        models: Iterable[ModelEntry] | None = None,
        loaded: Iterable[str] | None = None,
        latency_s: float | None = None,
        error: str | None = None,
        at: float | None = None,
    ) -> None:
        """Store one server's probe result (from /api/version, /api/tags, /api/ps).

        On ``error`` the server is marked ``down`` with the error (cut to
        :data:`~aicortex._config.MAX_ERROR_CHARS` by ``short_error``); its model list is
        kept (never deleted). On success the model list is replaced.
        """
        at = _now() if at is None else at
        with self._wrap(write=True):
            row = self._row(url)
            if error is not None:
                self.db.table("servers").update(
                    row["id"],
                    {"status": "down", "last_error": short_error(error), "last_refresh_at": at, "updated_at": at},
                )
            else:
                self.db.table("servers").update(
                    row["id"],
                    {
                        "status": "up",
                        "version": version,
                        "last_error": None,
                        "last_seen_at": at,
                        "last_refresh_at": at,
                        "probe_latency_s": latency_s,
                        "updated_at": at,
                    },
                )
                if models is not None:
                    warm = {model_key(n) for n in (loaded or ())}
                    self.db.execute("delete from models where server_id = ?", [row["id"]])
                    unique = {m.name: m for m in models}.values()  # a name listed twice is one model
                    self.db.table("models").insert_all(
                        {
                            "server_id": row["id"],
                            "name": m.name,
                            "key": model_key(m.name),
                            "digest": m.digest,
                            "size": m.size,
                            "details": json.dumps(dict(m.details)),
                            "modified_at": m.modified_at,
                            "loaded": int(model_key(m.name) in warm),
                        }
                        for m in unique
                    )
            self._set_meta("last_refresh_at", str(at))

    def record_error(self, url: str, error: str) -> None:
        """Remember the last error a chat attempt got from a server (shown by ``servers list``),
        cut to :data:`~aicortex._config.MAX_ERROR_CHARS` characters. Ignored for an unknown server."""
        with self._wrap(write=True):
            row = self._find(url)
            if row is None:
                return
            self.db.table("servers").update(row["id"], {"last_error": short_error(error), "updated_at": _now()})

    def last_refresh_at(self) -> float | None:
        """Unix seconds of the last refresh of any server, ``None`` if never refreshed."""
        with self._wrap():
            value = self._meta("last_refresh_at")
            return float(value) if value is not None else None

    # -- health (circuit breakers, EWMA metrics) ------------------------------------------------
    def health(self, server: str, model: str = "") -> Health:
        """The :class:`~aicortex._health.Health` of a server (``model=""``) or (server, model);
        a fresh ``Health()`` for one that is not (or no longer) registered."""
        with self._wrap():
            row = self._find(server)
            return self._health_of(row["id"], model_key(model) if model else "") if row else Health()

    def _put_health(self, server_id: int, model: str, health: Health) -> None:
        """Write one health record (inside a write transaction)."""
        self.db.table("health").upsert({"server_id": server_id, "model": model, **dataclasses.asdict(health)}, pk=("server_id", "model"))

    def _health_of(self, server_id: int, model: str) -> Health:
        rows = list(self.db.query("select * from health where server_id = ? and model = ?", [server_id, model]))
        if not rows:
            return Health()
        r = rows[0]
        return Health(**{f.name: r[f.name] for f in dataclasses.fields(Health)})

    def health_for_model(self, model: str) -> dict[str, tuple[Health, Health]]:
        """``{url: (server health, (server, model) health)}`` for every server listing ``model``."""
        key = model_key(model)
        with self._wrap():
            out: dict[str, tuple[Health, Health]] = {}
            rows = self.db.query(
                "select servers.id, servers.url from servers join models on models.server_id = servers.id "
                "where models.key = ?",
                [key],
            )
            for r in list(rows):
                out[r["url"]] = (self._health_of(r["id"], ""), self._health_of(r["id"], key))
            return out

    def update_health(self, server: str, model: str, change: Callable[[Health], Health | None]) -> Health | None:
        """Read-modify-write one health record atomically, across threads and processes.

        ``change`` gets the current :class:`Health` and returns the new one, or ``None``
        to leave it as is (then ``None`` is returned, as it is for a server that is no
        longer registered). The read and the write happen in
        one ``BEGIN IMMEDIATE`` transaction, so two processes never lose an update.
        The new ``last_error`` is cut by ``short_error`` before it is stored (and returned).
        """
        key = model_key(model) if model else ""
        with self._wrap(write=True):
            row = self._find(server)
            if row is None:  # removed meanwhile (e.g. by another process): nothing to record
                return None
            new = change(self._health_of(row["id"], key))
            if new is not None:
                if new.last_error is not None and len(new.last_error) > MAX_ERROR_CHARS:
                    new = dataclasses.replace(new, last_error=short_error(new.last_error))
                self._put_health(row["id"], key, new)
            return new

    def record_bench(self, model: str, result: Any) -> None:
        """Store the latest bench figures (a :class:`~aicortex._bench.BenchResult`) of
        (server, model), replacing the previous ones. Ignored for an unknown server."""
        with self._wrap(write=True):
            row = self._find(result.server)
            if row is None:
                return
            figures = {
                k: getattr(result, k)
                for k in ("measured_at", "runs", "ok", "ttft_p50_s", "ttft_p95_s", "tps_p50", "tps_p95", "server_tps_p50")
            }
            self.db.table("bench").upsert({"server_id": row["id"], "model": model_key(model), **figures}, pk=("server_id", "model"))

    def bench_results(self, model: str) -> dict[str, dict[str, Any]]:
        """``{url: figures}`` of the latest bench of ``model`` on each server."""
        with self._wrap():
            rows = self.db.query(
                "select servers.url, bench.* from bench join servers on servers.id = bench.server_id where bench.model = ?",
                [model_key(model)],
            )
            return {r.pop("url"): r for r in rows}

    # -- the store interface of the in-memory fleet view (see aicortex._store) ----------------
    def snapshot(self) -> "Snapshot":
        """Everything routing reads, in one read: enabled servers with their model
        entries, every health record, and when the fleet was last refreshed."""
        from ._store import Snapshot

        with self._wrap():
            rows = list(self.db.query("select * from servers order by priority desc, id"))
            models: dict[int, list[dict[str, Any]]] = {}
            for m in self.db.query("select * from models order by name"):
                models.setdefault(m["server_id"], []).append(m)
            servers = [self._server(r, models.get(r["id"], [])) for r in rows]
            entries: dict[str, list[tuple[Server, ModelEntry]]] = {}
            for r, server in zip(rows, servers):
                if not server.enabled:
                    continue
                for m in models.get(r["id"], []):
                    entry = ModelEntry(
                        name=m["name"],
                        digest=m["digest"] or "",
                        size=m["size"] or 0,
                        details=json.loads(m["details"] or "{}"),
                        modified_at=m["modified_at"] or "",
                        loaded=bool(m["loaded"]),
                    )
                    entries.setdefault(m["key"], []).append((server, entry))
            urls = {r["id"]: r["url"] for r in rows}
            fields = [f.name for f in dataclasses.fields(Health)]
            health = {
                (urls[h["server_id"]], h["model"]): Health(**{f: h[f] for f in fields})
                for h in self.db.query("select * from health")
                if h["server_id"] in urls
            }
            last = self._meta("last_refresh_at")
            return Snapshot(
                servers=tuple(servers),
                entries=entries,
                health=health,
                last_refresh_at=float(last) if last is not None else None,
            )

    def data_version(self) -> int:
        """A number that changes whenever the registry changed: SQLite's ``PRAGMA
        data_version`` (another connection committed) combined with :attr:`write_count`."""
        with self._wrap():
            return (int(self.db.execute("PRAGMA data_version").fetchone()[0]) << 32) + self.write_count

    def apply_outcomes(self, outcomes: Sequence["Outcome"]) -> None:
        """Fold a batch of outcomes into the health records, in one write transaction
        (read-modify-write, so updates of other processes are never lost), and remember
        the last error of each server that failed."""
        from ._health import outcome_changes

        if not outcomes:
            return
        with self._wrap(write=True):
            ids = {r["url"]: r["id"] for r in self.db.query("select id, url from servers")}
            for o in outcomes:
                sid = ids.get(o.server)
                if sid is None:  # removed meanwhile: nothing to record
                    continue
                for record, change in outcome_changes(o):
                    new = change(self._health_of(sid, record))
                    if new is not None:
                        self._put_health(sid, record, new)
                if o.error is not None and o.kind in ("failure", "backoff"):
                    self.db.table("servers").update(sid, {"last_error": o.error, "updated_at": o.at})

    def claim_trial(self, url: str, model: str, now: float) -> bool:
        """Claim the half-open trial of ``url`` for ``model`` across processes (one write
        transaction): ``False`` when another request or process holds it or a breaker is
        open. See :func:`aicortex._health.try_claim`."""
        from ._health import try_claim

        key = model_key(model) if model else ""
        with self._wrap(write=True):
            row = self._find(url)
            if row is None:
                return False
            ok, (srv, mod) = try_claim((self._health_of(row["id"], ""), self._health_of(row["id"], key)), now)
            for record, new in (("", srv), (key, mod)):
                if new is not None:
                    self._put_health(row["id"], record, new)
            return ok

    def close(self) -> None:
        """Close the database connection, unless it is a ``sqlite_utils.Database`` the
        caller passed in (that one stays open: it is the caller's to close)."""
        with self._lock:
            if self._owns_db:
                self.db.close()

    def __enter__(self) -> "Registry":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Registry {str(self.path) if self.path else ':memory:'}>"


class _Guard:
    """Hold the registry lock and translate sqlite3 errors (the one boundary)."""

    __slots__ = ("_reg",)

    def __init__(self, reg: Registry) -> None:
        self._reg = reg

    def __enter__(self) -> None:
        self._reg._lock.acquire()

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self._reg._lock.release()
        if isinstance(exc, sqlite3.Error):
            raise RegistryError(self._reg._describe(exc)) from exc


def _default_name(url: str) -> str:
    rest = url.split("://", 1)[-1]
    return rest.rstrip("/")


#: Tables copied by :func:`copy_registry`, each keyed by ``server_id`` (``servers`` first).
_COPIED = ("models", "health", "bench")


def copy_registry(src: Registry, dst: Registry) -> dict[str, int]:
    """Copy every server of ``src``, with its model list, health records (circuit
    breakers, EWMA metrics) and bench figures, and the last refresh time, into ``dst``:
    SQLite to PostgreSQL, PostgreSQL to SQLite, or alike. ``src`` is only read; ``dst``
    is written in one transaction (all or nothing).

    Returns ``{"servers": n, "models": n, "health": n, "bench": n}``: rows copied.

    Raises:
        RegistryError: a server of ``src`` (by URL or name) is already in ``dst`` (nothing
            is copied), or either store failed.
    """
    with src._wrap():
        servers = list(src.db.query("select * from servers order by id"))
        rows = {t: list(src.db.query(f"select * from {t} order by server_id")) for t in _COPIED}
        last_refresh = src._meta("last_refresh_at")
    counts = {"servers": len(servers), **{t: len(r) for t, r in rows.items()}}
    with dst._wrap(write=True):
        clash = [
            r["name"]
            for s in servers
            for r in dst.db.query("select name from servers where url = ? or name = ?", [s["url"], s["name"]])
        ]
        if clash:
            raise RegistryError(
                f"{len(clash)} server(s) of the source are already in the destination ({', '.join(clash[:5])}): "
                "nothing was copied; remove them there first (`aicortex servers remove`) or copy into a new registry"
            )
        ids: dict[int, int] = {}
        for s in servers:
            old = s.pop("id")
            dst.db.table("servers").insert(s)
            ids[old] = next(iter(dst.db.query("select id from servers where url = ?", [s["url"]])))["id"]
        for table, table_rows in rows.items():
            dst.db.table(table).insert_all({**r, "server_id": ids[r["server_id"]]} for r in table_rows)
        if last_refresh is not None and float(dst._meta("last_refresh_at") or 0) < float(last_refresh):
            dst._set_meta("last_refresh_at", last_refresh)
    return counts
