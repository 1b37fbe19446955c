"""The PostgreSQL registry: URL handling, migrations, copy, and what several processes
share through one database (circuit breakers, half-open trials, in-flight leases,
change notifications), and an outage in the middle of a run.

The server is the suite's own (conftest ``pg_server``), except for the outage test,
which starts one it can stop. Processes are real (``subprocess``); they talk to
FakeOllama servers in this process over loopback.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from click.testing import CliRunner

from aicortex import Client, ConfigError, ModelEntry, Registry, RegistryError
from aicortex._health import Health
from aicortex.cli import cli
from aicortex.testing import FakeOllama, Script

pytestmark = pytest.mark.timeout(120)

MODEL = "llama3.2"
TOKENS = ("a", " b")


@pytest.fixture
def fakes():
    started = []

    def make(n, **kw):
        kw.setdefault("script", Script(tokens=TOKENS))
        new = [FakeOllama(models=[MODEL], **kw).start() for _ in range(n)]
        started.extend(new)
        return new

    yield make
    for f in started:
        f.stop()


def _fleet(url, fakes, warm=None):
    """Register ``fakes`` (s0, s1, ...) in the PostgreSQL registry at ``url`` and refresh
    them, the way `aicortex servers add` + `aicortex refresh` would; the model is loaded
    on ``warm`` (default: all), which routing tries first."""
    with Registry(url, seed=False) as reg:
        for i, f in enumerate(fakes):
            reg.add(f.url, name=f"s{i}")
            loaded = [MODEL] if warm is None or f in warm else []
            reg.record_refresh(f.url, version="0.12.6", models=[ModelEntry(f"{MODEL}:latest")], loaded=loaded)


def _run(code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr
    return out


# -- location, URL, password ----------------------------------------------------------------------
def test_a_postgresql_url_selects_the_postgresql_store_everywhere(pg_url, monkeypatch, tmp_path):
    from aicortex._store_postgres import PostgresRegistry

    with Registry(pg_url, seed=False) as reg:
        assert isinstance(reg, PostgresRegistry) and isinstance(reg, Registry)
        reg.add("http://gpu1:11434", name="gpu1")
        assert reg.path is None and repr(reg) == f"<Registry {pg_url}>"
    monkeypatch.setenv("AICORTEX_DB", pg_url)
    with Registry() as reg:  # AICORTEX_DB
        assert [s.name for s in reg.servers()] == ["gpu1"]
    runner = CliRunner()
    res = runner.invoke(cli, ["servers", "list", "--json"])  # AICORTEX_DB again, through the CLI
    assert res.exit_code == 0, res.output
    assert [s["name"] for s in json.loads(res.output)] == ["gpu1"]
    monkeypatch.delenv("AICORTEX_DB")
    res = runner.invoke(cli, ["--db", pg_url, "servers", "add", "http://gpu2:11434", "--name", "gpu2", "--no-seed"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["servers", "list", "--json", "--db", pg_url])
    assert [s["name"] for s in json.loads(res.output)] == ["gpu1", "gpu2"]


def test_a_password_in_the_url_is_refused_and_never_shown(pg_server):
    secret = "s3cr3t-pw"
    for url in (f"postgresql://aicortex:{secret}@127.0.0.1:{pg_server.port}/postgres",
                f"postgresql://aicortex@127.0.0.1:{pg_server.port}/postgres?password={secret}"):
        with pytest.raises(ConfigError, match="carries a password.*PGPASSWORD") as info:
            Registry(url)
        assert secret not in str(info.value)


def test_the_password_comes_from_pgpassword_or_pgpass(pg_server, pg_url, monkeypatch, tmp_path):
    monkeypatch.delenv("PGPASSWORD")
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "none"))
    with pytest.raises(RegistryError, match=r"PostgreSQL registry postgresql://aicortex@127\.0\.0\.1:\d+/t.*password") as info:
        Registry(pg_url)
    assert pg_server.password not in str(info.value)
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"127.0.0.1:{pg_server.port}:*:aicortex:{pg_server.password}\n")
    pgpass.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(pgpass))
    with Registry(pg_url, seed=False) as reg:
        assert reg.servers() == []


def test_an_unreachable_server_is_a_clear_registry_error():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(RegistryError, match=rf"PostgreSQL registry postgresql://app@127\.0\.0\.1:{port}/fleet: .*refused"):
        Registry(f"postgresql://app@127.0.0.1:{port}/fleet")


def test_without_postgresql_these_tests_fail_under_require_real_and_skip_otherwise(tmp_path):
    """CI sets AICORTEX_REQUIRE_REAL=1: a machine without PostgreSQL's programs fails the
    PostgreSQL tests there instead of skipping them."""
    env = {k: v for k, v in os.environ.items() if k != "AICORTEX_REQUIRE_REAL"}
    env["AICORTEX_PG_BIN"] = str(tmp_path)  # no initdb there
    test = f"{__file__}::test_create_false_on_a_database_without_a_registry_is_an_error"
    for require, code, outcome in (("1", 1, "1 error"), ("", 0, "1 skipped")):
        out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs", test],
                             capture_output=True, text=True, timeout=120, env={**env, "AICORTEX_REQUIRE_REAL": require})
        assert out.returncode == code and outcome in out.stdout, out.stdout[-2000:]
        assert "no initdb/postgres in AICORTEX_PG_BIN" in out.stdout


# -- schema and migrations ------------------------------------------------------------------------
def test_schema_is_versioned_by_migrations_and_created_once_by_racing_processes(pg_url):
    from aicortex._registry import MIGRATIONS as SQLITE_MIGRATIONS
    from aicortex._store_postgres import MIGRATIONS

    code = f"""
        from aicortex import Registry
        with Registry({pg_url!r}) as reg:   # seeded: OLLAMA_HOST
            print(reg.seeded or "")
    """
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "OLLAMA_HOST": "http://seed:11434"}) for _ in range(4)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [e for _, e in outs]
    assert sorted(o.strip() for o, _ in outs) == ["", "", "", "http://seed:11434"]  # seeded once
    with Registry(pg_url, seed=False) as reg:
        assert reg.applied_migrations() == [name for name, _ in MIGRATIONS]
        assert [s.url for s in reg.servers()] == ["http://seed:11434"]
    sqlite_names = [m.name for m in SQLITE_MIGRATIONS._migration_fns] if hasattr(SQLITE_MIGRATIONS, "_migration_fns") else None
    if sqlite_names:
        assert [name for name, _ in MIGRATIONS][: len(sqlite_names)] == sqlite_names


def test_create_false_on_a_database_without_a_registry_is_an_error(pg_url):
    with pytest.raises(RegistryError, match="no registry in postgresql://.*servers add"):
        Registry(pg_url, create=False)
    Registry(pg_url, seed=False).close()
    with Registry(pg_url, create=False, seed=False) as reg:
        assert reg.servers() == []


# -- registry copy --------------------------------------------------------------------------------
def test_registry_copy_moves_servers_models_health_and_bench_both_ways(pg_url, tmp_path):
    src_path = tmp_path / "src.db"
    with Registry(src_path, seed=False) as src:
        src.add("http://a:1", name="a", priority=3, headers_env={"Authorization": "A_TOKEN"})
        src.add("http://b:1", name="b")
        src.record_refresh("a", version="0.12.6", models=[ModelEntry("llama3.2:latest", size=2_000_000_000)], loaded=["llama3.2"])
        src.update_health("a", "llama3.2", lambda h: Health(successes=7, ewma_ttft_s=0.25))
        src.update_health("b", "", lambda h: Health(failures=2, open_until=123.0, total_failures=2))
        before = src.snapshot()
    res = CliRunner().invoke(cli, ["registry", "copy", str(src_path), pg_url, "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output) == {"source": str(src_path), "destination": pg_url, "servers": 2, "models": 1, "health": 2, "bench": 0}
    with Registry(pg_url, create=False, seed=False) as pg:
        after = pg.snapshot()
        assert after.servers == before.servers and after.health == before.health and after.entries == before.entries
        assert after.last_refresh_at == before.last_refresh_at
        assert pg.get("a").headers_env == {"Authorization": "A_TOKEN"}
    back = tmp_path / "back.db"
    res = CliRunner().invoke(cli, ["registry", "copy", pg_url, str(back)])
    assert res.exit_code == 0 and "Copied 2 servers (1 models, 2 health records, 0 bench rows)" in res.output, res.output
    with Registry(back, create=False, seed=False) as again:
        assert again.snapshot().health == before.health
    res = CliRunner().invoke(cli, ["registry", "copy", str(src_path), pg_url])  # twice: refused, nothing copied
    assert res.exit_code == 1 and "already in the destination" in res.output
    with Registry(pg_url, create=False, seed=False) as pg:
        assert len(pg.servers()) == 2


def test_both_clients_take_a_postgresql_url_and_fail_over_on_it(pg_url, fakes, client_kind):
    from conftest import make_client

    s0, s1 = fakes(2)
    _fleet(pg_url, [s0, s1], warm=[s0])
    s0.push(Script(status=500))
    client = make_client(client_kind, pg_url, spread_load=False)  # the client opens (and closes) the registry
    try:
        assert client.registry.url == pg_url
        reply = client.chat("q", model=MODEL)
        assert reply.server == s1.url and [a.server for a in reply.attempts] == [s0.url, s1.url]
        assert reply.text == "".join(TOKENS)
    finally:
        client.close()
    with Registry(pg_url, seed=False) as reg:  # written on close
        assert reg.health(s0.url, MODEL).total_failures == 1 and reg.health(s1.url, MODEL).successes == 1


# -- what processes share ---------------------------------------------------------------------------
def test_another_processs_breaker_trip_reaches_this_process_within_a_second(pg_url, fakes, record_property):
    """Process B trips s0's breaker; process A (this one) stops sending to s0 by itself.
    The delay from B's reply to A's view is measured and reported (it is milliseconds:
    B writes a breaker change at once and A wakes on the NOTIFY)."""
    s0, s1 = fakes(2)
    _fleet(pg_url, [s0, s1])
    client = Client(Registry(pg_url, seed=False), spread_load=False, timeout=0.8)
    s0.kill()
    out = _run(f"""
        import time
        from aicortex import Client, Registry
        with Client(Registry({pg_url!r}, seed=False), timeout=0.8, spread_load=False) as c:
            reply = c.chat("q", model={MODEL!r})
            print(reply.server, time.time())
    """)
    server, tripped_at = out.stdout.split()
    assert server == s1.url
    deadline = time.monotonic() + 10
    while client.fleet.health(s0.url).failures == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    seen_after = time.time() - float(tripped_at)
    assert client.fleet.health(s0.url).failures == 1
    record_property("breaker_propagation_s", round(seen_after, 3))
    print(f"breaker trip seen by the other process {seen_after * 1000:.0f} ms after its reply")
    s0.start()  # back on its port: would answer if contacted
    assert client.chat("q", model=MODEL).server == s1.url and s0.chat_requests == []
    client.close()
    client.registry.close()


FLAP = """
import json, sys
import aicortex._health as health
health.BASE_COOLDOWN_S = 0.02   # a short cooldown and trial window: the flapping server
health.TRIAL_WINDOW_S = 0.2     # is tried again and again
from aicortex import Client, Registry
ok = {}; failed = 0; errors = 0
with Client(Registry(sys.argv[1], seed=False), timeout=2.0, spread_load=True, refresh_ttl_s=None) as c:
    for _ in range(int(sys.argv[2])):
        try:
            reply = c.chat("q", model=sys.argv[3])
        except Exception as exc:
            errors += 1
            continue
        for a in reply.attempts:
            if a.error is None:
                ok[a.server] = ok.get(a.server, 0) + 1
            else:
                failed += 1
