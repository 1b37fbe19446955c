"""Shared helpers of the benchmarks: markdown tables, JSON results, statistics, subprocesses.

Standard library only. Every benchmark module has ``run(quick: bool) -> dict`` returning
``{"name", "title", "columns", "rows", "notes", ...}``; :func:`emit` prints the table and
writes the same data to ``benchmarks/results/<name>.json`` (gitignored).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
PY = sys.executable

__all__ = ["HERE", "ROOT", "RESULTS", "PY", "median", "percentile", "fmt", "markdown_table", "emit", "machine", "child_env"]


def median(values: Iterable[float]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank-interpolated percentile (``p`` in 0..100) of ``values``; ``None`` if empty."""
    vals = sorted(v for v in values if v is not None)
    if not vals:
        return None
    if len(vals) == 1:
        return vals[0]
    k = (len(vals) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(vals) - 1)
    return vals[lo] + (vals[hi] - vals[lo]) * (k - lo)


def fmt(value: Any, digits: int = 2) -> str:
    """A table cell: numbers with ``digits`` decimals (thousands separated), ``None`` as ``-``."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(c) for c in columns]] + [[c if isinstance(c, str) else fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths)) + " |"]
    lines.append("| " + " | ".join("-" * w for w in widths) + " |")
    for r in cells[1:]:
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def emit(result: dict[str, Any], out_dir: Path | None = None) -> Path:
    """Print ``result`` as a markdown table (title, table, notes) and write it as JSON.

    ``result["rows"]`` holds raw values (formatted for the table here);
    ``result["display_rows"]``, if present, is printed instead.
    """
    out_dir = out_dir or RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{result['name']}.json"
    data = {**result, "machine": machine()}
    data.pop("display_rows", None)
    path.write_text(json.dumps(data, indent=1, default=str))
    print(f"\n### {result['title']}\n")
    if result.get("skipped"):
        print(f"SKIPPED: {result['skipped']}\n")
    else:
        print(markdown_table(result["columns"], result.get("display_rows") or result["rows"]))
        print()
    for extra in result.get("extra_tables", []):
        print(f"{extra['title']}\n")
        print(markdown_table(extra["columns"], extra["rows"]))
        print()
    for note in result.get("notes", []):
        print(f"- {note}")
    print(f"\nJSON: {path}", flush=True)
    return path


def child_env() -> dict[str, str]:
    """Environment for benchmark subprocesses: no proxies (all traffic is on 127.0.0.1),
    no aicortex/Ollama settings leaking in, the repository importable."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy") and not k.startswith(("AICORTEX_", "OLLAMA_"))}
    env["NO_PROXY"] = "127.0.0.1,localhost"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(HERE)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def run_json(cmd: list[str], timeout: float = 300) -> dict[str, Any]:
    """Run a child that prints one JSON object as its last stdout line; return it."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=child_env(), cwd=str(ROOT))
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


class ServerProcess:
    """A child server process that prints ``READY <url>`` (or ``READY <json>``) on stdout and
    runs until its stdin is closed. A context manager; stopped (by its own PID) on exit."""

    def __init__(self, cmd: list[str], ready_timeout: float = 60.0) -> None:
        self.cmd = cmd
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen | None = None
        self.ready: str = ""

    def __enter__(self) -> "ServerProcess":
        import select

        self.proc = subprocess.Popen(
            self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=child_env(), cwd=str(ROOT), text=True,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + self.ready_timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                self.stop()
                raise RuntimeError(f"{' '.join(self.cmd)}: not ready within {self.ready_timeout} s")
            line = self.proc.stdout.readline()
            if not line:
                err = self.proc.stderr.read() if self.proc.stderr else ""
                self.stop()
                raise RuntimeError(f"{' '.join(self.cmd)} exited before it was ready:\n{err[-2000:]}")
            if line.startswith("READY "):
                self.ready = line[len("READY "):].strip()
                return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def cpu_s(self) -> float | None:
        """CPU seconds (user + system) the child has used so far (Linux /proc), or None."""
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError, TypeError):
            return None

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            if proc.stdin:
                proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(3)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for f in (proc.stdout, proc.stderr):
            if f:
                f.close()

    def __exit__(self, *exc: object) -> None:
        self.stop()
