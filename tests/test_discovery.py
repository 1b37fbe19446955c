"""Fleet discovery: concurrent probes of /api/version, /api/tags, /api/ps into the registry."""

from __future__ import annotations

import contextlib
import time

import pytest

from aicortex import Client, Registry, Timeouts
from aicortex.testing import FakeOllama, Script, blackhole_listener, closed_port_url

pytestmark = pytest.mark.timeout(60)


def test_refresh_stores_version_models_loaded_latency_and_marks_failures(registry):
    with FakeOllama(models=["llama3.2", "qwen3:8b"], loaded=["qwen3:8b"], version="0.12.7") as up:
        registry.add(up.url, name="up")
        registry.add(closed_port_url(), name="refused")
        with Client(registry, timeout=Timeouts.of(1)) as client:
            seen = []
            report = client.refresh(on_result=seen.append)
        assert (report.up, report.down) == (1, 1) and len(seen) == 2
        assert report.models == ["llama3.2:latest", "qwen3:8b"]
        s = registry.get("up")
        assert (s.status, s.version, s.models, s.loaded) == ("up", "0.12.7", ("llama3.2:latest", "qwen3:8b"), ("qwen3:8b",))
        assert s.probe_latency_s > 0 and s.last_seen_at > 0 and s.last_error is None
        down = registry.get("refused")
        assert down.status == "down" and "connection refused" in down.last_error and down.last_seen_at is None
        assert [p.path for p in up.requests] == ["/api/version", "/api/tags", "/api/ps"]


def test_a_server_that_goes_down_keeps_its_models_and_trips_its_breaker(registry):
    fake = FakeOllama(models=["llama3.2"]).start()
    registry.add(fake.url, name="s")
    with Client(registry, timeout=Timeouts.of(1)) as client:
        client.refresh()
        fake.stop()
        client.refresh()
        s = registry.get("s")
        assert s.status == "down" and s.models == ("llama3.2:latest",)
        assert registry.health(fake.url).failures == 1
        fake.start()
        client.refresh()
        assert registry.get("s").status == "up" and registry.health(fake.url).failures == 0
    fake.stop()


def test_a_server_listing_no_models_is_up_with_an_empty_list(registry):
    with FakeOllama(models=["m"], version="0.12.6") as fake:
        registry.add(fake.url, name="s")
        fake.models = []
        with Client(registry) as client:
            client.refresh()
        assert registry.get("s").status == "up" and registry.get("s").models == ()


def test_fifty_servers_ten_blackholed_are_probed_concurrently(registry):
    """10 servers whose connects hang cost about one connect timeout in all, not ten."""
    connect_s = 1.0  # the blackholes' cost; the real servers answer in milliseconds (a loaded machine: seconds)
    with contextlib.ExitStack() as stack:
        fakes = [stack.enter_context(FakeOllama(models=[f"m{i % 3}"])) for i in range(40)]
        holes = [stack.enter_context(blackhole_listener()) for _ in range(10)]
        for i, url in enumerate([f.url for f in fakes] + holes):
            registry.add(url, name=f"s{i}")
        with Client(registry, timeout=Timeouts(connect=connect_s), probe_timeout_s=15) as client:
            t0 = time.perf_counter()
            report = client.refresh(max_workers=64)
            elapsed = time.perf_counter() - t0
    assert (report.up, report.down) == (40, 10)
    assert all("connect timeout" in r.error for r in report.results if not r.ok)
    assert report.models == ["m0:latest", "m1:latest", "m2:latest"]
    # Serially this would be >= 10 connect timeouts; concurrently it is about one (the
    # bound leaves a loaded machine five timeouts of slack).
    assert elapsed < 6 * connect_s, elapsed


def test_stale_registry_is_refreshed_before_use_after_the_ttl(tmp_path):
    with FakeOllama(models=["llama3.2"], script=Script(tokens=("ok",))) as fake:
        reg = Registry(tmp_path / "r.db", seed=False)
        reg.add(fake.url)
        with Client(reg, refresh_ttl_s=0.2) as client:
            client.chat("q", model="llama3.2")  # never refreshed: refreshes first
            client.chat("q", model="llama3.2")  # fresh: no probe
            assert [r.path for r in fake.requests].count("/api/tags") == 1
            time.sleep(0.3)
            client.chat("q", model="llama3.2")  # older than the TTL: refreshed again
            assert [r.path for r in fake.requests].count("/api/tags") == 2
        reg.close()
