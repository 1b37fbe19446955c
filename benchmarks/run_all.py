#!/usr/bin/env python3
"""Run every aicortex benchmark and print each table (and write each as JSON).

    python benchmarks/run_all.py            # default sizes, a few minutes
    python benchmarks/run_all.py --quick    # tiny inputs (the smoke test's sizes), seconds
    python benchmarks/run_all.py --only stream,import

Benchmarks: import (2), stream (1), failover (3), concurrency (4), async (6), percall (7),
real (5), embed (8), scale (9), hedge (10), gateway (11). Results go to benchmarks/results/<name>.json (gitignored)
and a summary to results/summary.json.
Exit status 1 if a benchmark crashed; missed targets are reported, not failures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_async  # noqa: E402
import bench_concurrency  # noqa: E402
import bench_embed  # noqa: E402
import bench_failover  # noqa: E402
import bench_hedge  # noqa: E402
import bench_gateway  # noqa: E402
import bench_import  # noqa: E402
import bench_percall  # noqa: E402
import bench_real  # noqa: E402
import bench_scale  # noqa: E402
import bench_stream  # noqa: E402
import _common  # noqa: E402
from _common import emit, machine  # noqa: E402

BENCHMARKS = {
    "import": bench_import.run,
    "stream": bench_stream.run,
    "failover": bench_failover.run,
    "hedge": bench_hedge.run,
    "concurrency": bench_concurrency.run,
    "async": bench_async.run,
    "percall": bench_percall.run,
    "embed": bench_embed.run,
    "gateway": bench_gateway.run,
    "real": bench_real.run,
    "scale": bench_scale.run,
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny inputs (smoke test)")
    ap.add_argument("--only", help=f"comma-separated subset of: {', '.join(BENCHMARKS)}")
    ap.add_argument("--skip", help="comma-separated benchmarks to leave out (e.g. real)")
    ap.add_argument("--results", help="directory for the JSON files (default benchmarks/results)")
    a = ap.parse_args(argv)
    if a.results:
        _common.RESULTS = Path(a.results).resolve()
    names = list(BENCHMARKS)
    if a.only:
        names = [n.strip() for n in a.only.split(",") if n.strip()]
    if a.skip:
        names = [n for n in names if n not in {s.strip() for s in a.skip.split(",")}]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        ap.error(f"unknown benchmark(s): {', '.join(unknown)}")
    print(f"# aicortex benchmarks{' (quick)' if a.quick else ''}\n\n{json.dumps(machine())}", flush=True)
    summary: dict = {"quick": a.quick, "machine": machine(), "benchmarks": {}}
    failed = []
    t_all = time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        try:
            result = BENCHMARKS[name](quick=a.quick)
        except Exception:
            failed.append(name)
            print(f"\n### {name}: CRASHED\n\n```\n{traceback.format_exc()}```", flush=True)
            summary["benchmarks"][name] = {"crashed": traceback.format_exc()}
            continue
        path = emit(result)
        summary["benchmarks"][name] = {"json": str(path), "seconds": time.perf_counter() - t0,
                                       "targets": result.get("targets"), "skipped": result.get("skipped")}
    summary["seconds"] = time.perf_counter() - t_all
    _common.RESULTS.mkdir(parents=True, exist_ok=True)
    spath = _common.RESULTS / "summary.json"
    spath.write_text(json.dumps(summary, indent=1, default=str))
    print("\n### Targets\n")
    for name, info in summary["benchmarks"].items():
        for key, value in (info.get("targets") or {}).items():
            if key.endswith("_met") or key == "met":
                print(f"- {name}: {key} = {value}")
    print(f"\nAll done in {summary['seconds']:.0f} s{'; CRASHED: ' + ', '.join(failed) if failed else ''}. Summary: {spath}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
