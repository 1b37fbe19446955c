"""Fleet operations (list, ps, show, pull, delete, copy, warm, unload) on both clients,
against real loopback FakeOllama servers; their pure pieces without sockets."""

from __future__ import annotations

import asyncio
import dataclasses
import threading

import pytest

from aicortex import (
    AllServersFailed,
    BadRequest,
    FleetModel,
    HTTPStatusError,
    LoadedModel,
    ModelNotFound,
    OpResult,
    ProtocolError,
    PullProgress,
    PullResult,
    Registry,
    ShowResult,
)
from aicortex._fleetops import PullReader, fleet_models, in_order, op_result
from aicortex._protocol import parse_ps, parse_ps_entries
from aicortex.testing import FakeOllama, closed_port_url

from conftest import make_client


@pytest.fixture
def fleet():
    """Two fakes: "a" (priority 10) with llama3.2 (loaded) and qwen3:8b; "b" with llama3.2."""
    with FakeOllama(models=["llama3.2", "qwen3:8b"], loaded=["llama3.2"]) as a, FakeOllama(models=["llama3.2"], loaded=[]) as b:
        reg = Registry.memory()
        reg.add(a.url, name="a", priority=10)
        reg.add(b.url, name="b")
        yield reg, a, b
        reg.close()


@pytest.fixture
def client(fleet, client_kind):
    reg, _, _ = fleet
    c = make_client(client_kind, reg)
    yield c
    c.close()


def statuses(events, url):
    return [p.status for p in events if p.server == url]


# -- list -----------------------------------------------------------------------------------------
def test_list_one_entry_per_model_with_its_servers(fleet, client):
    _, a, b = fleet
    models = client.list()
    assert [m.name for m in models] == ["llama3.2:latest", "qwen3:8b"]
    llama, qwen = models
    assert isinstance(llama, FleetModel)
    assert llama.servers == (a.url, b.url) and qwen.servers == (a.url,)
    assert llama.loaded_on == (a.url,) and llama.loaded and not qwen.loaded
    assert llama.size > 0 and llama.digest and llama.digests == (llama.digest,)
    assert llama.details["family"] == "llama"
    with pytest.raises(dataclasses.FrozenInstanceError):
        llama.name = "x"  # type: ignore[misc]


def test_fleet_models_merges_latest_and_keeps_differing_digests():
    from aicortex import ModelEntry, Server, Snapshot

    s1, s2 = Server(url="http://a:1", name="a"), Server(url="http://b:1", name="b")
    snap = Snapshot(
        servers=(s1, s2),
        entries={
            "m": [(s1, ModelEntry("m:latest", digest="d1", size=5, loaded=True)), (s2, ModelEntry("m", digest="d2", size=7))],
        },
    )
    (m,) = fleet_models(snap)
    assert (m.name, m.servers, m.size, m.digests, m.digest, m.loaded_on) == (
        "m:latest", ("http://a:1", "http://b:1"), 7, ("d1", "d2"), None, ("http://a:1",),
    )


# -- ps -------------------------------------------------------------------------------------------
def test_ps_is_live_and_reports_a_down_server(fleet, client_kind):
    reg, a, b = fleet
    dead = closed_port_url()
    reg.add(dead, name="dead")
    b.loaded = ["llama3.2"]
    with make_client(client_kind, reg) as c:
        report = c.ps()
    assert report.servers == (a.url, b.url, dead)
    assert sorted((m.server, m.name) for m in report) == sorted([(a.url, "llama3.2:latest"), (b.url, "llama3.2:latest")])
    assert list(report.errors) == [dead] and "refused" in report.errors[dead]
    m = report.models[0]
    assert isinstance(m, LoadedModel)
    assert m.size and m.size_vram == m.size and m.context_length == 4096 and m.expires_at and m.digest
    assert [x.server for x in report.where("llama3.2")] == [a.url, b.url]


def test_ps_of_named_servers(fleet, client):
    _, a, _ = fleet
    report = client.ps(["a"])
    assert report.servers == (a.url,) and len(report) == 1


def test_parse_ps_entries_turns_hostile_values_into_none():
    data = (
        b'{"models":[{"name":"a","size":-1,"size_vram":"x","expires_at":5,"context_length":1e999,"digest":7},'
        b'{"model":"b","size":10,"size_vram":true,"expires_at":"0001-01-01T00:00:00Z","context_length":2048},'
        b'{"name":null},{"name":"c","expires_at":"2024-06-04T14:38:31.83753-07:00"}]}'
    )
    a, b, c = parse_ps_entries(data, "http://s")
    assert a == LoadedModel(server="http://s", name="a")
    assert (b.name, b.size, b.size_vram, b.expires_at, b.context_length) == ("b", 10, None, None, 2048)
    assert c.expires_at == pytest.approx(1717537111.83753)
    assert parse_ps(data) == ["a", "b", "c"]  # unchanged: names only
    with pytest.raises(ProtocolError):
        parse_ps_entries(b'{"models": 3}', "http://s")


