"""Process launcher for scripts/realstack.py.  Runs under the *stack* venv's python.

    python _realstack_backend.py backend --parent-pid P --model M.gguf --port N [...]
        llama.cpp's server in-process (xllamacpp.Server), alive until killed.
    python _realstack_backend.py front --parent-pid P --host 127.0.0.1 --port N
        the ollama-proxy-plus front end in-process (same as `ollama-proxy serve`),
        reading its YAML config from $PROXY_CONFIG_FILE.

Both modes kill themselves when the process that started them goes away (a
watchdog compares os.getppid() with --parent-pid), so a test run killed with
SIGKILL leaves no server behind.  This file is not imported by the project.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time


def _watch_parent(parent_pid: int) -> None:
    def loop() -> None:
        while True:
            if os.getppid() != parent_pid:
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(0.5)

    if parent_pid > 0:
        threading.Thread(target=loop, name="parent-watchdog", daemon=True).start()


def _backend(args: argparse.Namespace) -> int:
    import xllamacpp

    if args.host != "127.0.0.1":
        raise SystemExit("the backend binds 127.0.0.1 only")
    params = xllamacpp.CommonParams()
    params.model.path = args.model
    params.hostnames = [args.host]
    params.port = args.port
    params.n_ctx = args.n_ctx
    params.n_parallel = args.n_parallel
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    params.model_alias = {args.alias}
    params.n_predict = args.n_predict
    params.offline = True  # never reach out for a model
    params.ui = False      # no web UI; just the API
    server = xllamacpp.Server(params)  # starts serving in background threads
    print(f"realstack backend: llama.cpp on http://{args.host}:{args.port} pid {os.getpid()}", flush=True)
    try:
        while True:  # keep the process (and so the server) alive until a signal ends it
            signal.pause()
    finally:
        del server
    return 0


def _front(args: argparse.Namespace) -> int:
    if args.host != "127.0.0.1":
        raise SystemExit("the front end binds 127.0.0.1 only")
    if not os.environ.get("PROXY_CONFIG_FILE"):
        raise SystemExit("PROXY_CONFIG_FILE is not set")
    from ollama_proxy.cli import main as proxy_main

    # Its default host is 0.0.0.0: always pass --host.  Its config comes from
    # $PROXY_CONFIG_FILE (else ./ollama-proxy.yaml in the working directory).
    sys.argv = ["ollama-proxy", "serve", "--host", args.host, "--port", str(args.port)]
    print(f"realstack front end: ollama-proxy on http://{args.host}:{args.port} pid {os.getpid()}", flush=True)
    return proxy_main()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    b = sub.add_parser("backend")
    b.add_argument("--parent-pid", type=int, default=0)
    b.add_argument("--model", required=True)
    b.add_argument("--host", default="127.0.0.1")
    b.add_argument("--port", type=int, required=True)
    b.add_argument("--alias", default="smollm2")
    b.add_argument("--n-parallel", type=int, default=1)
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--n-ctx", type=int, default=2048)
    b.add_argument("--n-predict", type=int, default=256)
    f = sub.add_parser("front")
    f.add_argument("--parent-pid", type=int, default=0)
    f.add_argument("--host", default="127.0.0.1")
    f.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    # Ctrl-C in a terminal reaches the whole process group: leave shutdown to the
    # parent, which stops each process by PID (uvicorn installs its own handlers).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _watch_parent(args.parent_pid)
    return _backend(args) if args.mode == "backend" else _front(args)


if __name__ == "__main__":
    sys.exit(main())
