"""The main job, end to end, on real local inference servers.

    python scripts/demo.py

1. installs (once, into its own cached virtual environment, ~300 MB) and starts three
   real stacks that speak the Ollama API: llama.cpp serving SmolLM2-135M behind an
   Ollama front end (see scripts/README.md), each on its own 127.0.0.1 port;
2. registers them in a temporary aicortex registry and refreshes it;
3. streams a reply from ``local/smollm2``; after a few tokens it kills the serving
   stack's front end with SIGKILL, in the middle of the reply;
4. the reply goes on on another stack (the partial reply is sent as a prefill, so no
   word is lost or repeated), and the summary shows which servers served, TTFT and
   tokens/s;
5. stops every process it started (also on Ctrl-C).

Exit status 0 when the reply completed after the failover.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import realstack  # noqa: E402

from aicortex import Client, Registry  # noqa: E402

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def log(msg: str) -> None:
    print(f"[demo] {msg}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stacks", type=int, default=3, help="how many real stacks to start (>= 2)")
    ap.add_argument("--kill-after", type=int, default=12, help="kill the serving front end after this many tokens")
    ap.add_argument("--prompt", default=PROMPT)
    args = ap.parse_args(argv)
    if args.stacks < 2:
        ap.error("--stacks must be at least 2: one to kill, one to go on")

    log("installing the real stack if needed (first run: ~20 s, ~300 MB in ~/.cache/aicortex)...")
    try:
        realstack.ensure_installed()
    except realstack.StackUnavailable as exc:
        log(f"cannot install the real stack: {exc}")
        return 2
    t0 = time.perf_counter()
    with realstack.Stacks(args.stacks) as stacks, tempfile.TemporaryDirectory() as tmp:
        log(f"started {len(stacks)} stacks in {time.perf_counter() - t0:.1f} s: " + ", ".join(s.url for s in stacks))
        by_url = {s.url: s for s in stacks}
        registry = Registry(Path(tmp) / "servers.db", seed=False)
        for i, stack in enumerate(stacks, 1):
            registry.add(stack.url, name=f"stack{i}")
        with registry, Client(registry) as client:
            report = client.refresh()
            log(f"refresh: {report.up} up, {report.down} down; serving {realstack.MODEL!r} in try order: "
                + ", ".join(s.name for s in client.list_model_servers(realstack.MODEL)))
            log(f"prompt: {args.prompt!r}\n")
            killed = None
            stream = client.chat(
                args.prompt, model=realstack.MODEL, stream=True, options={"temperature": 0, "num_predict": 160}
            )
            with stream:
                for event in stream:
                    if event.type == "token":
                        print(event.content, end="", flush=True)
                        if killed is None and event.index + 1 == args.kill_after:
                            killed = by_url[event.server]
                            killed.kill_front()  # SIGKILL, mid-reply
                            print(f"\n\n   <<< SIGKILL sent to the front end of {event.server} (pid {killed.front_pid}) >>>\n",
                                  file=sys.stderr, flush=True)
                    elif event.type == "error":
                        print(f"\n   <<< {event.server} failed: {event.content} >>>", file=sys.stderr, flush=True)
                    elif event.type == "meta" and event.meta and "failover" in event.meta:
                        print(f"   <<< {event.meta['failover']} on {event.meta['to']} after "
                              f"{event.meta['kept_tokens']} tokens >>>\n", file=sys.stderr, flush=True)
                    elif event.type == "reset":
                        print("\n", flush=True)
            print(flush=True)
            usage = stream.usage
            print("\n--- summary ---", file=sys.stderr)
            for a in stream.attempts:
                state = "served the end of the reply" if a.ok else f"failed: {a.error}"
                tps = f"{a.tokens_per_second:.1f}" if a.tokens_per_second else "-"
                ttft = f"{a.ttft_s:.3f}s" if a.ttft_s is not None else "-"
                print(f"attempt {a.number} ({a.mode}): {a.server}  tokens={a.tokens}  ttft={ttft}  tok/s={tps}  {state}",
                      file=sys.stderr)
            print(f"reply: {len(stream.text())} chars from {len(stream.attempts)} servers; final server {stream.server}",
                  file=sys.stderr)
            print(f"TTFT {stream.ttft_s:.3f} s, {stream.tokens_per_second:.1f} tok/s client-measured"
                  + (f", {usage.tokens_per_second:.1f} tok/s server-reported by the last server" if usage and usage.tokens_per_second else ""),
                  file=sys.stderr)
            ok = killed is not None and stream.server is not None and stream.server != killed.url
    log("stopped every stack (PIDs " + ", ".join(f"{s.front_pid}/{s.backend_pid}" for s in stacks) + ")")
    if not ok:
        log("the reply did not fail over as expected (was it shorter than --kill-after tokens?)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