print(json.dumps({"ok": ok, "failed": failed, "errors": errors}))
"""


def test_eight_processes_with_a_flapping_server_lose_no_update(pg_url, fakes):
    """8 processes x 300 requests, one server failing every other request: no reply
    fails, and the store's success and failure counts equal the attempts made."""
    s0, s1, s2 = fakes(3, script=Script(tokens=("a",)))
    s0.push(*[Script(status=500), Script(tokens=("a",))] * 3000)
    _fleet(pg_url, [s0, s1, s2], warm=[s0])  # s0 first whenever its breaker lets it
    procs = [subprocess.Popen([sys.executable, "-c", FLAP, pg_url, "300", MODEL], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(8)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=110)
        assert p.returncode == 0, err
        results.append(json.loads(out))
    assert sum(r["errors"] for r in results) == 0
    made_ok: dict[str, int] = {}
    for r in results:
        for url, n in r["ok"].items():
            made_ok[url] = made_ok.get(url, 0) + n
    made_failed = sum(r["failed"] for r in results)
    assert sum(made_ok.values()) == 8 * 300 and made_failed > 0 and made_ok.get(s0.url, 0) > 0  # it flapped
    with Registry(pg_url, seed=False) as reg:
        stored_ok = {s.url: reg.health(s.url, MODEL).successes for s in reg.servers()}
        stored_failed = sum(reg.health(s.url, m).total_failures for s in reg.servers() for m in ("", MODEL))
    assert {u: n for u, n in stored_ok.items() if n} == made_ok
    assert stored_failed == made_failed
    print(f"8 x 300 requests: {sum(made_ok.values())} successful and {made_failed} failed attempts, all in the store; "
          f"{made_ok.get(s0.url, 0)} successes on the flapping server")


CLAIMER = """
import sys, time
from aicortex import Registry
with Registry(sys.argv[1], seed=False) as reg:
    reg.servers()  # connected before the race
    print("ready", flush=True)
    for line in sys.stdin:
        print(int(reg.claim_trial(sys.argv[2], sys.argv[3], time.time())), flush=True)
"""


def test_one_half_open_trial_per_fleet_in_30_rounds_of_8_racing_processes(pg_url):
    url = "http://gpu1:11434"
    with Registry(pg_url, seed=False) as reg:
        reg.add(url)
        procs = [subprocess.Popen([sys.executable, "-c", CLAIMER, pg_url, url, MODEL], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(8)]
        try:
            assert [p.stdout.readline().strip() for p in procs] == ["ready"] * 8
            winners = []
            for _ in range(30):
                now = time.time()  # a breaker whose cooldown just ended: half-open
                reg.update_health(url, "", lambda h: Health(failures=1, open_until=now - 0.01, last_failure_at=now - 5))
                for p in procs:
                    p.stdin.write("go\n")
                for p in procs:
                    p.stdin.flush()
                winners.append(sum(int(p.stdout.readline()) for p in procs))
            assert winners == [1] * 30
        finally:
            for p in procs:
                p.stdin.close()
            for p in procs:
                p.wait(30)
                err = p.stderr.read()
                p.stdout.close()
                p.stderr.close()
                assert p.returncode == 0, err


def test_in_flight_counts_are_shared_as_leases_that_expire(pg_url, fakes):
    s0, s1 = fakes(2)
    _fleet(pg_url, [s0, s1])
    with Registry(pg_url, seed=False) as a, Registry(pg_url, seed=False) as b:
        now = time.time()
        assert a.sync_inflight("A", {s0.url: 3}, now=now, ttl_s=10) == {}
        assert b.sync_inflight("B", {s1.url: 1}, now=now) == {s0.url: 3}
        assert a.sync_inflight("A", {s0.url: 2}, now=now) == {s1.url: 1}  # replaced, not added
        assert b.sync_inflight("B", {}, now=now + 5) == {s0.url: 2}
        assert b.sync_inflight("B", {}, now=now + 11) == {}  # A crashed: its lease lapsed
        # The fleet view adds the other processes' leases to its own count when routing:
        # with 3 requests of another process on s0, equal servers route to s1 first.
        a.sync_inflight("A", {s0.url: 3})
        client = Client(b, spread_load=False)
        client.fleet.sync()
        assert client.fleet.inflight_elsewhere(s0.url) == 3
        assert [c.server.url for c in client.route(MODEL).candidates] == [s1.url, s0.url]
        client.close()
        a.sync_inflight("A", {})
        client = Client(b, spread_load=False)
        assert [c.server.url for c in client.route(MODEL).candidates] == [s0.url, s1.url]
        client.close()


def test_subscribers_are_called_after_another_connections_write(pg_url):
    with Registry(pg_url, seed=False) as a, Registry(pg_url, seed=False) as b:
        changed = threading.Event()
        b.subscribe(changed.set)
        assert changed.wait(10)  # once at the start: the listener is connected
        changed.clear()
        v = b.data_version()
        a.add("http://gpu1:11434")
        assert changed.wait(10)
        assert b.data_version() != v


# -- an outage ------------------------------------------------------------------------------------
def test_a_database_outage_never_breaks_a_reply_is_logged_once_and_caught_up(fakes, caplog, monkeypatch):
    """PostgreSQL stopped in the middle of a run: replies go on from memory, one warning
    on the "aicortex" logger, and after the restart the store gets every outcome."""
    from pgserver import PgServer

    caplog.set_level(logging.INFO, logger="aicortex")
    s0, s1, s2 = fakes(3)
    with PgServer() as pg:
        monkeypatch.setenv("PGPASSWORD", pg.password)
        url = pg.create_database("outage")
        _fleet(url, [s0, s1, s2], warm=[s0])  # s0 first, until it fails
        client = Client(Registry(url, seed=False), spread_load=False, timeout=0.8)
        try:
            replies = [client.chat("q", model=MODEL) for _ in range(5)]
            client.fleet.sync()
            pg.stop()
            s0.push(Script(status=500))
            replies += [client.chat("q", model=MODEL) for _ in range(20)]  # every one answers
            assert all(r.text == "".join(TOKENS) for r in replies)
            client.fleet.sync()
            assert client.fleet.storage_errors >= 1
            warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "aicortex"]
            assert len(warnings) == 1 and "registry" in warnings[0].getMessage(), [r.getMessage() for r in warnings]
            pg.start()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                client.fleet.sync()
                if not client.fleet._pending and not client.fleet._failing:
                    break
                time.sleep(0.1)
            assert any("answers again" in r.getMessage() for r in caplog.records)
            attempts = [a for r in replies for a in r.attempts]
            failed = sum(a.error is not None for a in attempts)
            assert failed == 1 and len(attempts) - failed == 25
            with Registry(url, seed=False) as reg:  # caught up: every outcome is in the store
                assert sum(reg.health(f.url, MODEL).total_failures for f in (s0, s1, s2)) == failed
                assert sum(reg.health(f.url, MODEL).successes for f in (s0, s1, s2)) == 25
            assert len([r for r in caplog.records if r.levelno == logging.WARNING and r.name == "aicortex"]) == 1
        finally:
            client.close()
            client.registry.close()
