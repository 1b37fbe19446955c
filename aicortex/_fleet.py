"""The in-memory fleet view: health off the request path.

Each :class:`~aicortex.Client` / :class:`~aicortex.AsyncClient` keeps a :class:`FleetView`:
servers, model entries, circuit breakers, EWMA metrics and in-flight counts, in memory.
Routing and admission read it without touching storage. Outcomes are applied to it at
once and written to the store (:mod:`aicortex._store`) in batches by one background
thread (and on close); the view reloads what other processes wrote about once a second
(when the store's data version changed), replaying what it has not written yet, so no
outcome is lost either way. This is the two-tier cache of LiteLLM's ``DualCache``
(in-memory + shared store, re-synced every second), with SQLite as the shared tier.

With a PostgreSQL store (``_store_postgres.py``) the view also shares what several
machines need to agree on: it wakes at once when the store notifies a change (``LISTEN
aicortex``), a circuit breaker that opens or closes here is written at once rather than
with the next batch (so other processes learn it within about a second), and this
process's in-flight counts are written as leases that expire (``LEASE_S``) while the
other processes' counts are read back and added to routing's least-outstanding order.

A storage failure (read-only file, a lock held past the busy timeout, disk full, a closed
registry) never breaks, delays or stops a reply: it is logged through
``logging.getLogger("aicortex")`` (a warning the first time for each kind, then debug)
and counted in :attr:`FleetView.storage_errors`; the view goes on from memory. One
outage is one warning: while the store keeps failing, further failures are logged at
debug level, and when a whole sync succeeds again (pending outcomes written, the store
read) an info line says so and the next failure warns again.

The half-open trial stays one per fleet across processes: it is claimed in memory
first, then in the store from a worker thread, waiting at most ``CLAIM_WAIT_S``; when the
store does not answer in time (or fails), the per-process claim stands.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import socket
import threading
import uuid
import time
import weakref
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

from ._exceptions import AICortexError
from ._health import Health, Outcome, outcome_changes, try_claim
from ._hedge import TTFT_WINDOWS
from ._protocol import model_key
from ._routing import RouteCache
from ._store import Snapshot

if TYPE_CHECKING:  # pragma: no cover
    import random

    from ._routing import Route
    from ._session import Candidate
    from ._store import Store

__all__ = ["FleetView", "RELOAD_S", "CLAIM_WAIT_S", "MAX_PENDING", "logger"]

logger = logging.getLogger("aicortex")

#: How often (seconds) the view writes pending outcomes and looks for other processes' writes.
RELOAD_S = 1.0
#: Longest wait (seconds) for the store to confirm a half-open trial claim.
CLAIM_WAIT_S = 0.25
#: Outcomes kept for the store while it cannot be written; older ones are dropped (counted).
MAX_PENDING = 10_000


class FleetView:
    """Servers, models, health and in-flight counts of one store, in memory.

    Args:
        store: a :class:`~aicortex._store.Store` (a :class:`~aicortex.Registry`).
        reload_s: seconds between background syncs with the store.

    Attributes:
        storage_errors: how many store operations failed (each was logged).
        dropped_outcomes: outcomes dropped because the store was unwritable too long.
    """

    def __init__(self, store: "Store", *, reload_s: float = RELOAD_S) -> None:
        self._store = store
        self._reload_s = reload_s
        self._lock = threading.Lock()
        self._snap = Snapshot()
        self._health: dict[tuple[str, str], Health] = {}
        self._claims: dict[tuple[str, str], Health] = {}  # local trial claims, re-applied on reload
        self._inflight: dict[str, int] = {}
        self._remote: dict[str, int] = {}  # other processes' in-flight counts (store leases)
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._leased = False
        self._pending: list[Outcome] = []
        self._flushing = threading.Lock()  # one flush at a time; flush() waits for the background one
        self._prefill: dict[tuple[str, str], bool] = {}
        self._routes = RouteCache()  # each model's candidate order, fixed up as health changes
        self._version: int | None = None
        self._writes = -1  # the store's write_count at the last reload
        self._wake = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._failing: set[str] = set()  # what has failed since the store last worked
        self.storage_errors = 0
        self.dropped_outcomes = 0
        self.reload()
        self._subscribed: Callable[[], None] | None = None
        subscribe = getattr(store, "subscribe", None)
        if subscribe is not None:  # the store tells when another process changed it
            self._subscribed = self._wake.set
            try:
                subscribe(self._subscribed)
            except Exception as exc:  # pragma: no cover - the once-a-second poll stays
                self._storage_failed("subscribe", exc)
        self._ensure_thread()

    # -- reading ---------------------------------------------------------------------------
    @property
    def snapshot(self) -> Snapshot:
        """The last snapshot read from the store."""
        return self._snap

    def reload(self) -> bool:
        """Read the store now (the pending outcomes and local claims are replayed on top).
        ``False`` when the store failed (logged and counted; the view is kept)."""
        try:
            writes = self._store.write_count
            version = self._store.data_version()
            snap = self._store.snapshot()
        except AICortexError as exc:
            self._storage_failed("read", exc)
            return False
        with self._lock:
            health = dict(snap.health)
            for o in self._pending:
                _apply(health, o)
            now = time.time()
            for key, claim in list(self._claims.items()):
                if claim.open_until is None or claim.open_until <= now:
                    del self._claims[key]
                elif ((health.get(key) or Health()).open_until or 0.0) < claim.open_until:
                    health[key] = claim
            self._snap, self._health, self._version, self._writes = snap, health, version, writes
            self._routes.reset()
        return True

    def route(self, model: str, *, now: float, rng: "random.Random | None" = None) -> "Route":
        """Candidates for ``model`` in try order (see :func:`aicortex._routing.order_candidates`;
        kept per model by a :class:`~aicortex._routing.RouteCache`, so the cost hardly
        grows with the number of servers)."""
        self._ensure_thread()
        if self._store.write_count != self._writes:
            self.sync()  # this process changed the registry (added a server, refreshed...)
        key = model_key(model)
        entries = self._snap.entries.get(key, ())
        inflight: Mapping[str, int] = self._inflight if not self._remote else _Sum(self._inflight, self._remote)
        return self._routes.route(key, entries, self._health, now=now, rng=rng, inflight=inflight)

    def health(self, url: str, model: str = "") -> Health:
        """The in-memory health of a server (``model=""``) or (server, model)."""
        return self._health.get((url, model_key(model) if model else "")) or Health()

    # -- in flight -------------------------------------------------------------------------
    def begin(self, url: str) -> None:
        """A request to ``url`` is in flight."""
        with self._lock:
            self._inflight[url] = self._inflight.get(url, 0) + 1
        self._routes.touch(url)

    def end(self, url: str) -> None:
        """A request to ``url`` ended."""
        with self._lock:
            n = self._inflight.get(url, 0) - 1
            if n > 0:
                self._inflight[url] = n
            else:
                self._inflight.pop(url, None)
        self._routes.touch(url)

    def inflight(self, url: str) -> int:
        """Requests of this process in flight to ``url``."""
        return self._inflight.get(url, 0)

    def inflight_elsewhere(self, url: str) -> int:
        """Requests of *other* processes in flight to ``url``, as their leases in the store
        said at the last sync (0 for a store without leases, such as SQLite)."""
        return self._remote.get(url, 0)

    # -- outcomes --------------------------------------------------------------------------
    def record(self, outcome: Outcome) -> None:
        """Apply an outcome now; the store gets it with the next batch. Never raises."""
        if outcome.kind == "none" and not outcome.trial:
            return
        try:
            if outcome.ttft_s is not None and outcome.kind == "success":
                TTFT_WINDOWS.add(outcome.server, outcome.model, outcome.ttft_s)  # hedging's p95 (_hedge)
            with self._lock:
                changes = _apply(self._health, outcome)
                for record, _, _ in changes:
                    self._routes.touch(outcome.server, record)
                for record, _ in outcome_changes(outcome):
                    self._claims.pop((outcome.server, record), None)
                self._pending.append(outcome)
                if len(self._pending) > MAX_PENDING:
                    del self._pending[0]
                    self.dropped_outcomes += 1
            self._ensure_thread()
            if any(new.failures != old.failures or new.open_until != old.open_until for _, old, new in changes):
                self._wake.set()  # a breaker opened, closed or was claimed: tell the fleet now
            _log_outcome(outcome, changes)
        except Exception as exc:  # bookkeeping never hurts a reply
            self._storage_failed("record", exc)

    def flush(self) -> bool:
        """Write the pending outcomes to the store in one transaction (kept on failure).
        ``False`` when the store failed (logged and counted). When it returns, every
        outcome recorded before the call is written (or kept after a failure): a flush
        under way in the background thread is waited for."""
        with self._flushing:
            return self._flush()

    def _flush(self) -> bool:
        with self._lock:
            batch, self._pending = self._pending, []
        if not batch:
            return True
        try:
            self._store.apply_outcomes(batch)
        except Exception as exc:
            self._storage_failed("write", exc)
            with self._lock:  # keep them for the next try, oldest first
                self._pending[:0] = batch
                excess = len(self._pending) - MAX_PENDING
                if excess > 0:
                    del self._pending[:excess]
                    self.dropped_outcomes += excess
            return False
        return True

    def sync(self) -> None:
        """One background step: write pending outcomes, reload if the store changed."""
        wrote = bool(self._pending)
        ok = self.flush()
        try:
            changed = wrote or self._store.data_version() != self._version
        except Exception as exc:
            self._storage_failed("read", exc)
            return
        if changed:
            ok = self.reload() and ok
        ok = self._sync_leases() and ok
        if ok and self._failing:
            self._failing.clear()
            logger.info("aicortex: the registry answers again; what this process recorded meanwhile is written")

    def _sync_leases(self, counts: "dict[str, int] | None" = None) -> bool:
        """Write this process's in-flight counts as leases and read the other processes'
        (stores that have ``sync_inflight``: PostgreSQL)."""
        sync_inflight = getattr(self._store, "sync_inflight", None)
        if sync_inflight is None:
            return True
        try:
            remote = sync_inflight(self._owner, dict(self._inflight) if counts is None else counts)
            old, self._remote = self._remote, remote
            for url in set(old) | set(remote):
                if old.get(url) != remote.get(url):
                    self._routes.touch(url)
            self._leased = True
        except Exception as exc:
            self._leased = False
            self._storage_failed("lease", exc)
            return False
        return True

    # -- half-open trials --------------------------------------------------------------------
    def admit_local(self, url: str, model: str) -> bool:
        """Claim the half-open trial of (url, model) in memory; ``False`` if it is held or a
        breaker is open (then the server is skipped)."""
        key = model_key(model)
        now = time.time()
        with self._lock:
            pair = (self._health.get((url, "")) or Health(), self._health.get((url, key)) or Health())
            ok, new = try_claim(pair, now)
            for record, h in zip(("", key), new):
                if h is not None:
                    self._health[(url, record)] = self._claims[(url, record)] = h
                    self._routes.touch(url, record)
        return ok

    def claim_in_store(self, url: str, model: str) -> "concurrent.futures.Future[bool]":
        """Claim the trial in the store from the worker thread (see ``CLAIM_WAIT_S``)."""
        with self._lock:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="aicortex-claim")
        return self._executor.submit(self._store.claim_trial, url, model, time.time())

    def claim_result(self, future: "concurrent.futures.Future[bool] | None", error: BaseException | None) -> bool:
        """The verdict of a store claim: its answer, or ``True`` (the per-process claim
        stands) when the store failed or did not answer within ``CLAIM_WAIT_S``."""
        if error is not None or future is None:
            self._storage_failed("claim", error or RuntimeError("no answer"))
            return True
        return bool(future.result())

    def admit(self, url: str, model: str) -> bool:
        """Admission of a half-open candidate (sync drivers): in memory, then the store."""
        if not self.admit_local(url, model):
            return False
        try:
            future = self.claim_in_store(url, model)
        except RuntimeError as exc:  # the claim pool was shut down (the client was closed)
            return self.claim_result(None, exc)
        try:
            future.result(timeout=CLAIM_WAIT_S)
        except BaseException as exc:
            return self.claim_result(None, exc)
        return self.claim_result(future, None)

    async def admit_async(self, url: str, model: str) -> bool:
        """Admission of a half-open candidate (async drivers); the store is asked off the
        event loop."""
        import asyncio

        if not self.admit_local(url, model):
            return False
        try:
            future = self.claim_in_store(url, model)
        except RuntimeError as exc:  # the claim pool was shut down (the client was closed)
            return self.claim_result(None, exc)
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), CLAIM_WAIT_S)
        except asyncio.CancelledError:
            # Nobody will try the server: give the trial back once the store claim is done
            # (after it, so the store sees the release after the claim).
            future.add_done_callback(lambda f: self._release_claim(f, url, model))
            raise
        except BaseException as exc:
            return self.claim_result(None, exc)
        return self.claim_result(future, None)

    def _release_claim(self, future: "concurrent.futures.Future[bool]", url: str, model: str) -> None:
        """Give back a trial claimed for a request that was cancelled while admitting it
        (unless the store said another process holds it)."""
        if not future.cancelled() and future.exception() is None and not future.result():
            return
        self.record(Outcome(server=url, model=model_key(model), kind="release", at=time.time(), trial=True))

    # -- prefill knowledge -------------------------------------------------------------------
    def prefill(self, url: str, model: str) -> bool | None:
        """Whether (url, model) continues a trailing assistant message: ``True``, ``False``
        (it starts the reply over), or ``None`` (not known yet)."""
        return self._prefill.get((url, model_key(model)))

    def learn_prefill(self, url: str, model: str, continues: bool | None) -> None:
        """Remember what (url, model) does with a prefill (``None`` forgets)."""
        key = (url, model_key(model))
        if continues is None:
            self._prefill.pop(key, None)
        else:
            self._prefill[key] = continues

    # -- lifecycle ---------------------------------------------------------------------------
    def _ensure_thread(self) -> None:
        if self._thread is not None or self._closed:
            return
        with self._lock:
            if self._thread is None:
                ref = weakref.ref(self)
                self._thread = threading.Thread(target=_run, args=(ref, self._wake, self._reload_s), name="aicortex-fleet", daemon=True)
                self._thread.start()

    def close(self) -> None:
        """Stop the background thread and write what is pending (best effort)."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        if self._subscribed is not None:
            unsubscribe = getattr(self._store, "unsubscribe", None)
            if unsubscribe is not None:
                unsubscribe(self._subscribed)
        self.flush()
        if self._leased:
            self._sync_leases({})  # give this process's leases back

    def _storage_failed(self, what: str, exc: BaseException) -> None:
        self.storage_errors += 1
        if self._failing:  # the same outage: said already
            self._failing.add(what)
            logger.debug("aicortex: registry %s failed again: %s", what, exc)
            return
        self._failing.add(what)
        logger.warning("aicortex: registry %s failed (replies go on from memory): %s", what, exc)