# -- show -----------------------------------------------------------------------------------------
def test_show_returns_the_reply_and_the_server(fleet, client):
    _, a, _ = fleet
    info = client.show("llama3.2")
    assert isinstance(info, ShowResult) and isinstance(info, dict)
    assert info.server == a.url and info.attempts == ()
    assert info["details"]["family"] == "llama" and "template" in info


def test_show_fails_over_from_a_server_that_errors(fleet, client):
    _, a, b = fleet
    client.refresh()
    a.models = ["qwen3:8b"]  # the registry still says "a" has llama3.2: a JSON 404 there
    info = client.show("llama3.2")
    assert info.server == b.url
    assert [att.server for att in info.attempts] == [a.url]
    assert "not found" in str(info.attempts[0].error)


def test_show_every_server_failing_and_unknown_model(fleet, client):
    _, a, b = fleet
    client.refresh()
    a.kill()
    b.kill()
    with pytest.raises(AllServersFailed) as err:
        client.show("llama3.2")
    assert [att.server for att in err.value.attempts] == [a.url, b.url]
    with pytest.raises(ModelNotFound):
        client.show("nope")


def test_in_order_raises_a_bad_request_at_once():
    flow = in_order(["u1", "u2"], lambda url, data: data)
    assert next(flow) == "u1"
    with pytest.raises(BadRequest):
        flow.send(BadRequest("HTTP 400: bad", server="u1", status_code=400, error="bad"))


# -- pull -----------------------------------------------------------------------------------------
def test_pull_progress_in_order_per_server_then_listed(fleet, client_kind):
    reg, a, b = fleet
    a.pull_delay = b.pull_delay = 0.005
    dead = closed_port_url()
    reg.add(dead, name="dead")
    events: list[PullProgress] = []
    threads = set()

    def seen(p):
        events.append(p)
        threads.add(threading.get_ident())

    with make_client(client_kind, reg) as c:
        results = c.pull("mistral", on_progress=seen)
        assert [r.server for r in results] == [a.url, b.url, dead]
        assert [r.ok for r in results] == [True, True, False]
        assert all(isinstance(r, PullResult) for r in results)
        assert results[0].status == "success" and "refused" in results[2].error
        for url in (a.url, b.url):
            order = statuses(events, url)
            assert order[0] == "pulling manifest" and order[-2:] == ["writing manifest", "success"]
            big = [p for p in events if p.server == url and p.total and p.total > 10**6]
            done = [p.completed or 0 for p in big]  # the first line of a layer has no "completed"
            assert done == sorted(done) and done[-1] == big[0].total
        assert "mistral" in c.models()
        assert a.url in c.list()[1].servers  # mistral:latest, listed by the refresh after the pull
    if client_kind == "sync":
        assert threads == {threading.get_ident()}  # progress came from the calling thread


def test_pull_in_stream_error_is_that_servers_result(fleet, client):
    _, a, b = fleet
    b.pull_errors = {"gemma3": "pull model manifest: file does not exist"}
    results = client.pull("gemma3", servers=["a", b.url])
    assert results[0] == PullResult(a.url, True, None, "success")
    assert results[1].ok is False and results[1].error == "pull model manifest: file does not exist"
    assert results[1].status == "pulling manifest"
    assert "gemma3" in a.models and "gemma3" not in b.models
    assert [s.url for s in client.list_model_servers("gemma3")] == [a.url]


def test_pull_reader_is_defensive():
    r = PullReader("u")
    assert r.line({"status": 5}) is None
    p = r.line({"status": "pulling x", "digest": 3, "total": -1, "completed": "x"})
    assert p == PullProgress("u", "pulling x")
    assert r.result() == PullResult("u", False, "the pull stream ended without a success line", "pulling x")
    assert r.line({"error": {"nested": 1}}) is None and r.done
    assert r.result().error == "{'nested': 1}"


def test_pull_progress_callback_error_is_raised(fleet, client_kind):
    reg, a, _ = fleet
    a.pull_delay = 0.01

    def boom(p):
        raise RuntimeError("stop")

    with make_client(client_kind, reg) as c:
        with pytest.raises(RuntimeError, match="stop"):
            c.pull("mistral", servers=["a"], on_progress=boom)


# -- delete and copy ------------------------------------------------------------------------------
def test_delete_removes_the_model_where_listed(fleet, client):
    _, a, b = fleet
    assert "llama3.2" in client.models()
    results = client.delete("llama3.2")
    assert results == [OpResult(a.url, True), OpResult(b.url, True)]
    assert "llama3.2" not in client.models()
    assert a.models == ["qwen3:8b"] and b.models == []


