"""The registry: CRUD, validation, seeding, refresh results, corrupt files, sharing.

Tests taking ``registry`` run once per store: SQLite (in memory) and PostgreSQL (a fresh
database on the suite's own server, see conftest's ``pg_server``)."""

import sqlite3

import pytest
import sqlite_utils

from aicortex import ConfigError, InvalidURL, ModelEntry, Registry, RegistryError


@pytest.fixture(params=["sqlite", "postgres"])
def registry(request):
    """A fresh, unseeded registry: SQLite in memory, then PostgreSQL."""
    reg = Registry.memory() if request.param == "sqlite" else Registry(request.getfixturevalue("pg_url"), seed=False)
    yield reg
    reg.close()


def _scalar(registry, sql):
    """The first column of the first row of ``sql``, on either store."""
    with registry._wrap():
        return next(iter(next(iter(registry.db.query(sql))).values()))


def _columns(registry, table):
    if registry.path is None and registry.__class__ is not Registry:  # PostgreSQL
        sql = f"select string_agg(column_name, ',') from information_schema.columns where table_schema = 'aicortex' and table_name = '{table}'"
        return set(_scalar(registry, sql).split(","))
    return {c.name for c in registry.db[table].columns}


def test_add_list_enable_disable_remove(registry):
    a = registry.add("http://GPU1:11434/", name="gpu1", priority=5)
    b = registry.add("gpu2")
    assert (a.url, a.name, a.priority, a.enabled, a.status) == ("http://gpu1:11434", "gpu1", 5, True, "unknown")
    assert b.name == "gpu2:11434"
    assert [s.name for s in registry.servers()] == ["gpu1", "gpu2:11434"]  # priority first
    registry.disable("gpu1")
    assert [s.name for s in registry.servers(enabled_only=True)] == ["gpu2:11434"]
    assert registry.enable("http://gpu1:11434").enabled
    assert registry.remove("gpu2:11434").url == "http://gpu2:11434"
    assert [s.name for s in registry.servers()] == ["gpu1"]


def test_bad_input_is_refused_and_loses_nothing(registry):
    registry.add("http://gpu1:11434", name="gpu1")
    with pytest.raises(InvalidURL, match="only http"):
        registry.add("ftp://x")
    with pytest.raises(RegistryError, match="already registered"):
        registry.add("http://gpu1:11434")
    with pytest.raises(RegistryError, match="already registered"):
        registry.add("http://other:1", name="gpu1")
    with pytest.raises(RegistryError, match="no registered server 'nope'.*gpu1"):
        registry.remove("nope")
    assert [s.url for s in registry.servers()] == ["http://gpu1:11434"]


def test_refresh_results_models_and_matching(registry):
    registry.add("http://a:1", name="a")
    registry.add("http://b:1", name="b", priority=1)
    registry.record_refresh("a", version="0.12.6", models=[ModelEntry("llama3.2:latest", digest="d1", size=10)],
                            loaded=["llama3.2:latest"], latency_s=0.01)
    registry.record_refresh("b", version="0.12.6", models=[ModelEntry("llama3.2:latest"), ModelEntry("qwen3:8b")])
    assert registry.models() == ["llama3.2:latest", "qwen3:8b"]
    pairs = registry.model_entries("llama3.2")  # ":latest" is optional
    assert [(s.name, e.loaded) for s, e in pairs] == [("b", False), ("a", True)]
    a = registry.get("a")
    assert (a.status, a.version, a.models, a.loaded) == ("up", "0.12.6", ("llama3.2:latest",), ("llama3.2:latest",))
    # A failed probe marks the server down and keeps its model list.
    registry.record_refresh("a", error="cannot connect")
    a = registry.get("a")
    assert (a.status, a.last_error, a.models) == ("down", "cannot connect", ("llama3.2:latest",))
    registry.disable("b")
    assert registry.models() == ["llama3.2:latest"]
    assert registry.last_refresh_at() is not None


def test_file_registry_is_created_in_wal_mode_and_shared(db_path):
    with Registry(db_path, seed=False) as r1:
        r1.add("http://a:1", name="a")
        assert r1.db.journal_mode == "wal"
        with Registry(db_path, seed=False) as r2:
            assert [s.name for s in r2.servers()] == ["a"]
            r2.add("http://b:1", name="b")
        assert [s.name for s in r1.servers()] == ["a", "b"]


