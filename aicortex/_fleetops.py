"""Fleet operations: list, ps, show, pull, delete, copy, warm and unload, on both clients.

Every decision is made once, here, in pure code: which servers an operation goes to
(:func:`listing`, :func:`loaded_on`), what each request is (:func:`delete_request`,
:func:`copy_request`, :func:`load_request`), what a reply means (:func:`op_result`,
:class:`PullReader` for ``/api/pull`` progress lines, :func:`in_order` for "the first
server that answers"). The sync driver (threads) and the async driver (asyncio tasks)
below only do I/O around them, as :mod:`aicortex._discovery` does for refresh.

No operation raises for one server's failure: each server's outcome is an
:class:`OpResult` (a :class:`PullResult` for pulls) with ``ok`` and ``error``. The
registry is refreshed afterwards for the servers where something changed.
"""

from __future__ import annotations

import json
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Generator, Iterator, Mapping, Sequence, TypeVar

from ._exceptions import AICortexError, AllServersFailed, BadRequest, ProtocolError, ServerError
from ._models import Attempt, FleetModel, LoadedModel, Server
from ._protocol import _count, error_text, model_key, parse_ps_entries

if TYPE_CHECKING:  # pragma: no cover
    from ._client import AsyncClient, BaseClient, Client
    from ._store import Snapshot

__all__ = [
    "OpResult",
    "PullResult",
    "PullProgress",
    "PsReport",
    "ShowResult",
    "ADMIN_TIMEOUT_S",
    "PULL_TIMEOUT_S",
    "fleet_models",
    "listing",
    "loaded_on",
    "delete_request",
    "copy_request",
    "load_request",
    "pull_request",
    "op_result",
    "PullReader",
    "in_order",
]

T = TypeVar("T")

#: Read timeout (seconds) of a delete, copy, load or unload request.
ADMIN_TIMEOUT_S = 120.0
#: Default longest silence (seconds) between two ``/api/pull`` progress lines.
PULL_TIMEOUT_S = 600.0


# -- results ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OpResult:
    """What one server did with one fleet operation (delete, copy, warm, unload).

    Fields:
        server: the server's URL.
        ok: it succeeded.
        error: why it failed (the server's message, without its URL), or ``None``.
    """

    server: str
    ok: bool
    error: str | None = None


@dataclass(frozen=True)
class PullResult(OpResult):
    """What one server did with a pull: ``ok`` once it said ``{"status": "success"}``;
    ``error`` is its in-stream ``{"error": ...}``, an HTTP error, or a broken stream.

    Fields (besides :class:`OpResult`'s):
        status: the last status line it sent (``"success"`` when ``ok``), or ``None``.
    """

    status: str | None = None


@dataclass(frozen=True)
class PullProgress:
    """One ``/api/pull`` progress line of one server (Ollama ``docs/api.md``, "Pull a Model").

    Fields:
        server: the server's URL.
        status: ``"pulling manifest"``, ``"pulling <digest>"``, ``"verifying sha256
            digest"``, ``"writing manifest"``, ``"success"``...
        digest: the layer being downloaded, or ``None``.
        total: the layer's size in bytes, or ``None``.
        completed: bytes of it downloaded so far, or ``None``.
    """

    server: str
    status: str
    digest: str | None = None
    total: int | None = None
    completed: int | None = None


@dataclass(frozen=True)
class PsReport:
    """The fleet's loaded models, live (``GET /api/ps`` on every server asked).

    Iterating it (or ``len``) goes over :attr:`models`.

    Fields:
        models: one :class:`~aicortex.LoadedModel` per (server, model), servers in the
            order asked, each server's models as it listed them.
        errors: ``{url: reason}`` for the servers that did not answer (down, an HTTP
            error, a malformed reply); they are reported here, never raised.
        servers: every URL asked, in order.
    """

    models: tuple[LoadedModel, ...] = ()
    errors: Mapping[str, str] = field(default_factory=dict)
    servers: tuple[str, ...] = ()

    def __iter__(self) -> Iterator[LoadedModel]:
        return iter(self.models)

    def __len__(self) -> int:
        return len(self.models)

    def where(self, model: str) -> list[LoadedModel]:
        """The entries of ``model`` (``x`` and ``x:latest`` match), one per server that has it loaded."""
        key = model_key(model)
        return [m for m in self.models if model_key(m.name) == key]


