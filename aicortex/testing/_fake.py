"""FakeOllama: a real HTTP/1.1 server on 127.0.0.1 that answers like Ollama v0.12.6+.

Each ``POST /api/chat`` or ``POST /api/generate`` is answered by a
:class:`~aicortex.testing.Script`: the next one pushed with
:meth:`FakeOllama.push`, else ``FakeOllama.default_script``.  Scripts can
delay, stall, blackhole, fail with an HTTP status, send a mid-stream error
line, drop or reset the connection, end without ``done`` or send garbage.
Embedding requests take scripts too (their faults only).  ``/api/pull``,
``/api/delete`` and ``/api/copy`` change ``models``; empty load/unload
requests change ``loaded``.

Example::

    import httpx
    from aicortex.testing import FakeOllama, Script

    with FakeOllama(models=["llama3.2"]) as fake:
        fake.push(Script(tokens=("Hi", "!"), token_delay=0.01))
        with httpx.stream("POST", fake.url + "/api/chat", json={
            "model": "llama3.2", "messages": [{"role": "user", "content": "hi"}],
        }) as r:
            lines = list(r.iter_lines())
        assert fake.chat_requests[0].completed
"""

from __future__ import annotations

import collections
import json
import socket
import threading
import time
from typing import Any, Callable, Iterable

from ._script import RequestRecord, Script
from ._server import POLL, Connection, MutableRecord, Request, ready
from ._wire import listed_name, rfc3339, same_model

__all__ = ["FakeOllama"]


