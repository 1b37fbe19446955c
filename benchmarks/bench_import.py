#!/usr/bin/env python3
"""Benchmark 2, import time: ``import aicortex`` vs ``import ollama`` vs ``import httpx``.

Each figure is the median over several fresh subprocesses of:

* ``-X importtime``: the cumulative microseconds of every top-level import the statement
  adds over ``python -c pass`` (for a package that is its own line's "cumulative" column);
* wall: ``python -c "<stmt>"`` minus ``python -c pass``, both timed from the parent.

Also shown: aicortex plus building its first ``Client`` (which loads httpx and
sqlite-utils lazily), since ``import ollama`` already pays for httpx and pydantic.

    python benchmarks/bench_import.py [--quick] [--runs N]

Target (from the issue): aicortex < half of ollama.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import PY, ROOT, child_env, emit, median  # noqa: E402

CASES = [
    ("aicortex", "import aicortex"),
    ("ollama", "import ollama"),
    ("httpx", "import httpx"),
    ("aicortex + first Client()", "import aicortex; aicortex.Client(':memory:', refresh_ttl_s=None).close()"),
]
TARGET = 0.5


def _top_level(stderr: str) -> dict[str, int]:
    """``{module: cumulative_us}`` of the unindented lines of ``-X importtime`` output."""
    out: dict[str, int] = {}
    for line in stderr.splitlines():
        if not line.startswith("import time:"):
            continue
        parts = line[len("import time:"):].split("|")
        if len(parts) != 3 or not parts[1].strip().isdigit():
            continue  # the header line
        name = parts[2]
        stripped = name.lstrip()
        if len(name) - len(stripped) > 1:  # nested: one leading space is the separator
            continue
        out[stripped.strip()] = int(parts[1])
    return out


def _run(code: str, importtime: bool) -> tuple[float, str]:
    cmd = [PY] + (["-X", "importtime"] if importtime else []) + ["-c", code]
    env = child_env()
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # never write .pyc from a timing run; they exist already
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(ROOT), timeout=60)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"{code!r} failed: {proc.stderr[-2000:]}")
    return wall, proc.stderr


def run(quick: bool = False, runs: int | None = None) -> dict:
    runs = runs or (2 if quick else 9)
    for _, code in CASES:  # warm the OS cache and the .pyc files once
        _run(code, False)
    base_mods = set(_top_level(_run("pass", True)[1]))
    walls: dict[str, list[float]] = {name: [] for name, _ in CASES}
    base_walls: list[float] = []
    cumul: dict[str, list[float]] = {name: [] for name, _ in CASES}
    modules: dict[str, list[str]] = {}
    for _ in range(runs):
        base_walls.append(_run("pass", False)[0])
        for name, code in CASES:
            walls[name].append(_run(code, False)[0])
            top = _top_level(_run(code, True)[1])
            added = {m: us for m, us in top.items() if m not in base_mods}
            modules[name] = sorted(added, key=added.get, reverse=True)[:6]  # type: ignore[arg-type]
            cumul[name].append(sum(added.values()) / 1000.0)
    base = median(base_walls) or 0.0
    rows, display = [], []
    ref = median(cumul["ollama"]) or 1.0
    ref_wall = (median(walls["ollama"]) or 0.0) - base
    for name, code in CASES:
        it = median(cumul[name])
        wall = (median(walls[name]) or 0.0) - base
        row = {
            "case": name, "statement": code, "importtime_ms_median": it, "wall_minus_pass_ms_median": wall * 1000,
            "x_ollama_importtime": it / ref if it is not None else None, "x_ollama_wall": wall / ref_wall if ref_wall > 0 else None,
            "top_level_modules": modules[name], "runs": runs,
        }
        rows.append(row)
        display.append([
            name, f"{it:.1f}", f"{wall * 1000:.1f}", f"{row['x_ollama_importtime']:.2f}x",
            f"{row['x_ollama_wall']:.2f}x" if row["x_ollama_wall"] is not None else "-", ", ".join(modules[name]), str(runs),
        ])
    a = rows[0]
    notes = [
        f"Median of {runs} fresh subprocesses each; `python -c pass` takes {base * 1000:.1f} ms wall (subtracted).",
        f"Target 2, aicortex < {TARGET}x ollama: {a['x_ollama_importtime']:.2f}x by -X importtime, "
        f"{a['x_ollama_wall']:.2f}x by wall -> {'MET' if a['x_ollama_importtime'] < TARGET and (a['x_ollama_wall'] or 0) < TARGET else 'MISSED'}.",
    ]
    return {
        "name": "import_time",
        "title": "2. Import time",
        "columns": ["import", "-X importtime cumulative ms (median)", "wall minus `-c pass` ms (median)", "x ollama (importtime)", "x ollama (wall)", "top-level modules loaded", "runs"],
        "rows": rows,
        "display_rows": display,
        "targets": {"aicortex_vs_ollama": a["x_ollama_importtime"], "aicortex_vs_ollama_wall": a["x_ollama_wall"], "target": TARGET,
                    "met": a["x_ollama_importtime"] < TARGET and (a["x_ollama_wall"] or 0) < TARGET},
        "notes": notes,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Import time benchmark")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--runs", type=int)
    a = ap.parse_args(argv)
    emit(run(a.quick, a.runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