class ShowResult(dict[str, Any]):
    """A ``POST /api/show`` reply (Ollama ``docs/api.md``, "Show Model Information"): the
    JSON object itself (``result["template"]``, ``result["details"]``...), plus:

    Attributes:
        server: URL of the server that answered.
        attempts: the servers tried before it, each with the error that made aicortex
            go on to the next (an :class:`~aicortex.Attempt`), in order.
    """

    def __init__(self, data: Mapping[str, Any], *, server: str, attempts: Sequence[Attempt] = ()) -> None:
        super().__init__(data)
        self.server = server
        self.attempts = tuple(attempts)

    def __repr__(self) -> str:
        return f"ShowResult(server={self.server!r}, keys={sorted(self)!r})"


# -- pure decisions -----------------------------------------------------------------------------
def fleet_models(snapshot: "Snapshot") -> list[FleetModel]:
    """One :class:`~aicortex.FleetModel` per model the enabled servers list, by name."""
    out = []
    for entries in snapshot.entries.values():
        if not entries:
            continue
        first = entries[0][1]
        digests: list[str] = []
        for _, e in entries:
            if e.digest and e.digest not in digests:
                digests.append(e.digest)
        out.append(
            FleetModel(
                name=first.name,
                servers=tuple(s.url for s, _ in entries),
                size=max(e.size for _, e in entries),
                digests=tuple(digests),
                details=dict(first.details),
                loaded_on=tuple(s.url for s, e in entries if e.loaded),
            )
        )
    return sorted(out, key=lambda m: m.name)


def listing(snapshot: "Snapshot", model: str) -> list[Server]:
    """The enabled servers that list ``model`` (``x`` and ``x:latest`` match), by priority."""
    return [s for s, _ in snapshot.entries.get(model_key(model), [])]


def loaded_on(report: PsReport, model: str) -> list[tuple[str, str]]:
    """``(url, name as that server lists it)`` where ``report`` shows ``model`` loaded."""
    return [(m.server, m.name) for m in report.where(model)]


def delete_request(model: str) -> tuple[str, str, dict[str, Any]]:
    """``DELETE /api/delete`` (Ollama ``docs/api.md``, "Delete a Model")."""
    return "DELETE", "/api/delete", {"model": model}


def copy_request(source: str, destination: str) -> tuple[str, str, dict[str, Any]]:
    """``POST /api/copy`` (Ollama ``docs/api.md``, "Copy a Model")."""
    return "POST", "/api/copy", {"source": source, "destination": destination}


def load_request(model: str, keep_alive: str | float | None) -> tuple[str, str, dict[str, Any]]:
    """``POST /api/generate`` with an empty prompt: Ollama loads the model and answers
    ``done_reason: "load"``; with ``keep_alive: 0`` it unloads it (``"unload"``)
    (``docs/api.md``, "Load a model" / "Unload a model"; ollama-protocol §1.2, §2.6)."""
    body: dict[str, Any] = {"model": model, "prompt": "", "stream": False}
    if keep_alive is not None:
        body["keep_alive"] = keep_alive
    return "POST", "/api/generate", body


def pull_request(model: str, insecure: bool = False) -> tuple[str, str, dict[str, Any]]:
    """``POST /api/pull``, streamed (Ollama ``docs/api.md``, "Pull a Model")."""
    body: dict[str, Any] = {"model": model, "stream": True}
    if insecure:
        body["insecure"] = True
    return "POST", "/api/pull", body


def op_result(server: str, reply: bytes | ServerError) -> OpResult:
    """The outcome of one delete/copy/load/unload reply: an error, or a 2xx whose body is
    empty (delete, copy) or a JSON object without ``error`` (load, unload)."""
    if isinstance(reply, ServerError):
        return OpResult(server, False, reply.reason)
    if reply.strip():
        try:
            obj = json.loads(reply)
        except (ValueError, RecursionError):
            obj = None
        if isinstance(obj, dict) and obj.get("error") is not None:  # {"error": ...} on a 2xx
            return OpResult(server, False, error_text(reply) if isinstance(obj["error"], str) else str(obj["error"])[:500])
    return OpResult(server, True)