class FakeOllama:
    """A scriptable fake Ollama server on a real loopback port (HTTP/1.1, one thread per connection).

    Use it as a context manager (``with FakeOllama() as fake: ...``) or call
    :meth:`start` and :meth:`stop`.  ``models``, ``loaded``, ``version``,
    ``default_script`` and ``blackhole_all`` are plain attributes read on
    every request, so tests may change them while the server runs.

    Args:
        models: model names served; listed by /api/tags as e.g.
            ``"llama3.2:latest"`` (``":latest"`` is added to names without a
            tag or ``/``).  Requests match with ``":latest"`` optional on either
            side; an unknown model gets 404 ``{"error":"model '<name>' not found"}``.
        loaded: names listed by /api/ps; None (default) means all ``models``.
            Load/unload requests change it like Ollama's scheduler: an empty
            /api/chat, /api/generate or /api/embed request adds the model, the
            same with ``keep_alive`` 0 removes it (None then becomes an explicit
            list first); a pull or copy keeps the new name out of it (not
            loaded yet) and a delete removes the name.  Generating requests
            leave it alone.
        version: reported by /api/version.
        script: the default :class:`Script` (``default_script``), used when no
            pushed script is queued; None means ``Script()``.
        port: TCP port to bind on ``host``; 0 picks a free one.  A restart
            after :meth:`stop` or :meth:`kill` reuses the same port.
        blackhole_all: read every request on every path and never answer it
            (until the client leaves or the fake stops).
        host: address to bind, default ``"127.0.0.1"``.
        embed_dim: length of the vectors /api/embed and /api/embeddings return.
            Vectors are derived from the input text alone (sha256), so every
            FakeOllama with the same ``embed_dim`` returns the same vector for
            the same text; ``dimensions`` in a request cuts them (and
            re-normalizes, as Ollama does).
        embed_delay: seconds of work per embedded input.  Embeddings on one
            FakeOllama are computed one at a time (Ollama runs embedding models
            with parallel 1), so concurrent requests queue: one server embeds at
            most ``1 / embed_delay`` inputs per second, N servers N times that.
        pull_errors: model name -> error text: a pull of that name fails after
            ``{"status":"pulling manifest"}`` with an in-stream ``{"error":...}``
            line (``stream:false``: 500 ``{"error":...}``), e.g.
            ``{"nope": "pull model manifest: file does not exist"}``.  Any other
            name pulls successfully and is added to ``models``.
        pull_delay: seconds between two pull progress lines.

    Attributes:
        server_errors: tracebacks of unexpected exceptions in handler threads
            (a bug in the fake); the connection is closed when one happens.
    """

    def __init__(
        self,
        models: Iterable[str] | None = None,
        loaded: Iterable[str] | None = None,
        version: str = "0.12.6",
        script: Script | None = None,
        port: int = 0,
        *,
        blackhole_all: bool = False,
        host: str = "127.0.0.1",
        template: str = "{{ .Prompt }}",
        embed_dim: int = 8,
        embed_delay: float = 0.0,
        pull_errors: dict[str, str] | None = None,
        pull_delay: float = 0.0,
    ) -> None:
        if isinstance(embed_dim, bool) or not isinstance(embed_dim, int) or embed_dim < 1:
            raise ValueError("embed_dim must be an int >= 1")
        if embed_delay < 0 or pull_delay < 0:
            raise ValueError("embed_delay and pull_delay must be >= 0 seconds")
        self.models: list[str] = list(models) if models is not None else ["llama3.2"]
        self.loaded: list[str] | None = list(loaded) if loaded is not None else None
        self.version = version
        self.default_script: Script = script if script is not None else Script()
        self.blackhole_all = blackhole_all
        self.host = host
        #: The chat template ``/api/show`` reports (Ollama ``docs/api.md``). aicortex reads
        #: it to learn whether the server continues a prefill: a ``.Messages`` template
        #: without ``$last`` (e.g. :data:`CHATML_TEMPLATE`) closes every turn, so such a
        #: server starts the reply over; pair it with ``Script(continue_prefill=False)``.
        self.template = template
        self.embed_dim = embed_dim
        self.embed_delay = embed_delay
        self.pull_errors: dict[str, str] = dict(pull_errors or {})
        self.pull_delay = pull_delay
        self.server_errors: list[str] = []
        self._embed_free_at = 0.0  # monotonic time at which the embedding "runner" is free
        self._port = port
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._queue: collections.deque[Script] = collections.deque()
        self._records: list[MutableRecord] = []
        self._threads: list[threading.Thread] = []
        self._accept_thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._killing = False
        # stop() writes to _wake_w so that every poll()ing thread wakes at once
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._modified_at = rfc3339()

    # -- lifecycle --

    @property
    def url(self) -> str:
        """Base URL, ``"http://127.0.0.1:PORT"`` (valid once started; stays the same after a restart)."""
        return f"http://{self.host}:{self._port}"

    @property
    def port(self) -> int:
        """The TCP port (0 before the first :meth:`start` when ``port=0`` was given)."""
        return self._port

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`/:meth:`kill`."""
        return self._accept_thread is not None

    def start(self) -> FakeOllama:
        """Bind, listen and start the accept thread; return self.  No-op if already running."""
        with self._lock:
            if self._accept_thread is not None:
                return self
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listener.bind((self.host, self._port))
                listener.listen(128)
                listener.setblocking(False)
            except BaseException:
                listener.close()
                raise
            self._port = listener.getsockname()[1]
            self._wake_r, self._wake_w = socket.socketpair()
            self._stopping.clear()
            self._killing = False
            self._accept_thread = threading.Thread(
                target=self._accept_loop, args=(listener,), name=f"FakeOllama-accept-{self._port}", daemon=True
            )
            self._accept_thread.start()
        return self

    def stop(self) -> None:
        """Stop cleanly: close the listener and every connection (FIN), join all threads.

        Returns promptly (within milliseconds) even while requests are stalled or
        blackholed; their replies are abandoned.  Safe to call twice.
        """
        with self._lock:
            accept_thread = self._accept_thread
            if accept_thread is None:
                return
            self._stopping.set()
            assert self._wake_w is not None
            self._wake_w.send(b"x")
        deadline = time.monotonic() + 5.0
        accept_thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            threads = list(self._threads)
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        with self._cond:
            self._threads = [t for t in threads if t.is_alive()]
            self._accept_thread = None
            for s in (self._wake_r, self._wake_w):
                if s is not None:
                    s.close()
            self._wake_r = self._wake_w = None
            self._cond.notify_all()

    def kill(self) -> None:
        """Die abruptly: close the listener and reset (RST, SO_LINGER 0) every open connection.

        Later connects are refused until :meth:`start` is called again.
        Returns once all threads have ended.
        """
        self._killing = True
        self.stop()

    def __enter__(self) -> FakeOllama:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<FakeOllama {self.url} {state} models={self.models!r}>"

    def _accept_loop(self, listener: socket.socket) -> None:
        try:
            while not self._stopping.is_set():
                if not ready(listener, False, POLL, self._wake_r):
                    continue
                try:
                    sock, _ = listener.accept()
                except OSError:
                    continue
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn = Connection(self, sock)
                t = threading.Thread(target=conn.run, name=f"FakeOllama-conn-{self._port}", daemon=True)
                with self._lock:
                    self._threads = [x for x in self._threads if x.is_alive()]
                    self._threads.append(t)
                t.start()
        finally:
            listener.close()

    # -- scripts --

    def push(self, *scripts: Script) -> None:
        """Queue scripts; each generating chat/generate request takes the next one (FIFO).

        So does each embedding request (/api/embed, /api/embeddings) with at
        least one input; of its Script only the faults apply: ``blackhole``,
        ``first_token_delay``, ``status`` (+ ``error``) before the work,
        ``drop_after`` (any N; + ``reset``), ``error_after`` (any N: a 500) and
        ``malformed_after`` (any N: a cut-off JSON body) after it.

        When the queue is empty ``default_script`` is used.  Requests answered
        before a script is needed (404 unknown model, 400, load/unload
        replies) do not take one.
        """
        for s in scripts:
            if not isinstance(s, Script):
                raise TypeError(f"expected Script, got {type(s).__name__}")
        with self._lock:
            self._queue.extend(scripts)

    @property
    def pending_scripts(self) -> int:
        """Number of pushed scripts not yet used."""
        with self._lock:
            return len(self._queue)

    def _take_script(self) -> Script:
        with self._lock:
            return self._queue.popleft() if self._queue else self.default_script

    # -- model state changed by requests --

    def _note_load(self, model: str, unload: bool) -> None:
        """An empty generate/chat/embed request: load ``model``, or unload it (keep_alive 0)."""
        with self._lock:
            if unload:
                current = self.models if self.loaded is None else self.loaded
                self.loaded = [n for n in current if not same_model(n, model)]
            elif self.loaded is not None and not any(same_model(n, model) for n in self.loaded):
                self.loaded = [*self.loaded, model]

    def _add_pulled(self, model: str) -> None:
        """A pull or copy made ``model`` exist (it is not loaded)."""
        with self._lock:
            if self.loaded is None:
                self.loaded = list(self.models)
            if not any(same_model(n, model) for n in self.models):
                self.models = [*self.models, model]

    def _remove_model(self, model: str) -> bool:
        """A delete: forget ``model``; False if it did not exist."""
        with self._lock:
            if not any(same_model(n, model) for n in self.models):
                return False
            self.models = [n for n in self.models if not same_model(n, model)]
            if self.loaded is not None:
                self.loaded = [n for n in self.loaded if not same_model(n, model)]
            return True

    def _embed_slot(self, inputs: int) -> float:
        """Reserve the embedding runner for ``inputs`` inputs; seconds until this request is done."""
        if not self.embed_delay:
            return 0.0
        with self._lock:
            now = time.monotonic()
            self._embed_free_at = max(now, self._embed_free_at) + inputs * self.embed_delay
            return self._embed_free_at - now

    def _loaded_names(self) -> list[str]:
        names = self.models if self.loaded is None else self.loaded
        return [listed_name(n) for n in names]

    # -- records --

    @property
    def requests(self) -> list[RequestRecord]:
        """Snapshots of every request received so far (all paths), oldest first."""
        with self._lock:
            return [r.snapshot() for r in self._records]

    @property
    def chat_requests(self) -> list[RequestRecord]:
        """Snapshots of the ``/api/chat`` requests only."""
        return [r for r in self.requests if r.path == "/api/chat"]

    @property
    def generate_requests(self) -> list[RequestRecord]:
        """Snapshots of the ``/api/generate`` requests only."""
        return [r for r in self.requests if r.path == "/api/generate"]

    @property
    def embed_requests(self) -> list[RequestRecord]:
        """Snapshots of the ``/api/embed`` and ``/api/embeddings`` requests only."""
        return [r for r in self.requests if r.path in ("/api/embed", "/api/embeddings")]

    def clear_requests(self) -> None:
        """Forget the requests recorded so far."""
        with self._lock:
            self._records.clear()

    def wait_for_disconnect(self, timeout: float = 2.0, path: str = "/api/chat") -> bool:
        """Wait up to ``timeout`` seconds until the latest ``path`` request saw its client go away.

        Returns True if it did (its record has ``disconnected=True``), False on timeout.
        """
        return self._wait(lambda recs: bool(recs) and recs[-1].fields["disconnected"], path, timeout)

    def wait_for_requests(self, count: int, path: str | None = None, timeout: float = 2.0) -> bool:
        """Wait up to ``timeout`` seconds until at least ``count`` requests (to ``path``, if given) arrived."""
        return self._wait(lambda recs: len(recs) >= count, path, timeout)

    def _wait(self, ok: Callable[[list[MutableRecord]], bool], path: str | None, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not ok([r for r in self._records if path is None or r.fields["path"] == path]):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def _new_record(self, req: Request) -> MutableRecord:
        try:
            body = json.loads(req.body) if req.body.strip() else None
        except ValueError:
            body = None
        rec = MutableRecord(
            time.perf_counter_ns(),
            method=req.method, path=req.path, body=body, headers=req.headers, received_at=time.time(),
            query=req.query, raw_body=req.body,
        )
        with self._cond:
            self._records.append(rec)
            self._cond.notify_all()
        return rec

    def _update(self, rec: MutableRecord, **changes: Any) -> None:
        with self._cond:
            rec.fields.update(changes)
            self._cond.notify_all()

    def _mark_gone(self, rec: MutableRecord) -> None:
        with self._cond:
            if not rec.fields["completed"]:
                rec.fields["disconnected"] = True
                self._cond.notify_all()