def test_delete_on_named_servers_and_errors_are_reported(fleet, client):
    _, a, b = fleet
    results = client.delete("qwen3:8b", servers=["b", "a"])
    assert results[0].server == b.url and not results[0].ok and "not found" in results[0].error
    assert results[1] == OpResult(a.url, True)
    assert "qwen3:8b" not in client.models()
    with pytest.raises(ModelNotFound):
        client.delete("nope")


def test_copy_adds_the_destination(fleet, client):
    _, a, b = fleet
    results = client.copy("llama3.2", "mine")
    assert [r.ok for r in results] == [True, True]
    assert "mine" in client.models()
    assert [s.url for s in client.list_model_servers("mine")] == [a.url, b.url]
    results = client.copy("qwen3:8b", "q2", servers=["b"])
    assert results[0].server == b.url and not results[0].ok and "not found" in results[0].error
    with pytest.raises(ModelNotFound):
        client.copy("nope", "x")


# -- warm and unload ------------------------------------------------------------------------------
def test_warm_loads_on_the_first_routing_candidate(fleet, client):
    _, a, b = fleet
    results = client.warm("qwen3:8b", keep_alive="10m")
    assert results == [OpResult(a.url, True)]
    assert a.loaded == ["llama3.2", "qwen3:8b"]
    body = [r.body for r in a.requests if r.path == "/api/generate"][-1]
    assert body == {"model": "qwen3:8b", "prompt": "", "stream": False, "keep_alive": "10m"}
    assert client.route("qwen3:8b").candidates[0].warm  # refreshed: routing sees it warm


def test_warm_fails_over_and_warms_named_servers(fleet, client):
    _, a, b = fleet
    client.refresh()
    a.kill()
    results = client.warm("llama3.2")
    assert [(r.server, r.ok) for r in results] == [(a.url, False), (b.url, True)]
    assert b.loaded == ["llama3.2"]


def test_warm_named_servers(fleet, client):
    _, a, b = fleet
    b.models.append("qwen3:8b")
    results = client.warm("qwen3:8b", servers=["a", "b"])
    assert [r.ok for r in results] == [True, True]
    assert "qwen3:8b" in a.loaded and b.loaded == ["qwen3:8b"]


def test_unload_where_ps_says_it_is_loaded(fleet, client):
    _, a, b = fleet
    b.loaded = ["llama3.2"]
    results = client.unload("llama3.2")
    assert [(r.server, r.ok) for r in results] == [(a.url, True), (b.url, True)]
    assert a.loaded == [] and b.loaded == []
    assert client.unload("llama3.2") == []  # loaded nowhere now
    body = [r.body for r in b.requests if r.path == "/api/generate"][-1]
    assert body["keep_alive"] == 0 and body["model"] == "llama3.2:latest"


def test_unload_named_server_only(fleet, client):
    _, a, b = fleet
    b.loaded = ["llama3.2"]
    assert client.unload("llama3.2", servers=["b"]) == [OpResult(b.url, True)]
    assert a.loaded == ["llama3.2"] and b.loaded == []


def test_op_result_reads_error_bodies():
    assert op_result("u", b"") == OpResult("u", True)
    assert op_result("u", b'{"done":true,"done_reason":"load"}') == OpResult("u", True)
    assert op_result("u", b'{"error":"boom"}') == OpResult("u", False, "boom")


# -- the streaming transports ---------------------------------------------------------------------
def _read_all_sync(url, **kw):
    from aicortex._transport import Transport

    t = Transport()
    try:
        return list(t.stream_lines(url, "POST", "/api/pull", {"model": "m"}, connect_timeout_s=2, read_timeout_s=5, **kw))
    finally:
        t.close()


def _read_all_async(url, **kw):
    from aicortex._aio import AsyncTransport

    async def main():
        t = AsyncTransport()
        try:
            return [obj async for obj in t.stream_lines(url, "POST", "/api/pull", {"model": "m"}, connect_timeout_s=2, read_timeout_s=5, **kw)]
        finally:
            await t.aclose()

    return asyncio.run(main())


@pytest.mark.parametrize("read_all", [_read_all_sync, _read_all_async], ids=["sync", "async"])
def test_stream_lines_bounds_lines_and_translates_errors(read_all):
    with FakeOllama(models=[]) as fake:
        lines = read_all(fake.url)
        assert lines[0] == {"status": "pulling manifest"} and lines[-1] == {"status": "success"}
        with pytest.raises(ProtocolError, match="longer than 40 bytes"):
            read_all(fake.url, max_line_bytes=40)
        fake.kill()
        with pytest.raises(Exception) as err:
            read_all(fake.url)
        assert "refused" in str(err.value)


@pytest.mark.parametrize("read_all", [_read_all_sync, _read_all_async], ids=["sync", "async"])
def test_stream_lines_http_error(read_all):
    with FakeOllama(models=[]) as fake:
        with pytest.raises(HTTPStatusError) as err:
            read_all(fake.url + "/nope")  # POST /nope/api/pull: a plain-text 404
        assert err.value.status_code == 404