class PullReader:
    """Reads one server's ``/api/pull`` lines: :meth:`line` turns each into a
    :class:`PullProgress` (or ``None`` for an ``{"error": ...}`` line or a line without a
    string ``status``); :attr:`done` says to stop reading (success or error);
    :meth:`result` is the server's :class:`PullResult`. Hostile numbers become ``None``."""

    def __init__(self, server: str) -> None:
        self.server = server
        self.status: str | None = None
        self.error: str | None = None
        self.success = False

    @property
    def done(self) -> bool:
        return self.success or self.error is not None

    def line(self, obj: Mapping[str, Any]) -> PullProgress | None:
        err = obj.get("error")
        if err is not None:
            self.error = err if isinstance(err, str) else str(err)[:500]
            return None
        status = obj.get("status")
        if not isinstance(status, str):
            return None
        self.status = status
        if status == "success":
            self.success = True
        digest = obj.get("digest")
        return PullProgress(
            server=self.server,
            status=status,
            digest=digest if isinstance(digest, str) and digest else None,
            total=_count(obj.get("total")),
            completed=_count(obj.get("completed")),
        )

    def result(self, failure: ServerError | None = None) -> PullResult:
        """The outcome: ``failure`` (the request or the stream broke) first, then an
        in-stream error, then success; a stream that ended without either failed."""
        if failure is not None and not self.success:
            return PullResult(self.server, False, failure.reason, self.status)
        if self.error is not None:
            return PullResult(self.server, False, self.error, self.status)
        if not self.success:
            return PullResult(self.server, False, "the pull stream ended without a success line", self.status)
        return PullResult(self.server, True, None, self.status)


def in_order(
    urls: Sequence[str], accept: Callable[[str, bytes], T]
) -> Generator[str, "bytes | ServerError", "tuple[str, T, list[Attempt]] | tuple[None, None, list[Attempt]]"]:
    """Try servers one at a time until one answers: yields each URL and receives its
    reply's bytes or its ``ServerError``; ``accept(url, data)`` turns the bytes into the
    value (raising a ``ServerError`` for a reply that will not do). Returns ``(url,
    value, failures)`` or ``(None, None, failures)`` when every server failed.

    Raises:
        BadRequest: HTTP 400: the request is wrong, another server would refuse it too.
    """
    failures: list[Attempt] = []
    for i, url in enumerate(urls, 1):
        reply = yield url
        if isinstance(reply, BadRequest):
            raise reply
        if not isinstance(reply, ServerError):
            try:
                return url, accept(url, reply), failures
            except ServerError as exc:
                reply = exc
        failures.append(Attempt(server=url, number=i, error=reply))
    return None, None, failures


def _show_object(url: str, data: bytes) -> dict[str, Any]:
    from ._transport import show_object

    obj = show_object(data)
    if obj is None:
        raise ProtocolError("/api/show reply is not a JSON object", server=url)
    return obj


def _load_reply(url: str, data: bytes) -> OpResult:
    result = op_result(url, data)
    if not result.ok:
        raise ServerError(result.error or "load failed", server=url)
    return result


def _show_failed(model: str, failures: Sequence[Attempt]) -> AICortexError:
    reasons = "; ".join(f"{a.server}: {a.error.reason if isinstance(a.error, ServerError) else a.error}" for a in failures)
    return AllServersFailed(f"every server that lists {model!r} failed /api/show: {reasons}", model=model, attempts=failures)


def _ordered_results(urls: Sequence[str], results: Mapping[str, T]) -> list[T]:
    return [results[u] for u in urls]


# -- shared preparation (memory and registry reads; the async client runs them in a thread) ----
def _targets(client: "BaseClient", servers: Sequence[str] | None, default: Sequence[Server]) -> list[Server]:
    """The servers an operation goes to: the named ones (``RegistryError`` for an
    unknown one), else ``default``; their own headers are set on the transport."""
    from ._client import _server_headers

    chosen = list(default) if servers is None else [client.registry.get(s) for s in servers]
    unique = list({s.url: s for s in chosen}.values())  # a server named twice gets one request
    client._transport.set_server_headers(_server_headers(unique))
    return unique


def _enabled(client: "BaseClient") -> list[Server]:
    return [s for s in client._fleet.snapshot.servers if s.enabled]


def _listing_or_raise(client: "BaseClient", model: str) -> list[Server]:
    found = listing(client._fleet.snapshot, model)
    if not found:
        raise client._model_not_found(model)
    return found


def _route_urls(client: "BaseClient", model: str) -> list[str]:
    route = client._route_now(model)
    return [c.server.url for c in route.candidates + route.skipped]


