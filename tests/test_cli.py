"""The ``aicortex`` command line, run with click's CliRunner against real loopback FakeOllama servers."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import click
import pytest
from click.testing import CliRunner

from aicortex import Registry, Server
from aicortex.cli import cli, format_table, humanize_ago
from aicortex.testing import FakeOllama, Script, closed_port_url

REPLY = ("The ", "sky ", "is ", "blue.")


# -- helpers --------------------------------------------------------------------------------
def run(*args: str, db=None, input: str | None = None):
    argv = [str(a) for a in args]
    if db is not None:
        argv += ["--db", str(db)]
    return CliRunner().invoke(cli, argv, input=input, catch_exceptions=False)


def one_line(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture
def db(db_path):
    """An empty registry file (the OLLAMA_HOST seed removed, so it is never re-seeded)."""
    with Registry(db_path) as reg:
        for s in reg.servers():
            reg.remove(s.url)
    return db_path


def add(db, url: str, name: str, priority: int = 0) -> None:
    with Registry(db) as reg:
        reg.add(url, name=name, priority=priority)


def listing(db) -> list[dict]:
    result = run("servers", "list", "--json", db=db)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture
def two_fakes(db):
    """Two healthy fakes with llama3.2: "one" (priority 10) is tried first."""
    with FakeOllama(models=["llama3.2", "qwen3:8b"]) as one, FakeOllama(models=["llama3.2"]) as two:
        one.default_script = two.default_script = Script(tokens=REPLY)
        add(db, one.url, "one", priority=10)
        add(db, two.url, "two")
        yield one, two


# -- help -----------------------------------------------------------------------------------
def _commands(group: click.Group, path: tuple[str, ...] = ()):
    for name, cmd in group.commands.items():
        yield path + (name,), cmd
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, path + (name,))


ALL_COMMANDS = list(_commands(cli))


def test_command_tree_is_what_we_mean():
    assert {" ".join(p) for p, _ in ALL_COMMANDS} == {
        "servers", "servers add", "servers list", "servers remove", "servers enable",
        "servers disable", "refresh", "models", "chat", "bench",
        "ps", "show", "pull", "delete", "copy", "warm", "unload", "registry", "registry copy", "top", "serve",
    }


@pytest.mark.parametrize("path,cmd", [((), cli)] + ALL_COMMANDS, ids=lambda x: " ".join(x) if isinstance(x, tuple) else None)
def test_every_command_has_help(path, cmd):
    assert cmd.help, f"{path} has no docstring"
    result = run(*path, "--help")
    assert result.exit_code == 0
    first_line = cmd.help.strip().splitlines()[0]
    assert one_line(first_line) in one_line(result.stdout)
    if not isinstance(cmd, click.Group) and path != ("registry", "copy"):  # that one takes two locations
        assert "--db PATH" in result.stdout


def test_version():
    from aicortex import __version__

    result = run("--version")
    assert result.exit_code == 0
    assert __version__ in result.stdout


def test_python_dash_m_runs_the_cli():
    proc = subprocess.run([sys.executable, "-m", "aicortex", "--help"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "servers" in proc.stdout and "chat" in proc.stdout


# -- servers ------------------------------------------------------------------------------------
def test_servers_add_list_remove_enable_disable(db):
    result = run("servers", "add", "http://GPU1:11434/", "--name", "gpu1", "--priority", "7", db=db)
    assert result.exit_code == 0, result.output
    assert "gpu1 (http://gpu1:11434)" in result.stdout and "priority 7" in result.stdout
    assert run("servers", "add", "gpu2", db=db).exit_code == 0  # bare host, default port and name

    table = run("servers", "list", db=db)
    assert table.exit_code == 0
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["name", "url", "enabled", "status", "version", "models", "last", "seen", "last", "error"]
    assert lines[2].split()[:4] == ["gpu1", "http://gpu1:11434", "yes", "unknown"]  # priority 7 first
    assert lines[3].split()[:4] == ["gpu2:11434", "http://gpu2:11434", "yes", "unknown"]
    assert "never" in lines[2]

    rows = listing(db)
    assert [r["name"] for r in rows] == ["gpu1", "gpu2:11434"]
    assert set(rows[0]) == {f.name for f in dataclasses.fields(Server)}
    assert rows[0]["priority"] == 7 and rows[0]["enabled"] is True and rows[0]["models"] == []

    result = run("servers", "disable", "gpu1", db=db)
    assert result.exit_code == 0 and "Disabled gpu1" in result.stdout
    assert listing(db)[0]["enabled"] is False
    assert "no" in run("servers", "list", db=db).stdout.splitlines()[2].split()

    result = run("servers", "enable", "http://gpu1:11434", db=db)  # by URL
    assert result.exit_code == 0 and "Enabled gpu1" in result.stdout
    assert listing(db)[0]["enabled"] is True

    result = run("servers", "remove", "gpu1", db=db)
    assert result.exit_code == 0 and "Removed gpu1 (http://gpu1:11434)" in result.stdout
    assert [r["name"] for r in listing(db)] == ["gpu2:11434"]


def test_servers_list_empty_registry(db):
    result = run("servers", "list", db=db)
    assert result.exit_code == 0
    assert "aicortex servers add" in result.stdout
    assert run("servers", "list", "--json", db=db).stdout.strip() == "[]"


@pytest.mark.parametrize(
    "args,message",
    [
        (("servers", "add", "ftp://x"), "only http:// and https://"),
        (("servers", "add", "http://"), "no host name"),
        (("servers", "add", "http://gpu1:11434"), "already registered"),  # duplicate URL
        (("servers", "add", "http://other:1", "--name", "gpu1"), "already registered"),  # duplicate name
        (("servers", "remove", "nosuch"), "no registered server 'nosuch'"),
        (("servers", "enable", "nosuch"), "no registered server 'nosuch'"),
        (("servers", "disable", "http://nosuch:1"), "no registered server"),
        (("refresh", "nosuch"), "no registered server 'nosuch'"),
    ],
)
def test_bad_input_is_a_clear_error_and_changes_nothing(db, args, message):
    add(db, "http://gpu1:11434", "gpu1")
    before = listing(db)
    result = run(*args, db=db)
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: ")
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert listing(db) == before


def test_usage_errors_exit_2(db):
    assert run("servers", "add", "http://x:1", "--priority", "high", db=db).exit_code == 2
    assert run("servers", "frobnicate", db=db).exit_code == 2
    result = run("chat", "hi", db=db)  # no -m
    assert result.exit_code == 2 and "--model" in result.stderr


@pytest.mark.parametrize("args", [("servers", "list"), ("servers", "add", "http://x:1"), ("refresh",), ("models",)])
def test_db_that_is_not_sqlite(tmp_path, args):
    path = tmp_path / "notes.txt"
    content = b"these are my notes, not a database\n" * 100
    path.write_bytes(content)
    result = run(*args, db=path)
    assert result.exit_code == 1
    assert "is not an SQLite database" in result.stderr
    assert str(path) in one_line(result.stderr)
    assert "Traceback" not in result.output
    assert path.read_bytes() == content


def test_db_from_environment(db, monkeypatch):
    add(db, "http://envhost:11434", "envhost")
    monkeypatch.setenv("AICORTEX_DB", str(db))
    result = run("servers", "list", "--json")
    assert [r["name"] for r in json.loads(result.stdout)] == ["envhost"]


def test_db_before_the_command_works_like_after(db, tmp_path, monkeypatch):
    add(db, "http://gpu1:11434", "gpu1")
    before = run("--db", db, "servers", "list", "--json")
    assert before.exit_code == 0, before.output
    assert [r["name"] for r in json.loads(before.stdout)] == ["gpu1"]
    assert run("--db", db, "servers", "add", "http://gpu2:1", "--name", "gpu2").exit_code == 0
    assert [r["name"] for r in listing(db)] == ["gpu1", "gpu2"]
    # the command's own --db wins over the group's, and over AICORTEX_DB
    other = tmp_path / "other.db"
    with Registry(other, seed=False) as reg:
        reg.add("http://other:1", name="other")
    monkeypatch.setenv("AICORTEX_DB", str(db))
    result = run("--db", db, "servers", "list", "--json", "--db", other)
    assert [r["name"] for r in json.loads(result.stdout)] == ["other"]
    result = run("servers", "list", "--json", "--db", other)
    assert [r["name"] for r in json.loads(result.stdout)] == ["other"]
    assert [r["name"] for r in json.loads(run("servers", "list", "--json").stdout)] == ["gpu1", "gpu2"]
    assert "--db PATH" in run("--help").stdout


READ_COMMANDS = [
    ("servers", "list"),
    ("servers", "remove", "gpu1"),
    ("servers", "enable", "gpu1"),
    ("servers", "disable", "gpu1"),
    ("refresh",),
    ("models",),
    ("models", "llama3.2"),
    ("chat", "-m", "llama3.2", "hi"),
    ("bench", "-m", "llama3.2"),
    ("ps",),
    ("show", "llama3.2"),
    ("pull", "llama3.2"),
    ("delete", "llama3.2"),
    ("copy", "llama3.2", "mine"),
    ("warm", "llama3.2"),
    ("unload", "llama3.2"),
]


@pytest.mark.parametrize("args", READ_COMMANDS, ids=" ".join)
@pytest.mark.parametrize("where", ["after", "before", "env"])
def test_read_commands_on_a_missing_registry_exit_1_and_create_nothing(tmp_path, monkeypatch, args, where):
    path = tmp_path / "no" / "such" / "servers.db"
    if where == "after":
        result = run(*args, db=path)
    elif where == "before":
        result = run("--db", path, *args)
    else:
        monkeypatch.setenv("AICORTEX_DB", str(path))
        result = run(*args)
    assert result.exit_code == 1, result.output
    assert f"no registry at {path}: add a server first with `aicortex servers add URL`" in one_line(result.stderr)
    assert not (tmp_path / "no").exists()


def test_a_url_as_db_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run("servers", "add", "http://gpu1:11434", db="http://gpu1:11434")
    assert result.exit_code == 1 and "is a server URL, not a registry file" in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args",
    [
        ("chat", "-m", "", "hi"),
        ("chat", "-m", "   ", "hi"),
        ("chat", "--model=", "hi"),
        ("bench", "-m", ""),
        ("bench", "--model", " "),
        ("models", ""),
    ],
)
def test_empty_model_name_is_a_usage_error(two_fakes, db, args):
    one, two = two_fakes
    result = run(*args, db=db)
    assert result.exit_code == 2, result.output
    assert "model name is empty" in result.stderr and "-m llama3.2" in result.stderr
    assert one.requests == [] and two.requests == []


def test_empty_model_from_environment_is_a_usage_error(two_fakes, db, monkeypatch):
    monkeypatch.setenv("AICORTEX_MODEL", "  ")
    result = run("chat", "hi", db=db)
    assert result.exit_code == 2 and "model name is empty" in result.stderr


def test_model_name_is_trimmed(two_fakes, db):
    result = run("chat", "-m", " llama3.2 ", "hi", db=db)
    assert result.exit_code == 0, result.output
    assert two_fakes[0].chat_requests[0].body["model"] == "llama3.2"


# -- creating a registry: only `servers add`, and it says what it seeded ------------------------------
def test_servers_add_on_a_new_registry_says_it_also_seeded(db_path):
    result = run("servers", "add", "http://gpu1:11434", "--name", "gpu1", db=db_path)
    assert result.exit_code == 0, result.output
    message = one_line(result.stderr)
    assert f"new registry {db_path}" in message and "127.0.0.1:11434" in message and "OLLAMA_HOST" in message
    assert "servers remove 127.0.0.1:11434" in message and "--no-seed" in message
    assert [r["url"] for r in listing(db_path)] == ["http://127.0.0.1:11434", "http://gpu1:11434"]
    again = run("servers", "add", "http://gpu2:11434", db=db_path)  # not new any more: no notice
    assert again.exit_code == 0 and again.stderr == ""


def test_servers_add_seed_comes_from_ollama_host(db_path, monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", "gpu9:8000")
    result = run("servers", "add", "http://gpu1:11434", db=db_path)
    assert result.exit_code == 0 and "http://gpu9:8000" in result.stderr
    assert [r["url"] for r in listing(db_path)] == ["http://gpu9:8000", "http://gpu1:11434"]


def test_servers_add_no_seed_registers_only_the_server(db_path):
    result = run("servers", "add", "http://gpu1:11434", "--no-seed", db=db_path)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert [r["url"] for r in listing(db_path)] == ["http://gpu1:11434"]
    assert run("models", db=db_path).exit_code in (0, 1)  # a read command never seeds later
    assert [r["url"] for r in listing(db_path)] == ["http://gpu1:11434"]


def test_servers_add_of_the_seed_url_on_a_new_registry_adds_it_as_asked(db_path):
    result = run("servers", "add", "http://127.0.0.1:11434", "--name", "local", "--priority", "3", db=db_path)
    assert result.exit_code == 0, result.output
    assert "new registry" not in result.stderr
    assert [(r["name"], r["priority"]) for r in listing(db_path)] == [("local", 3)]


@pytest.mark.parametrize("url", ["ftp://gpu1", "http://user:s3cr3t@gpu1"])
def test_servers_add_with_a_bad_url_creates_no_registry(tmp_path, url):
    path = tmp_path / "new" / "servers.db"
    result = run("servers", "add", url, db=path)
    assert result.exit_code == 1 and result.stderr.startswith("Error: ")
    assert "s3cr3t" not in result.output
    assert not (tmp_path / "new").exists()


# -- per-server headers by environment variable name ---------------------------------------------------
def test_servers_add_header_env_stores_and_shows_names_never_values(db, monkeypatch):
    monkeypatch.setenv("GPU1_TOKEN", "Bearer s3cr3t")
    monkeypatch.setenv("GPU1_KEY", "k3y-value")
    result = run("servers", "add", "http://gpu1:11434", "--name", "gpu1",
                 "--header-env", "Authorization=GPU1_TOKEN", "--header-env", "X-Api-Key=GPU1_KEY", db=db)
    assert result.exit_code == 0, result.output
    assert "Authorization=$GPU1_TOKEN, X-Api-Key=$GPU1_KEY" in result.stdout
    assert run("servers", "add", "http://gpu2:11434", "--name", "gpu2", db=db).exit_code == 0
    table = run("servers", "list", db=db).stdout
    assert "headers (from env)" in table.splitlines()[0]
    assert "Authorization=$GPU1_TOKEN, X-Api-Key=$GPU1_KEY" in next(ln for ln in table.splitlines() if ln.startswith("gpu1 "))
    rows = {r["name"]: r for r in listing(db)}
    assert rows["gpu1"]["headers_env"] == {"Authorization": "GPU1_TOKEN", "X-Api-Key": "GPU1_KEY"}
    assert rows["gpu2"]["headers_env"] == {}
    everything = result.output + table + run("servers", "list", "--json", db=db).stdout
    assert "s3cr3t" not in everything and "k3y-value" not in everything
    assert b"s3cr3t" not in db.read_bytes()


def test_servers_list_has_no_headers_column_when_no_server_has_one(db):
    add(db, "http://gpu1:11434", "gpu1")
    assert "headers" not in run("servers", "list", db=db).stdout


@pytest.mark.parametrize(
    "value,message",
    [
        ("Authorization", "is not HEADER=ENV_VAR"),
        ("Authorization=Bearer abc", "not a valid environment variable name"),
        ("Bad Header=TOKEN", "not a valid HTTP header name"),
        ("Authorization=", "not a valid environment variable name"),
    ],
)
def test_servers_add_bad_header_env_is_a_usage_error(db, value, message):
    result = run("servers", "add", "http://gpu1:11434", "--header-env", value, db=db)
    assert result.exit_code == 2 and message in one_line(result.stderr)
    assert listing(db) == []


def test_servers_add_same_header_twice_is_a_usage_error(db):
    result = run("servers", "add", "http://gpu1:11434", "--header-env", "Authorization=A",
                 "--header-env", "authorization=B", db=db)
    assert result.exit_code == 2 and "given twice" in result.stderr


# -- refresh ----------------------------------------------------------------------------------
def test_refresh_two_up_one_down(two_fakes, db):
    dead = closed_port_url()
    add(db, dead, "dead")
    result = run("refresh", db=db)
    assert result.exit_code == 0, result.output
    assert "2 servers up, 1 down, 2 models" in result.stdout
    down = [line for line in result.stdout.splitlines() if "down:" in line]
    assert len(down) == 1 and f"dead ({dead})" in down[0] and "connection refused" in down[0]
    assert "Probing servers" in result.stderr  # the progress bar is on stderr, not stdout
    rows = {r["name"]: r for r in listing(db)}
    assert rows["one"]["status"] == "up" and rows["one"]["models"] == ["llama3.2:latest", "qwen3:8b"]
    assert rows["dead"]["status"] == "down" and "connection refused" in rows["dead"]["last_error"]

    table = run("servers", "list", db=db).stdout
    one_row = next(line for line in table.splitlines() if line.startswith("one "))
    assert "llama3.2:latest, qwen3:8b" in one_row and "s ago" in one_row and "0.12.6" in one_row
    dead_row = next(line for line in table.splitlines() if line.startswith("dead "))
    assert "never" in dead_row and "connection refused" in dead_row


def test_refresh_named_server_only(two_fakes, db):
    one, two = two_fakes
    result = run("refresh", "two", db=db)
    assert result.exit_code == 0
    assert "1 server up, 0 down, 1 model" in result.stdout
    assert one.requests == [] and any(r.path == "/api/tags" for r in two.requests)


def test_refresh_all_down_exits_1(db):
    add(db, closed_port_url(), "a")
    add(db, closed_port_url(), "b")
    result = run("refresh", db=db)
    assert result.exit_code == 1
    assert "0 servers up, 2 down, 0 models" in result.stdout
    assert "all 2 servers are down" in result.stderr


def test_refresh_with_no_server(db):
    result = run("refresh", db=db)
    assert result.exit_code == 1
    assert "no enabled server" in result.stderr


# -- models ----------------------------------------------------------------------------------
def test_models_lists_distinct_names(two_fakes, db):
    result = run("models", db=db)  # refreshes by itself: the registry was never refreshed
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["llama3.2:latest", "qwen3:8b"]
    assert json.loads(run("models", "--json", db=db).stdout) == ["llama3.2:latest", "qwen3:8b"]


def test_models_excludes_disabled_servers(two_fakes, db):
    run("refresh", db=db)
    run("servers", "disable", "one", db=db)
    assert run("models", db=db).stdout.splitlines() == ["llama3.2:latest"]


def test_models_model_in_try_order(db):
    with FakeOllama(models=["llama3.2"], loaded=[]) as cold, FakeOllama(models=["llama3.2"]) as warm:
        add(db, cold.url, "cold", priority=10)
        add(db, warm.url, "warm")
        result = run("models", "llama3.2", db=db)
        assert result.exit_code == 0, result.output
        lines = result.stdout.splitlines()
        assert lines[0].split() == ["#", "name", "url", "loaded", "priority", "status"]
        # warm first (it is loaded), although "cold" has the higher priority
        assert lines[2].split() == ["1", "warm", warm.url, "warm", "0", "up"]
        assert lines[3].split() == ["2", "cold", cold.url, "no", "10", "up"]
        rows = json.loads(run("models", "llama3.2", "--json", db=db).stdout)
        assert [(r["name"], r["warm"], r["rank"]) for r in rows] == [("warm", True, 1), ("cold", False, 2)]
        assert rows[0]["url"] == warm.url and rows[0]["models"] == ["llama3.2:latest"]


def test_models_unknown_model(two_fakes, db):
    result = run("models", "nosuchmodel", db=db)
    assert result.exit_code == 1
    assert "no registered server lists model 'nosuchmodel'" in result.stderr
    assert "llama3.2:latest" in result.stderr  # says what is available


# -- chat -------------------------------------------------------------------------------------
def test_chat_streams_the_reply(two_fakes, db):
    one, two = two_fakes
    result = run("chat", "-m", "llama3.2", "Why is the sky blue?", db=db)
    assert result.exit_code == 0, result.output
    assert result.stdout == "The sky is blue.\n"
    summary = result.stderr.strip().splitlines()[-1]
    assert summary.startswith(f"[aicortex] server={one.url} ttft=")
    assert "tok/s=" in summary and "attempts=1" in summary and "eval_count=4" in summary
    assert one.chat_requests[0].body["messages"] == [{"role": "user", "content": "Why is the sky blue?"}]
    assert two.chat_requests == []


def test_chat_prompt_from_stdin(two_fakes, db):
    one, _ = two_fakes
    for args in (("chat", "-m", "llama3.2"), ("chat", "-m", "llama3.2", "-")):
        result = run(*args, db=db, input="piped question\n")
        assert result.exit_code == 0, result.output
        assert result.stdout == "The sky is blue.\n"
        assert one.chat_requests[-1].body["messages"][-1]["content"] == "piped question\n"


@pytest.mark.parametrize("args,input", [(("",), None), ((), "   \n"), (("-",), "")])
def test_chat_empty_prompt(two_fakes, db, args, input):
    one, two = two_fakes
    result = run("chat", "-m", "llama3.2", *args, db=db, input=input)
    assert result.exit_code == 2
    assert "empty prompt" in result.stderr
    assert one.chat_requests == [] and two.chat_requests == []


def test_chat_failover_mid_reply_continues(two_fakes, db):
    one, two = two_fakes
    one.push(Script(tokens=REPLY, drop_after=2))
    result = run("chat", "-m", "llama3.2", "hi", db=db)
    assert result.exit_code == 0, result.output
    assert result.stdout == "The sky is blue.\n"  # nothing lost, nothing repeated
    err = result.stderr.splitlines()
    failed = [line for line in err if line.startswith("[aicortex] one failed: ")]
    assert len(failed) == 1 and f"({one.url})" not in failed[0]
    assert "[aicortex] continuing on two" in err
    assert err[-1].startswith(f"[aicortex] server={two.url} ") and "attempts=2" in err[-1]
    assert two.chat_requests[0].body["messages"][-1] == {"role": "assistant", "content": "The sky "}


def test_chat_failover_mid_reply_restart(two_fakes, db):
    one, two = two_fakes
    one.push(Script(tokens=REPLY, drop_after=2))
    result = run("chat", "-m", "llama3.2", "hi", "--on-midstream", "restart", db=db)
    assert result.exit_code == 0, result.output
    # the reset puts the restarted reply on a new line
    assert result.stdout == "The sky \nThe sky is blue.\n"
    assert "[aicortex] restarting on two" in result.stderr.splitlines()


def test_chat_on_midstream_raise(two_fakes, db):
    one, two = two_fakes
    one.push(Script(tokens=REPLY, drop_after=2))
    result = run("chat", "-m", "llama3.2", "hi", "--on-midstream", "raise", db=db)
    assert result.exit_code == 1
    assert result.stdout == "The sky \n"
    assert "connection lost" in result.stderr and two.chat_requests == []


def test_chat_every_server_fails(two_fakes, db):
    one, two = two_fakes
    one.push(Script(status=500, error="runner crashed"))
    two.push(Script(status=503, error="queue full"))
    result = run("chat", "-m", "llama3.2", "hi", db=db)
    assert result.exit_code == 1
    assert result.stdout == ""
    err = result.stderr
    assert "[aicortex] one failed: HTTP 500: runner crashed" in err
    assert "[aicortex] two failed: HTTP 503: queue full" in err
    assert "Error: all 2 servers failed for model 'llama3.2'" in err
    assert f"one ({one.url}): HTTP 500: runner crashed" in err
    assert f"two ({two.url}): HTTP 503: queue full" in err


def test_chat_unreachable_server_only(db):
    add(db, closed_port_url(), "dead")
    result = run("chat", "-m", "llama3.2", "hi", db=db)
    assert result.exit_code == 1
    assert "Error: " in result.stderr and "connection refused" in result.stderr
    assert "Traceback" not in result.output


def test_chat_unknown_model(two_fakes, db):
    result = run("chat", "-m", "nosuchmodel", "hi", db=db)
    assert result.exit_code == 1
    assert "no registered server lists model 'nosuchmodel'" in result.stderr


def test_chat_bad_request_is_not_failed_over(two_fakes, db):
    one, two = two_fakes
    one.push(Script(status=400, error="invalid option"))
    result = run("chat", "-m", "llama3.2", "hi", db=db)
    assert result.exit_code == 1
    assert "invalid option" in result.stderr
    assert two.chat_requests == []


def test_chat_passes_options_system_and_think(two_fakes, db):
    one, _ = two_fakes
    one.push(Script(thinking=("Let me ", "think."), tokens=REPLY))
    result = run(
        "chat", "-m", "llama3.2", "hi", "--system", "Be brief.", "--think",
        "-o", "temperature=0", "--option", 'stop=["\\n"]', "-o", "label=plain text", db=db,
    )
    assert result.exit_code == 0, result.output
    body = one.chat_requests[0].body
    assert body["options"] == {"temperature": 0, "stop": ["\n"], "label": "plain text"}
    assert body["think"] is True
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert result.stdout == "The sky is blue.\n"  # thinking never on stdout
    assert "Let me think." in result.stderr


def test_chat_think_not_sent_by_default_and_hidden(two_fakes, db):
    one, _ = two_fakes
    one.push(Script(thinking=("secret thoughts",), tokens=REPLY))
    result = run("chat", "-m", "llama3.2", "hi", db=db)
    assert "think" not in one.chat_requests[0].body
    assert "secret thoughts" not in result.output
    result = run("chat", "-m", "llama3.2", "hi", "--no-think", db=db)
    assert one.chat_requests[-1].body["think"] is False


def test_chat_bad_option_is_a_usage_error(two_fakes, db):
    result = run("chat", "-m", "llama3.2", "hi", "-o", "temperature", db=db)
    assert result.exit_code == 2 and "KEY=VALUE" in result.stderr


def test_chat_timeout_fails_over(two_fakes, db):
    one, two = two_fakes
    one.push(Script(tokens=REPLY, first_token_delay=5))
    t0 = time.monotonic()
    result = run("chat", "-m", "llama3.2", "hi", "--timeout", "0.3", db=db)
    assert time.monotonic() - t0 < 3
    assert result.exit_code == 0, result.output
    assert result.stdout == "The sky is blue.\n"
    assert "[aicortex] one failed: " in result.stderr and "first-token" in result.stderr


def test_chat_json_events(two_fakes, db):
    one, two = two_fakes
    one.push(Script(tokens=REPLY, drop_after=2))
    result = run("chat", "-m", "llama3.2", "hi", "--json", db=db)
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in result.stdout.splitlines()]
    types = [e["type"] for e in events]
    assert types[0] == "start" and types[-1] == "end"
    assert "error" in types and "meta" in types
    assert "".join(e["content"] for e in events if e["type"] == "token") == "The sky is blue."
    assert set(events[0]) == {"type", "content", "index", "tool_name", "tool_args", "tool_result", "meta", "timestamp", "server", "attempt", "logprobs"}
    assert events[-1]["server"] == two.url


def test_chat_ctrl_c_exits_130_and_closes_the_stream(db):
    with FakeOllama(models=["llama3.2"]) as fake:
        fake.default_script = Script(tokens=("first", " second"), stall_after=1, stall=30)
        add(db, fake.url, "fake")
        proc = subprocess.Popen(
            [sys.executable, "-m", "aicortex", "chat", "-m", "llama3.2", "hi", "--db", str(db)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        try:
            assert os.read(proc.stdout.fileno(), 5) == b"first"
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 130, err
        assert b"Traceback" not in err and b"Aborted" not in err
        assert fake.wait_for_disconnect(timeout=2)


# -- formatting ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "ago,text", [(None, "never"), (0.4, "0s ago"), (12.9, "12s ago"), (125, "2m ago"), (7300, "2h ago"), (3 * 86400, "3d ago")]
)
def test_humanize_ago(ago, text):
    now = 1_000_000.0
    assert humanize_ago(None if ago is None else now - ago, now) == text


def test_format_table_aligns_columns():
    assert format_table(["a", "bb"], [("xxx", None), ("y", 2)]).splitlines() == [
        "a    bb",
        "---  --",
        "xxx",
        "y    2",
    ]


def test_bench_measures_each_server_and_stores_the_figures(tmp_path):
    from aicortex import Registry

    db = tmp_path / "bench.db"
    with FakeOllama(models=["llama3.2"], script=Script(tokens=("1", " 2", " 3", " 4"), token_delay=0.005)) as a, \
            FakeOllama(models=["llama3.2"]) as b:
        b.default_script = Script(status=500)
        reg = Registry(db, seed=False)
        reg.add(a.url, name="a")
        reg.add(b.url, name="b")
        reg.close()
        result = CliRunner().invoke(cli, ["bench", "-m", "llama3.2", "--runs", "3", "--db", str(db)])
        assert result.exit_code == 0, result.output
        lines = result.stdout.splitlines()
        assert lines[0].split()[:3] == ["name", "url", "ok"]
        row_a = next(ln for ln in lines if ln.startswith("a "))
        row_b = next(ln for ln in lines if ln.startswith("b "))
        assert "3/3" in row_a and "0/3" in row_b and "HTTP 500" in row_b
        assert len(a.chat_requests) == 3 and len(b.chat_requests) == 3  # pinned: no failover between them
        with Registry(db, seed=False) as reg:
            stored = reg.bench_results("llama3.2")
            assert stored[a.url]["ok"] == 3 and stored[a.url]["ttft_p50_s"] > 0 and stored[a.url]["tps_p50"] > 0
            assert reg.health(a.url, "llama3.2").successes == 3
        as_json = CliRunner().invoke(cli, ["bench", "-m", "llama3.2", "--runs", "1", "--json", "--db", str(db)])
        assert as_json.exit_code == 0 and json.loads(as_json.stdout)[0]["server"] == a.url


# -- fleet operations -------------------------------------------------------------------------
def test_ps_table_json_and_a_down_server(two_fakes, db):
    one, two = two_fakes
    add(db, closed_port_url(), "dead")
    two.loaded = []
    result = run("ps", db=db)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["server", "model", "size", "vram", "context", "expires"]
    assert [line.split()[:2] for line in lines[2:]] == [["one", "llama3.2:latest"], ["one", "qwen3:8b"]]
    assert "4096" in lines[2] and "887.4 MB" in lines[2] and "in 4m" in lines[2]
    assert "down: dead" in result.stderr and "refused" in result.stderr
    data = json.loads(run("ps", "--json", "--server", "two", db=db).stdout)
    assert data == {"models": [], "errors": {}}


def test_ps_every_server_down_exits_1(db):
    add(db, closed_port_url(), "dead")
    result = run("ps", db=db)
    assert result.exit_code == 1 and "no server answered" in result.stderr


def test_show_summary_and_json(two_fakes, db):
    one, _ = two_fakes
    result = run("show", "llama3.2", db=db)
    assert result.exit_code == 0, result.output
    assert f"server:          one ({one.url})" in result.stdout
    assert "family:          llama" in result.stdout and "context length:  131072" in result.stdout
    data = json.loads(run("show", "llama3.2", "--json", db=db).stdout)
    assert data["server"] == one.url and "template" in data
    result = run("show", "nosuchmodel", db=db)
    assert result.exit_code == 1 and "no registered server lists model 'nosuchmodel'" in result.stderr


def test_pull_shows_progress_per_server_and_fails_for_one(two_fakes, db):
    one, two = two_fakes
    two.pull_errors = {"mistral": "pull model manifest: file does not exist"}
    result = run("pull", "mistral", db=db)
    assert result.exit_code == 1
    assert "[aicortex] one: pulling manifest" in result.stderr and "[aicortex] one: success" in result.stderr
    assert "% of " in result.stderr and "1 server of 2 failed" in result.stderr
    rows = [line.split()[:3] for line in result.stdout.splitlines()[2:]]
    assert rows == [["one", one.url, "pulled"], ["two", two.url, "failed"]]
    assert "file does not exist" in result.stdout
    assert "mistral:latest" in run("models", db=db).stdout.splitlines()


def test_pull_on_named_servers_json(two_fakes, db):
    one, two = two_fakes
    result = run("pull", "mistral", "--server", "two", "--json", db=db)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [{"server": two.url, "ok": True, "error": None, "status": "success", "name": "two"}]
    assert "mistral" in two.models and "mistral" not in one.models


def test_delete_and_copy_change_models(two_fakes, db):
    one, two = two_fakes
    result = run("copy", "llama3.2", "mine", db=db)
    assert result.exit_code == 0, result.output
    assert [line.split()[2] for line in result.stdout.splitlines()[2:]] == ["copied", "copied"]
    assert "mine:latest" in run("models", db=db).stdout.splitlines()
    result = run("delete", "mine", "--server", "one", db=db)
    assert result.exit_code == 0, result.output
    assert "mine" not in one.models and "mine" in two.models
    result = run("delete", "qwen3:8b", "--server", "two", db=db)
    assert result.exit_code == 1 and "not found" in result.stdout


def test_warm_and_unload_change_what_is_loaded(two_fakes, db):
    one, two = two_fakes
    one.loaded, two.loaded = [], []
    result = run("warm", "llama3.2", "--keep-alive", "600", db=db)
    assert result.exit_code == 0, result.output
    assert one.loaded == ["llama3.2"] and two.loaded == []
    assert [r.body for r in one.requests if r.path == "/api/generate"][-1]["keep_alive"] == 600
    result = run("warm", "llama3.2", "--server", "two", "--json", db=db)
    assert json.loads(result.stdout)[0]["ok"] is True and two.loaded == ["llama3.2"]
    result = run("unload", "llama3.2", db=db)
    assert result.exit_code == 0, result.output
    assert [line.split()[2] for line in result.stdout.splitlines()[2:]] == ["unloaded", "unloaded"]
    assert one.loaded == [] and two.loaded == []
    result = run("unload", "llama3.2", db=db)
    assert result.exit_code == 0 and "llama3.2 is loaded nowhere." in result.stdout