def _apply(health: dict[tuple[str, str], Health], o: Outcome) -> list[tuple[str, Health, Health]]:
    """Apply ``o`` to ``health``; the ``(record, old, new)`` changes made."""
    done = []
    for record, change in outcome_changes(o):
        key = (o.server, record)
        old = health.get(key) or Health()
        new = change(old)
        if new is not None:
            health[key] = new
            done.append((record, old, new))
    return done


def _log_outcome(o: Outcome, changes: list[tuple[str, Health, Health]]) -> None:
    """Failovers, circuit breaker trips and recoveries, on the ``"aicortex"`` logger."""
    if o.kind in ("failure", "backoff"):
        logger.info("aicortex: %s failed (%s): %s", o.server, o.kind, o.error)
    for record, old, new in changes:
        what = f"{o.server}" + (f" model {record}" if record else "")
        if new.failures > old.failures:
            cooldown = (new.open_until or o.at) - o.at
            logger.info("aicortex: circuit breaker open for %s: cooldown %.0f s after %d failures", what, cooldown, new.failures)
        elif old.failures and not new.failures:
            logger.info("aicortex: circuit breaker closed for %s: it answered again", what)


def _run(ref: "weakref.ref[FleetView]", wake: threading.Event, every: float) -> None:
    """The background writer: sync every ``every`` seconds until the view closes or is dropped."""
    while True:
        wake.wait(every)
        wake.clear()  # set again by a notification or a breaker change while syncing
        view = ref()
        if view is None or view._closed:
            return
        try:
            view.sync()
        except Exception as exc:  # pragma: no cover - sync() already logs what it can
            view._storage_failed("sync", exc)
        del view


class _Sum(Mapping[str, int]):
    """This process's in-flight counts plus the other processes' (read-only view)."""

    __slots__ = ("_a", "_b")

    def __init__(self, a: Mapping[str, int], b: Mapping[str, int]) -> None:
        self._a, self._b = a, b

    def __getitem__(self, key: str) -> int:
        if key not in self._a and key not in self._b:
            raise KeyError(key)
        return self._a.get(key, 0) + self._b.get(key, 0)

    def get(self, key: str, default: Any = None) -> Any:
        n = self._a.get(key, 0) + self._b.get(key, 0)
        return n if n or key in self._a or key in self._b else default

    def __iter__(self) -> Iterator[str]:
        return iter(set(self._a) | set(self._b))

    def __len__(self) -> int:
        return len(set(self._a) | set(self._b))