# -- sync driver (threads) ----------------------------------------------------------------------
def _fan_out(urls: Sequence[str], work: Callable[[str], T], max_workers: int = 16) -> list[T]:
    """``work(url)`` for every URL concurrently in a bounded thread pool; results in URL order."""
    if not urls:
        return []
    if len(urls) == 1:
        return [work(urls[0])]
    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(urls))), thread_name_prefix="aicortex-op") as pool:
        return list(pool.map(work, urls))


def _drive(flow: Generator[str, "bytes | ServerError", Any], call: Callable[[str], bytes]) -> Any:
    reply: bytes | ServerError | None = None
    try:
        while True:
            url = flow.send(reply)  # type: ignore[arg-type]
            try:
                reply = call(url)
            except ServerError as exc:
                reply = exc
    except StopIteration as stop:
        return stop.value


def _request(client: "Client", url: str, spec: tuple[str, str, dict[str, Any]], read_s: float | None) -> bytes:
    method, path, body = spec
    data: bytes = client._transport.request_json(url, method, path, body, connect_timeout_s=client.timeouts.connect, read_timeout_s=read_s)
    return data


def _one_op(client: "Client", url: str, spec: tuple[str, str, dict[str, Any]]) -> OpResult:
    try:
        return op_result(url, _request(client, url, spec, ADMIN_TIMEOUT_S))
    except ServerError as exc:
        return op_result(url, exc)


def _refresh_ok(client: "Client", results: Sequence[OpResult]) -> None:
    urls = [r.server for r in results if r.ok]
    if urls:
        try:
            client.refresh(urls)
        except AICortexError as exc:  # a registry that cannot be written: the operation stands
            client._fleet._storage_failed("refresh", exc)


def ps_sync(client: "Client", servers: Sequence[str] | None) -> PsReport:
    urls = [s.url for s in _targets(client, servers, _enabled(client))]

    def one(url: str) -> list[LoadedModel] | ServerError:
        try:
            data = client._transport.request_json(url, "GET", "/api/ps", connect_timeout_s=client.timeouts.connect, read_timeout_s=client.probe_timeout_s)
            return parse_ps_entries(data, url)
        except ServerError as exc:
            return exc

    return _ps_report(urls, _fan_out(urls, one))


def _ps_report(urls: Sequence[str], replies: Sequence["list[LoadedModel] | ServerError"]) -> PsReport:
    models: list[LoadedModel] = []
    errors: dict[str, str] = {}
    for url, reply in zip(urls, replies):
        if isinstance(reply, ServerError):
            errors[url] = reply.reason
        else:
            models.extend(reply)
    return PsReport(models=tuple(models), errors=errors, servers=tuple(urls))


def show_sync(client: "Client", model: str) -> ShowResult:
    client._maybe_refresh()
    urls = _route_urls(client, model)
    _targets(client, None, [s for s in client._fleet.snapshot.servers if s.url in urls])
    flow = in_order(urls, _show_object)
    url, obj, failures = _drive(flow, lambda u: _request(client, u, ("POST", "/api/show", {"model": model}), client.probe_timeout_s))
    if url is None:
        raise _show_failed(model, failures)
    return ShowResult(obj, server=url, attempts=failures)


def pull_sync(
    client: "Client",
    model: str,
    servers: Sequence[str] | None,
    on_progress: Callable[[PullProgress], None] | None,
    insecure: bool,
    timeout_s: float | None,
) -> list[PullResult]:
    urls = [s.url for s in _targets(client, servers, _enabled(client))]
    method, path, body = pull_request(model, insecure)
    events: "queue.Queue[PullProgress | PullResult]" = queue.Queue()
    stop = threading.Event()

    def one(url: str) -> None:
        reader = PullReader(url)
        failure: ServerError | None = None
        lines = client._transport.stream_lines(url, method, path, body, connect_timeout_s=client.timeouts.connect, read_timeout_s=timeout_s)
        try:
            for obj in lines:
                progress = reader.line(obj)
                if progress is not None:
                    events.put(progress)
                if reader.done or stop.is_set():
                    break
        except ServerError as exc:
            failure = exc
        except AICortexError as exc:  # the client was closed meanwhile
            failure = ServerError(str(exc), server=url)
        finally:
            lines.close()
            events.put(reader.result(failure))

    results: dict[str, PullResult] = {}
    if urls:
        pool = ThreadPoolExecutor(max_workers=min(16, len(urls)), thread_name_prefix="aicortex-pull")
        try:
            for url in urls:
                pool.submit(one, url)
            while len(results) < len(urls):  # progress is reported from the calling thread
                item = events.get()
                if isinstance(item, PullResult):
                    results[item.server] = item
                elif on_progress is not None:
                    on_progress(item)
        finally:
            stop.set()
            pool.shutdown(wait=True)
    out = _ordered_results(urls, results)
    _refresh_ok(client, out)
    return out


