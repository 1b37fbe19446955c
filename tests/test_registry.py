"""The SQLite registry: CRUD, validation, seeding, refresh results, corrupt files, sharing."""

import sqlite3

import pytest

from aicortex import InvalidURL, ModelEntry, Registry, RegistryError


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
    cols = {c.name for t in ("servers", "models", "meta") for c in registry.db[t].columns}
    assert not {"token", "password", "api_key", "authorization"} & cols
    with pytest.raises(InvalidURL, match="credentials"):
        registry.add("http://user:secret@gpu1:11434")


def test_schema_is_managed_by_migrations(db_path):
    Registry(db_path, seed=False).close()
    conn = sqlite3.connect(db_path)
    names = [r[0] for r in conn.execute("select name from _sqlite_migrations where migration_set='aicortex'")]
    conn.close()
    assert names and names[0] == "m001_servers_and_models"
