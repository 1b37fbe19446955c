"""OLLAMA_HOST grammar (as the official client parses it), URL validation, timeouts."""

import doctest

import pytest

import aicortex._config as config
from aicortex import ConfigError, InvalidURL, Timeouts


def test_parse_host_doctests():
    result = doctest.testmod(config)
    assert result.attempted >= 7 and result.failed == 0


@pytest.mark.parametrize(
    "url,expected",
    [
        ("http://GPU1:11434/", "http://gpu1:11434"),
        ("gpu1", "http://gpu1:11434"),
        ("https://box.example.org", "https://box.example.org:443"),
        ("http://[::1]:11434", "http://[::1]:11434"),
        ("127.0.0.1:8080", "http://127.0.0.1:8080"),
    ],
)
def test_normalize_url(url, expected):
    assert config.normalize_url(url) == expected


@pytest.mark.parametrize(
    "bad,why",
    [
        ("ftp://gpu1", "only http"),
        ("http://", "no host"),
        ("http://gpu1:notaport", "expected http"),
        ("http://gpu 1:11434", "spaces"),
        ("", "empty"),
        ("http://user:pw@gpu1", "credentials"),
        ("http://gp!u", "not a valid host"),
    ],
)
def test_bad_urls_say_what_is_wrong(bad, why):
    with pytest.raises(InvalidURL, match=why):
        config.normalize_url(bad)


def test_env_is_read_only_here(monkeypatch, tmp_path):
    monkeypatch.setenv("AICORTEX_DB", str(tmp_path / "x.db"))
    monkeypatch.setenv("AICORTEX_MODEL", "m1")
    monkeypatch.setenv("OLLAMA_HOST", "gpu7")
    assert config.default_registry_path() == tmp_path / "x.db"
    assert config.env_model() == "m1"
    assert config.env_ollama_host() == "http://gpu7:11434"
    monkeypatch.delenv("AICORTEX_DB")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert config.default_registry_path() == tmp_path / "data" / "aicortex" / "servers.db"


def test_timeouts():
    assert Timeouts.of(5).stall == 5 and Timeouts.of(5).deadline is None
    assert Timeouts.of({"connect": 1}).connect == 1
    assert Timeouts.of(None).first_token is None
    with pytest.raises(ConfigError):
        Timeouts(connect=-1)
    with pytest.raises(ConfigError):
        Timeouts.of({"bogus": 1})