def ops_sync(client: "Client", urls: Sequence[str], spec_for: Callable[[str], tuple[str, str, dict[str, Any]]]) -> list[OpResult]:
    results = _fan_out(urls, lambda u: _one_op(client, u, spec_for(u)))
    _refresh_ok(client, results)
    return results


def delete_sync(client: "Client", model: str, servers: Sequence[str] | None) -> list[OpResult]:
    if servers is None:
        client._maybe_refresh()
    urls = [s.url for s in _targets(client, servers, _listing_or_raise(client, model) if servers is None else ())]
    return ops_sync(client, urls, lambda _u: delete_request(model))


def copy_sync(client: "Client", source: str, destination: str, servers: Sequence[str] | None) -> list[OpResult]:
    if servers is None:
        client._maybe_refresh()
    urls = [s.url for s in _targets(client, servers, _listing_or_raise(client, source) if servers is None else ())]
    return ops_sync(client, urls, lambda _u: copy_request(source, destination))


def warm_sync(client: "Client", model: str, servers: Sequence[str] | None, keep_alive: str | float | None) -> list[OpResult]:
    spec = load_request(model, keep_alive)
    if servers is not None:
        urls = [s.url for s in _targets(client, servers, ())]
        return ops_sync(client, urls, lambda _u: spec)
    client._maybe_refresh()
    urls = _route_urls(client, model)
    _targets(client, None, [s for s in client._fleet.snapshot.servers if s.url in urls])
    read_s = client.timeouts.first_token_cold
    url, ok, failures = _drive(in_order(urls, _load_reply), lambda u: _request(client, u, spec, read_s))
    results = _failures(failures) + ([ok] if url is not None else [])
    _refresh_ok(client, results)
    return results


def unload_sync(client: "Client", model: str, servers: Sequence[str] | None) -> list[OpResult]:
    if servers is not None:
        urls = [s.url for s in _targets(client, servers, ())]
        return ops_sync(client, urls, lambda _u: load_request(model, 0))
    where = dict(loaded_on(ps_sync(client, None), model))
    return ops_sync(client, list(where), lambda u: load_request(where[u], 0))


def _failures(failures: Sequence[Attempt]) -> list[OpResult]:
    return [OpResult(a.server, False, a.error.reason if isinstance(a.error, ServerError) else str(a.error)) for a in failures]


# -- async driver (asyncio tasks) ---------------------------------------------------------------
async def _afan_out(urls: Sequence[str], work: Callable[[str], Awaitable[T]], max_workers: int = 16) -> list[T]:
    import asyncio

    gate = asyncio.Semaphore(max(1, max_workers))

    async def one(url: str) -> T:
        async with gate:
            return await work(url)

    tasks = [asyncio.ensure_future(one(u)) for u in urls]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for t in tasks:
            t.cancel()


async def _adrive(flow: Generator[str, "bytes | ServerError", Any], call: Callable[[str], Awaitable[bytes]]) -> Any:
    reply: bytes | ServerError | None = None
    try:
        while True:
            url = flow.send(reply)  # type: ignore[arg-type]
            try:
                reply = await call(url)
            except ServerError as exc:
                reply = exc
    except StopIteration as stop:
        return stop.value


async def _arequest(client: "AsyncClient", url: str, spec: tuple[str, str, dict[str, Any]], read_s: float | None) -> bytes:
    method, path, body = spec
    data: bytes = await client._transport.request_json(url, method, path, body, connect_timeout_s=client.timeouts.connect, read_timeout_s=read_s)
    return data


async def _aone_op(client: "AsyncClient", url: str, spec: tuple[str, str, dict[str, Any]]) -> OpResult:
    try:
        return op_result(url, await _arequest(client, url, spec, ADMIN_TIMEOUT_S))
    except ServerError as exc:
        return op_result(url, exc)


async def _arefresh_ok(client: "AsyncClient", results: Sequence[OpResult]) -> None:
    urls = [r.server for r in results if r.ok]
    if urls:
        try:
            await client.refresh(urls)
        except AICortexError as exc:
            client._fleet._storage_failed("refresh", exc)


