"""Smoke test of benchmarks/: each benchmark runs on a tiny input and prints a table with
the expected columns. No timing is asserted (figures depend on the machine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

pytestmark = pytest.mark.timeout(120)


def _emit(result, tmp_path, capsys):
    from _common import emit

    path = emit(result, out_dir=tmp_path)
    out = capsys.readouterr().out
    data = json.loads(path.read_text())
    return out, data


def _header(columns):
    return "| " + " | ".join(columns)


def _check_table(out, columns, nrows):
    lines = [l for l in out.splitlines() if l.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == list(columns)
    assert len(lines) >= 2 + nrows  # header, rule, rows


def test_stream_overhead(tmp_path, capsys):
    import ollama  # noqa: F401  (a test extra: the official client is measured side by side)
    import bench_stream

    result = bench_stream.run(quick=True, chunks=2000, repeats=1, profile=False)
    out, data = _emit(result, tmp_path, capsys)
    assert result["columns"] == ["consumer", "CPU us/chunk (best)", "CPU us/chunk (median)", "x floor", "chunks/s (best)",
                                 "peak RSS MB", "RSS growth MB", "runs"]
    _check_table(out, result["columns"], 4)
    assert [r["consumer"] for r in data["rows"]] == ["httpx", "ollama", "aicortex", "transport"]
    assert all(r["cpu_us_per_chunk_best"] > 0 and r["chunks_per_s_best"] > 0 for r in data["rows"])
    assert "Target 1a" in out and "Target 1b" in out
    assert "JSON: " in out


def test_stream_profile_lists_functions():
    import ollama  # noqa: F401  (a test extra: the official client is measured side by side)
    import bench_stream

    result = bench_stream.run(quick=True, chunks=500, repeats=1, profile=True)
    assert result["profile_top"] and all("function" in r for r in result["profile_top"])


def test_import_time(tmp_path, capsys):
    import ollama  # noqa: F401  (a test extra: the official client is measured side by side)
    import bench_import

    result = bench_import.run(quick=True, runs=1)
    out, data = _emit(result, tmp_path, capsys)
    assert result["columns"][:5] == ["import", "-X importtime cumulative ms (median)", "wall minus `-c pass` ms (median)",
                                     "x ollama (importtime)", "x ollama (wall)"]
    _check_table(out, result["columns"], 4)
    assert [r["case"] for r in data["rows"]][:3] == ["aicortex", "ollama", "httpx"]
    assert data["rows"][0]["importtime_ms_median"] > 0
    assert "Target 2" in out


def test_failover(tmp_path, capsys):
    import bench_failover

    result = bench_failover.run(quick=True, reps=1)
    out, data = _emit(result, tmp_path, capsys)
    assert result["columns"] == ["first server", "request", "TTFT ms (median)", "TTFT ms (max)", "chat() call -> first token ms",
                                 "attempts", "1st attempt error", "text intact", "reps"]
    _check_table(out, result["columns"], 10)
    assert len(data["rows"]) == 10 and all(r["text_ok"] for r in data["rows"])
    assert [r["attempts"] for r in data["rows"]] == [1, 1, 2, 1, 2, 1, 2, 1, 2, 1]
    assert len(data["midstream"]) == 4 and all(r["gap_ms_median"] is not None and r["text_ok"] for r in data["midstream"])
    assert "gap ms (median)" in out and "connect=0.5 s" in out


def test_hedge(tmp_path, capsys):
    import bench_hedge

    result = bench_hedge.run(quick=True, requests=20, kinds=("async",))
    out, data = _emit(result, tmp_path, capsys)
    _check_table(out, bench_hedge.COLUMNS, 2)
    assert [(r["client"], r["hedge"], r["requests"]) for r in data["rows"]] == [("async", False, 20), ("async", True, 20)]
    assert data["rows"][0]["extra_attempts"] == 0 and "p99_ms" in data["rows"][1]


def test_concurrency(tmp_path, capsys):
    import ollama  # noqa: F401  (a test extra: the official client is measured side by side)
    import bench_concurrency

    result = bench_concurrency.run(quick=True, streams=10, tokens=10, token_delay=0.001)
    out, data = _emit(result, tmp_path, capsys)
    assert result["columns"] == ["consumer", "streams", "chunks", "wall s", "chunks/s", "TTFT p50 ms", "TTFT p99 ms", "errors",
                                 "failovers", "CPU us/chunk", "streams per server", "server proc CPU"]
    _check_table(out, result["columns"], 3)
    for row in data["rows"]:
        assert row["errors"] == 0 and row["chunks_total"] == 100
    targets = result["targets"]
    assert {"aicortex_vs_httpx", "aicortex_spread_pct", "aicortex_errors_met"} <= set(targets)
    assert "Target 4a" in out and "Target 4b" in out


def _has_async_client() -> bool:
    import aicortex

    return hasattr(aicortex, "AsyncClient")


ASYNC_COLUMNS = ["consumer", "errors", "chunks/s (load)", "x ollama", "CPU us/chunk (load)", "x floor", "CPU us/chunk (paced)",
                 "x floor (paced)", "TTFT p50 ms", "TTFT p99 ms", "loop lag p99 ms", "streams per server"]


def test_async_floors(tmp_path, capsys):
    """The peers of the async benchmark (aiohttp floor, ollama.AsyncClient, raw httpx, httpx over aiohttp)."""
    pytest.importorskip("aiohttp")
    pytest.importorskip("httpx_aiohttp")
    import ollama  # noqa: F401
    import bench_async

    result = bench_async.run(quick=True, streams=8, tokens=5, only=["aiohttp", "ollama", "httpx", "httpx_aiohttp"])
    out, data = _emit(result, tmp_path, capsys)
    assert result["columns"] == ASYNC_COLUMNS
    _check_table(out, result["columns"], 4)
    assert [r["consumer"] for r in data["rows"]] == ["aiohttp", "ollama", "httpx", "httpx_aiohttp"]
    for row in data["rows"]:
        assert row["errors"] == 0, row["errors_sample"]
        assert row["chunks_per_s"] > 0 and row["cpu_us_per_chunk_load"] > 0 and row["loop_lag_ms_p99"] is not None
        assert row["streams_per_server"] == [2, 2, 2, 2]
    assert "Async transport" in out


def test_async_aicortex(tmp_path, capsys):
    """The aicortex AsyncClient row; skipped while aicortex has no AsyncClient."""
    if not _has_async_client():
        pytest.skip("aicortex.AsyncClient does not exist yet: the aicortex row of bench_async is skipped")
    pytest.importorskip("aiohttp")
    import bench_async

    result = bench_async.run(quick=True, streams=8, tokens=5, only=["aiohttp", "aicortex"])
    out, data = _emit(result, tmp_path, capsys)
    _check_table(out, result["columns"], 2)
    rows = {r["consumer"]: r for r in data["rows"]}
    assert rows["aicortex"]["errors"] == 0, rows["aicortex"]["errors_sample"]
    assert sum(rows["aicortex"]["streams_per_server"]) == 8
    assert "Target 6b" in out and "Target 6c" in out


def test_async_skips_aicortex_when_missing(tmp_path, capsys, monkeypatch):
    import bench_async

    monkeypatch.setattr(bench_async, "aicortex_async_missing", lambda: "aicortex.AsyncClient does not exist in this checkout")
    result = bench_async.run(quick=True, streams=4, tokens=3, only=["aiohttp", "aicortex"])
    out, data = _emit(result, tmp_path, capsys)
    assert [r["consumer"] for r in data["rows"]] == ["aiohttp"]
    assert "(e) aicortex SKIPPED" in out and data["skipped_consumers"]["aicortex"]


def test_percall(tmp_path, capsys):
    import ollama  # noqa: F401
    import bench_percall

    result = bench_percall.run(quick=True, requests=10, servers=10, chunks=500, repeats=1)
    out, data = _emit(result, tmp_path, capsys)
    assert result["columns"] == ["consumer", "CPU us/request (best)", "CPU us/request (median)", "x ollama", "requests/s (best)", "bad replies"]
    _check_table(out, result["columns"], 3)
    assert [r["consumer"] for r in data["rows"]] == ["ollama", "aicortex", "httpx"]
    assert all(r["bad_replies"] == 0 and r["cpu_us_per_request_best"] > 0 for r in data["rows"])
    assert [r["servers"] for r in data["route_rows"]] == [1, 10] and all(r["route_us_best"] > 0 for r in data["route_rows"])
    mem = {r["consumer"]: r for r in data["memory_rows"]}
    assert {"ollama", "aicortex", "httpx"} <= set(mem) and all(r["ok"] for r in mem.values())
    if bench_percall.keep_events_support() is None:
        assert "aicortex_nokeep" not in mem and "keep_events=False SKIPPED" in out
    else:
        assert "aicortex_nokeep" in mem
    assert "Target 7a" in out and "Target 7b" in out


def test_run_all_quick_cli(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AICORTEX_", "OLLAMA_"))}
    proc = subprocess.run(
        [sys.executable, str(BENCH / "run_all.py"), "--quick", "--only", "failover", "--results", str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=str(ROOT), env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "### 3. Failover cost" in proc.stdout and "| first server" in proc.stdout
    assert "Summary: " in proc.stdout
    assert (tmp_path / "failover.json").exists() and (tmp_path / "summary.json").exists()


@pytest.mark.real
def test_real_model(realstack_installed, tmp_path, capsys):
    import bench_real

    result = bench_real.run(quick=True, runs=1)
    if result.get("skipped"):
        if os.environ.get("AICORTEX_REQUIRE_REAL") == "1":
            pytest.fail(result["skipped"], pytrace=False)
        pytest.skip(result["skipped"])
    out, data = _emit(result, tmp_path, capsys)
    _check_table(out, bench_real.COLUMNS, 2)
    assert len(data["rows"]) == 2 and all(r["ok"] == 1 and r["ttft_p50_s"] for r in data["rows"])


def test_embed(tmp_path, capsys):
    import bench_embed

    result = bench_embed.run(quick=True, inputs=200, delay=0.0002)
    out, data = _emit(result, tmp_path, capsys)
    _check_table(out, result["columns"], 4)
    assert [r[2] for r in data["rows"]] == [200] * 4  # every consumer embedded every input
    assert "identical to the official client's, in input order: True" in out
    assert data["targets"]["speedup_sync"] > 0


def test_scale(pg_server, tmp_path, capsys):
    import bench_scale

    result = bench_scale.run(quick=True, servers=30, models=4, routes=100)
    out, data = _emit(result, tmp_path, capsys)
    _check_table(out, result["columns"], 2)
    assert [r[0] for r in data["rows"]] == ["SQLite", "PostgreSQL (+ leases of another process)"]
    assert all(r[1] == 30 and r[2] == 4 and r[-1] == 29 for r in data["rows"])  # all but the one in cooldown
    assert "requests in flight elsewhere" in out and data["targets"]["route_p99_ms"] > 0


def test_gateway(tmp_path, capsys):
    import bench_gateway

    result = bench_gateway.run(quick=True)
    out, data = _emit(result, tmp_path, capsys)
    _check_table(out, result["columns"], 2)
    rows = {r["path"]: r for r in data["rows"]}
    assert all(r["errors"] == 0 for r in rows.values())
    gw = rows["gateway (h11 + asyncio)"]
    assert gw["chunks_total"] == 20 * 10 and gw["gateway_cpu_us_per_chunk"] > 0
    assert gw["added_ttft_ms_p99"] is not None
