"""The gateway, end to end, on real local inference servers, with the official client.

    python scripts/gateway_demo.py

1. installs (once, into its own cached virtual environment, ~300 MB) and starts three
   real stacks that speak the Ollama API (llama.cpp serving SmolLM2-135M behind an Ollama
   front end; see scripts/README.md), each on its own 127.0.0.1 port;
2. registers them in a temporary registry (priorities 30, 20, 10: the first stack serves
   first) and starts the aicortex gateway on 127.0.0.1 (``aicortex.gateway.create_app``
   on uvicorn, in this process);
3. streams a reply through the gateway with the official ``ollama`` client, which knows
   nothing of aicortex: ``ollama.Client(host=GATEWAY)``;
4. after a few chunks it SIGKILLs the serving stack's front end, in the middle of the reply;
5. the gateway continues the reply on another stack: the client's stream goes on, with no
   error and no word lost or repeated; the gateway's access log line names the server that
   finished the reply and the attempts;
6. stops every process it started (also on Ctrl-C).

Exit status 0 when the client received the whole reply (``done: true``) after the kill.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import realstack  # noqa: E402

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def log(msg: str) -> None:
    print(f"[gateway-demo] {msg}", file=sys.stderr, flush=True)


class _AccessLines(logging.Handler):
    """Keeps the gateway's access log lines (JSON) and echoes them to stderr."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        line = json.loads(record.getMessage())
        self.lines.append(line)
        print(f"[gateway access] {record.getMessage()}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stacks", type=int, default=3, help="how many real stacks to start (>= 2)")
    ap.add_argument("--kill-after", type=int, default=12, help="SIGKILL the serving front end after this many chunks")
    ap.add_argument("--prompt", default=PROMPT)
    args = ap.parse_args(argv)
    if args.stacks < 2:
        ap.error("--stacks must be at least 2: one to kill, one to go on")
    try:
        import ollama

        from aicortex import Registry
        from aicortex.gateway import ServerThread, create_app
    except ImportError as exc:
        log(f"needs the official client and the gateway extra: pip install ollama 'aicortex[gateway]' ({exc})")
        return 2

    log("installing the real stack if needed (first run: ~20 s, ~300 MB in ~/.cache/aicortex)...")
    try:
        realstack.ensure_installed()
    except realstack.StackUnavailable as exc:
        log(f"cannot install the real stack: {exc}")
        return 2
    access = _AccessLines()
    logging.getLogger("aicortex.gateway.access").addHandler(access)
    logging.getLogger("aicortex.gateway.access").setLevel(logging.INFO)
    t0 = time.perf_counter()
    with realstack.Stacks(args.stacks) as stacks, tempfile.TemporaryDirectory() as tmp:
        log(f"started {len(stacks)} stacks in {time.perf_counter() - t0:.1f} s: " + ", ".join(s.url for s in stacks))
        registry = Registry(Path(tmp) / "servers.db", seed=False)
        for i, stack in enumerate(stacks):
            registry.add(stack.url, name=f"stack{i + 1}", priority=30 - 10 * i)
        with registry, ServerThread(create_app(registry, refresh_interval_s=None)) as gateway:
            log(f"gateway on {gateway.url}; pointing the official client at it: ollama.Client(host={gateway.url!r})")
            log(f"prompt: {args.prompt!r}\n")
            client = ollama.Client(host=gateway.url)
            parts: list[str] = []
            killed = None
            last = None
            try:
                for part in client.chat(
                    model=realstack.MODEL, messages=[{"role": "user", "content": args.prompt}], stream=True,
                    options={"temperature": 0, "num_predict": 160},
                ):
                    last = part
                    if part.message.content:
                        parts.append(part.message.content)
                        print(part.message.content, end="", flush=True)
                    if killed is None and len(parts) == args.kill_after:
                        killed = stacks[0]
                        killed.kill_front()  # SIGKILL, mid-reply
                        print(f"\n\n   <<< SIGKILL sent to the front end of {killed.url} (pid {killed.front_pid}); "
                              "the client keeps reading >>>\n", file=sys.stderr, flush=True)
            except ollama.ResponseError as exc:
                print(f"\n   <<< the client saw an error: {exc} >>>", file=sys.stderr, flush=True)
            finally:
                client.close()
            print("\n", flush=True)
            text = "".join(parts)
            ok = killed is not None and last is not None and bool(last.done)
            deadline = time.monotonic() + 5  # the access line is written once the response has ended
            while not any(line.get("path") == "/api/chat" for line in access.lines) and time.monotonic() < deadline:
                time.sleep(0.01)
            chat = next((line for line in reversed(access.lines) if line.get("path") == "/api/chat"), {})
            print("--- summary ---", file=sys.stderr)
            print(f"the client received {len(parts)} chunks, {len(text)} chars; done={last.done if last else None} "
                  f"done_reason={last.done_reason if last else None}; no error: {ok}", file=sys.stderr)
            print(f"gateway: request {chat.get('request_id')} served by {chat.get('server')} after {chat.get('attempts')} "
                  f"attempts (TTFT {chat.get('ttft_s')} s); killed: {killed.url if killed else None}", file=sys.stderr)
            ok = ok and chat.get("server") not in (None, killed.url if killed else None)
    log("stopped the gateway and every stack (PIDs " + ", ".join(f"{s.front_pid}/{s.backend_pid}" for s in stacks) + ")")
    if not ok:
        log("the reply did not complete through a failover as expected (was it shorter than --kill-after chunks?)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