async def _atargets(client: "BaseClient", servers: Sequence[str] | None, default: Sequence[Server]) -> list[Server]:
    import asyncio

    if servers is None:
        return _targets(client, None, default)
    return await asyncio.to_thread(_targets, client, servers, default)  # registry reads


async def ps_async(client: "AsyncClient", servers: Sequence[str] | None) -> PsReport:
    urls = [s.url for s in await _atargets(client, servers, _enabled(client))]

    async def one(url: str) -> list[LoadedModel] | ServerError:
        try:
            data = await client._transport.request_json(url, "GET", "/api/ps", connect_timeout_s=client.timeouts.connect, read_timeout_s=client.probe_timeout_s)
            return parse_ps_entries(data, url)
        except ServerError as exc:
            return exc

    return _ps_report(urls, await _afan_out(urls, one))


async def show_async(client: "AsyncClient", model: str) -> ShowResult:
    await client._maybe_refresh()
    urls = _route_urls(client, model)
    _targets(client, None, [s for s in client._fleet.snapshot.servers if s.url in urls])
    url, obj, failures = await _adrive(
        in_order(urls, _show_object), lambda u: _arequest(client, u, ("POST", "/api/show", {"model": model}), client.probe_timeout_s)
    )
    if url is None:
        raise _show_failed(model, failures)
    return ShowResult(obj, server=url, attempts=failures)


async def pull_async(
    client: "AsyncClient",
    model: str,
    servers: Sequence[str] | None,
    on_progress: Callable[[PullProgress], None] | None,
    insecure: bool,
    timeout_s: float | None,
) -> list[PullResult]:
    urls = [s.url for s in await _atargets(client, servers, _enabled(client))]
    method, path, body = pull_request(model, insecure)

    async def one(url: str) -> PullResult:
        reader = PullReader(url)
        failure: ServerError | None = None
        lines = client._transport.stream_lines(url, method, path, body, connect_timeout_s=client.timeouts.connect, read_timeout_s=timeout_s)
        try:
            async for obj in lines:
                progress = reader.line(obj)
                if progress is not None and on_progress is not None:
                    on_progress(progress)
                if reader.done:
                    break
        except ServerError as exc:
            failure = exc
        finally:
            await lines.aclose()
        return reader.result(failure)

    results = await _afan_out(urls, one)
    await _arefresh_ok(client, results)
    return results


async def aops(client: "AsyncClient", urls: Sequence[str], spec_for: Callable[[str], tuple[str, str, dict[str, Any]]]) -> list[OpResult]:
    results = await _afan_out(urls, lambda u: _aone_op(client, u, spec_for(u)))
    await _arefresh_ok(client, results)
    return results


async def delete_async(client: "AsyncClient", model: str, servers: Sequence[str] | None) -> list[OpResult]:
    if servers is None:
        await client._maybe_refresh()
    urls = [s.url for s in await _atargets(client, servers, _listing_or_raise(client, model) if servers is None else ())]
    return await aops(client, urls, lambda _u: delete_request(model))


async def copy_async(client: "AsyncClient", source: str, destination: str, servers: Sequence[str] | None) -> list[OpResult]:
    if servers is None:
        await client._maybe_refresh()
    urls = [s.url for s in await _atargets(client, servers, _listing_or_raise(client, source) if servers is None else ())]
    return await aops(client, urls, lambda _u: copy_request(source, destination))


async def warm_async(client: "AsyncClient", model: str, servers: Sequence[str] | None, keep_alive: str | float | None) -> list[OpResult]:
    spec = load_request(model, keep_alive)
    if servers is not None:
        urls = [s.url for s in await _atargets(client, servers, ())]
        return await aops(client, urls, lambda _u: spec)
    await client._maybe_refresh()
    urls = _route_urls(client, model)
    _targets(client, None, [s for s in client._fleet.snapshot.servers if s.url in urls])
    read_s = client.timeouts.first_token_cold
    url, ok, failures = await _adrive(in_order(urls, _load_reply), lambda u: _arequest(client, u, spec, read_s))
    results = _failures(failures) + ([ok] if url is not None else [])
    await _arefresh_ok(client, results)
    return results


async def unload_async(client: "AsyncClient", model: str, servers: Sequence[str] | None) -> list[OpResult]:
    if servers is not None:
        urls = [s.url for s in await _atargets(client, servers, ())]
        return await aops(client, urls, lambda _u: load_request(model, 0))
    where = dict(loaded_on(await ps_async(client, None), model))
    return await aops(client, list(where), lambda u: load_request(where[u], 0))
