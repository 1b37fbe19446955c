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


# -- credentials never repeated in a message ---------------------------------------------------
@pytest.mark.parametrize(
    "bad",
    [
        "ftp://user:s3cr3t@gpu1",  # wrong scheme
        "http://user:s3cr3t@gpu1:11434",  # credentials
        "http://user:s3cr3t@gpu 1",  # a space
        "http://user:s3cr3t@gpu1:port",  # a bad port
        "http://user:s3/cr3t@gpu1",  # a "/" in the password: urlsplit sees port "s3"
        "http://user:s3#cr3t@gpu1",  # a "#" in the password
        "user:s3cr3t@gp!u",  # bare host
        "http://TOKEN_s3cr3t@gpu1",  # a token as the user name
    ],
)
def test_invalid_url_message_masks_the_password(bad):
    with pytest.raises(InvalidURL) as info:
        config.normalize_url(bad)
    message = str(info.value)
    assert "s3" not in message and "cr3t" not in message, message
    assert "***@" in message


def test_mask_url_keeps_the_user_name_and_host():
    assert config.mask_url("http://user:secret@host") == "http://user:***@host"
    assert config.mask_url("http://host:11434") == "http://host:11434"


@pytest.mark.parametrize(
    "value,expected",
    [("http://gpu1:11434", True), ("HTTPS://gpu1", True), (" http://x", True), ("servers.db", False),
     ("/tmp/http://x", False), ("http:/x", False), (None, False), (b"http://x", False)],
)
def test_looks_like_url(value, expected):
    assert config.looks_like_url(value) is expected


def test_short_error_cuts_long_server_text():
    assert config.short_error("refused") == "refused"
    cut = config.short_error("e" * 10_000)
    assert len(cut) == config.MAX_ERROR_CHARS and cut.endswith("…")
    assert config.short_error("x" * config.MAX_ERROR_CHARS) == "x" * config.MAX_ERROR_CHARS
    assert config.short_error("abcdef", limit=4) == "abc…"


# -- per-server headers, by environment variable name ------------------------------------------
def test_check_headers_env_keeps_names():
    assert config.check_headers_env(None) == {}
    assert config.check_headers_env({"Authorization": "GPU1_TOKEN", "X-Api-Key": "_k2"}) == {
        "Authorization": "GPU1_TOKEN", "X-Api-Key": "_k2"}


@pytest.mark.parametrize(
    "mapping,why",
    [
        ({"Bad Header": "T"}, "not a valid HTTP header name"),
        ({"Authorization:": "T"}, "not a valid HTTP header name"),
        ({"": "T"}, "not a valid HTTP header name"),
        ({"Authorization": "Bearer abc"}, "not a valid environment variable name"),
        ({"Authorization": "1TOKEN"}, "not a valid environment variable name"),
        ({"Authorization": ""}, "not a valid environment variable name"),
        ({"Authorization": "A", "authorization": "B"}, "given twice"),
        (["Authorization=A"], "must be a mapping"),
    ],
)
def test_check_headers_env_refuses_bad_names(mapping, why):
    with pytest.raises(ConfigError, match=why):
        config.check_headers_env(mapping)


def test_resolve_headers_reads_the_environment_at_call_time(monkeypatch):
    from aicortex import Server

    server = Server(url="http://gpu1:11434", name="gpu1", headers_env={"Authorization": "GPU1_TOKEN"})
    assert config.resolve_headers(Server(url="http://x:1", name="x")) == {}
    with pytest.raises(ConfigError, match=r"gpu1 \(http://gpu1:11434\).*Authorization.*GPU1_TOKEN.*not set"):
        config.resolve_headers(server)
    monkeypatch.setenv("GPU1_TOKEN", "Bearer one")
    assert config.resolve_headers(server) == {"Authorization": "Bearer one"}
    monkeypatch.setenv("GPU1_TOKEN", "Bearer two")  # read again, never cached
    assert config.resolve_headers(server) == {"Authorization": "Bearer two"}
    monkeypatch.setenv("GPU1_TOKEN", "")
    with pytest.raises(ConfigError, match="GPU1_TOKEN"):
        config.resolve_headers(server)