def test_seeded_once_with_ollama_host(db_path, monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", "gpu9:8000")
    with Registry(db_path) as reg:
        assert [s.url for s in reg.servers()] == ["http://gpu9:8000"]
        reg.remove("http://gpu9:8000")
    with Registry(db_path) as reg:
        assert reg.servers() == []  # removing the seed is respected


def test_default_path_comes_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("AICORTEX_DB", str(tmp_path / "env.db"))
    with Registry() as reg:
        assert reg.path == tmp_path / "env.db"
        assert [s.url for s in reg.servers()] == ["http://127.0.0.1:11434"]
    assert (tmp_path / "env.db").exists()


def test_a_file_that_is_not_sqlite_is_a_clear_error_and_left_untouched(tmp_path):
    path = tmp_path / "servers.db"
    content = b"this is my shopping list, not a database\n" * 20
    path.write_bytes(content)
    with pytest.raises(RegistryError, match="not an SQLite database.*left untouched"):
        Registry(path)
    assert path.read_bytes() == content


def test_registry_stores_no_secret_columns(registry):
    cols = {c for t in ("servers", "models", "meta", "health", "bench") for c in _columns(registry, t)}
    assert {"url", "headers_env", "ewma_ttft_s"} <= cols
    assert not {"token", "password", "api_key", "authorization"} & cols
    with pytest.raises(InvalidURL, match="credentials"):
        registry.add("http://user:secret@gpu1:11434")


def test_schema_is_managed_by_migrations(db_path):
    Registry(db_path, seed=False).close()
    conn = sqlite3.connect(db_path)
    names = [r[0] for r in conn.execute("select name from _sqlite_migrations where migration_set='aicortex'")]
    conn.close()
    assert names and names[0] == "m001_servers_and_models"


# -- create=False: tools that only read never create a registry ----------------------------------
def test_create_false_on_a_missing_file_is_an_error_and_creates_nothing(tmp_path):
    path = tmp_path / "no" / "such" / "servers.db"
    with pytest.raises(RegistryError, match=r"no registry at .*servers\.db: add a server first with `aicortex servers add URL`"):
        Registry(path, create=False)
    assert not (tmp_path / "no").exists()
    (tmp_path / "no").mkdir()
    with pytest.raises(RegistryError, match="no registry at"):
        Registry(tmp_path / "no" / "servers.db", create=False)
    assert list((tmp_path / "no").iterdir()) == []


def test_create_false_opens_an_existing_registry(db_path):
    with Registry(db_path, seed=False) as reg:
        reg.add("http://a:1", name="a")
    with Registry(db_path, create=False, seed=False) as reg:
        assert [s.name for s in reg.servers()] == ["a"]
        reg.add("http://b:1", name="b")  # read-write, only not created


def test_seeded_says_what_the_constructor_registered(db_path, monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", "gpu9:8000")
    with Registry(db_path) as reg:
        assert reg.seeded == "http://gpu9:8000"
    with Registry(db_path) as reg:
        assert reg.seeded is None  # once per file
    with Registry(db_path.with_name("other.db"), seed=False) as reg:
        assert reg.seeded is None and reg.servers() == []


# -- a URL where a registry path is expected ----------------------------------------------------
@pytest.mark.parametrize("given", ["http://gpu1:11434", "HTTPS://user:s3cr3t@gpu1"])
def test_registry_given_a_url_is_a_config_error_not_a_file(tmp_path, monkeypatch, given):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"is a server URL, not a registry file: use Client\(.*Registry\.memory\(\)") as info:
        Registry(given)
    assert "s3cr3t" not in str(info.value)
    monkeypatch.setenv("AICORTEX_DB", given)
    with pytest.raises(ConfigError, match="is a server URL"):
        Registry()
    assert list(tmp_path.iterdir()) == []  # no "http:" folder, no file


# -- a Database the caller passed stays the caller's ---------------------------------------------
def test_close_leaves_a_callers_database_open():
    db = sqlite_utils.Database(memory=True)
    reg = Registry(db, seed=False)
    reg.add("http://a:1", name="a")
    reg.close()
    assert db.execute("select name from servers").fetchall() == [("a",)]  # still open
    with Registry(":memory:", seed=False) as own:
        conn = own.db.conn
    with pytest.raises(sqlite3.ProgrammingError):
        conn.execute("select 1")  # the registry's own connection is closed


# -- a server's echoed error text is cut before it is stored --------------------------------------
def test_long_server_errors_are_cut_before_they_are_stored(registry):
    from aicortex._config import MAX_ERROR_CHARS
    from aicortex._health import Health

    registry.add("http://a:1", name="a")
    page = "<html>" + "x" * 50_000
    registry.record_error("a", page)
    stored = registry.get("a").last_error
    assert len(stored) == MAX_ERROR_CHARS and stored.endswith("…") and stored.startswith("<html>")
    registry.record_refresh("a", error=page)
    assert len(registry.get("a").last_error) == MAX_ERROR_CHARS
    returned = registry.update_health("a", "", lambda h: Health(failures=1, last_error=page))
    assert len(returned.last_error) == MAX_ERROR_CHARS
    assert len(registry.health("a").last_error) == MAX_ERROR_CHARS
    registry.update_health("a", "m", lambda h: Health(last_error="short"))
    assert registry.health("a", "m").last_error == "short"


# -- models() and Ollama's ":latest" rule -------------------------------------------------------
def test_models_in_follows_the_latest_rule(registry):
    from aicortex._models import ModelList

    registry.add("http://a:1", name="a")
    registry.record_refresh("a", models=[ModelEntry("llama3.2:latest"), ModelEntry("qwen3"), ModelEntry("phi4:14b")])
    names = registry.models()
    assert isinstance(names, ModelList)
    assert names == ["llama3.2:latest", "phi4:14b", "qwen3"]  # the names as listed
    assert "llama3.2" in names and "llama3.2:latest" in names
    assert "qwen3:latest" in names and "qwen3" in names
    assert "phi4:14b" in names and "phi4" not in names and "llama3" not in names
    assert 3 not in names


# -- per-server headers, by environment variable name (m004) --------------------------------------
def test_headers_env_is_stored_as_names_never_values(registry, monkeypatch):
    monkeypatch.setenv("GPU1_TOKEN", "Bearer s3cr3t")
    s = registry.add("http://gpu1:11434", name="gpu1", headers_env={"Authorization": "GPU1_TOKEN"})
    assert s.headers_env == {"Authorization": "GPU1_TOKEN"}
    assert registry.add("http://gpu2:1", name="gpu2").headers_env == {}
    raw = _scalar(registry, "select headers_env from servers where name = 'gpu1'")
    assert raw == '{"Authorization": "GPU1_TOKEN"}' and "s3cr3t" not in raw
    assert registry.servers()[0].headers_env == {"Authorization": "GPU1_TOKEN"}
    s = registry.set_headers_env("gpu1", {"X-Api-Key": "GPU1_KEY", "Authorization": "GPU1_TOKEN"})
    assert s.headers_env == {"X-Api-Key": "GPU1_KEY", "Authorization": "GPU1_TOKEN"}
    assert registry.set_headers_env("http://gpu1:11434", None).headers_env == {}
    with pytest.raises(RegistryError, match="no registered server"):
        registry.set_headers_env("nosuch", {})


@pytest.mark.parametrize("refs", [{"Authorization": "Bearer s3cr3t"}, {"Bad Header": "T"}])
def test_headers_env_with_bad_names_is_refused_and_adds_nothing(registry, refs):
    with pytest.raises(ConfigError):
        registry.add("http://gpu1:11434", headers_env=refs)
    assert registry.servers() == []
    registry.add("http://gpu1:11434", name="gpu1")
    with pytest.raises(ConfigError):
        registry.set_headers_env("gpu1", refs)
    assert registry.get("gpu1").headers_env == {}


def test_m004_adds_headers_env_to_an_existing_registry(db_path):
    with Registry(db_path, seed=False) as reg:
        reg.add("http://a:1", name="a")
    conn = sqlite3.connect(db_path)  # make it a registry from before m004
    conn.execute("alter table servers drop column headers_env")
    conn.execute("delete from _sqlite_migrations where name = 'm004_server_headers_env'")
    conn.commit()
    conn.close()
    with Registry(db_path, create=False, seed=False) as reg:
        assert reg.get("a").headers_env == {}
        assert reg.set_headers_env("a", {"Authorization": "A_TOKEN"}).headers_env == {"Authorization": "A_TOKEN"}
