#!/usr/bin/env python3
"""Run N FakeOllama servers on 127.0.0.1 in this process, for benchmarks that must keep the
servers' CPU out of the measured process.

    python benchmarks/fakefleet.py --servers 4 --tokens 50 --token-delay 0.005
    # prints: READY ["http://127.0.0.1:PORT", ...]

Runs until its standard input closes (or SIGTERM), then stops every server.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys

from aicortex.testing import FakeOllama, Script


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--servers", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=50)
    ap.add_argument("--token-delay", type=float, default=0.005)
    ap.add_argument("--model", default="m")
    ap.add_argument("--embed-delay", type=float, default=0.0, help="seconds per embedded input (a fixed rate per server)")
    a = ap.parse_args(argv)
    script = Script(tokens=tuple(f" t{i}" for i in range(a.tokens)), token_delay=a.token_delay)
    fakes = [FakeOllama(models=[a.model], script=script, embed_delay=a.embed_delay) for _ in range(a.servers)]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        for f in fakes:
            f.start()
        print("READY " + json.dumps([f.url for f in fakes]), flush=True)
        try:
            sys.stdin.read()
        except KeyboardInterrupt:
            pass
    finally:
        errors = [e for f in fakes for e in f.server_errors]
        for f in fakes:
            f.stop()
        if errors:
            print(f"fake server errors: {errors[:3]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
