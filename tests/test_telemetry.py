"""OpenTelemetry: spans and metrics of real requests, read back from the SDK's in-memory
exporter and reader (opentelemetry-sdk is a test extra: these tests fail without it)."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from aicortex import telemetry
from aicortex.testing import Script

from conftest import FLEET_MODEL, FLEET_TOKENS, OrderedFleet


@pytest.fixture
def otel():
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    telemetry.configure(tracer_provider=tracer_provider, meter_provider=meter_provider)
    yield exporter, reader
    telemetry.configure()
    meter_provider.shutdown()
    tracer_provider.shutdown()


def _metrics(reader):
    points = {}
    for rm in reader.get_metrics_data().resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                points[m.name] = (m.unit, list(m.data.data_points))
    return points


def test_a_request_that_failed_over_once_gives_a_request_span_and_two_attempt_spans(client_kind, otel):
    exporter, reader = otel
    scripts = [Script(status=500, error="runner crashed"), Script(tokens=FLEET_TOKENS, prompt_eval_count=11)]
    fleet = OrderedFleet(client_kind, 2, scripts=scripts)
    try:
        reply = fleet.client.chat("Why is the sky blue?", model=FLEET_MODEL)
        assert reply.server == fleet.urls[1] and len(reply.attempts) == 2
    finally:
        fleet.close()
    spans = exporter.get_finished_spans()
    (request,) = [s for s in spans if s.parent is None]
    attempts = sorted((s for s in spans if s.parent is not None), key=lambda s: s.attributes["aicortex.attempt.number"])
    assert len(spans) == 3 and len(attempts) == 2
    assert request.name == f"chat {FLEET_MODEL}" and request.kind is SpanKind.CLIENT
    a = request.attributes
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.provider.name"] == "ollama"
    assert a["gen_ai.request.model"] == FLEET_MODEL
    assert a["gen_ai.usage.input_tokens"] == 11 and a["gen_ai.usage.output_tokens"] == len(FLEET_TOKENS)
    assert tuple(a["gen_ai.response.finish_reasons"]) == ("stop",)
    assert a["server.address"] == "127.0.0.1" and a["server.port"] == fleet.fakes[1].port
    assert a["gen_ai.response.time_to_first_chunk"] == pytest.approx(reply.ttft_s)
    assert a["aicortex.attempts"] == 2 and "error.type" not in a
    assert request.status.status_code is StatusCode.UNSET
    first, second = attempts
    assert all(s.parent.span_id == request.context.span_id and s.context.trace_id == request.context.trace_id for s in attempts)
    assert first.attributes["server.port"] == fleet.fakes[0].port and first.attributes["error.type"] == "HTTPStatusError"
    assert first.status.status_code is StatusCode.ERROR and "runner crashed" in first.status.description
    assert second.attributes["server.port"] == fleet.fakes[1].port and "error.type" not in second.attributes
    assert second.attributes["gen_ai.usage.output_tokens"] == len(FLEET_TOKENS)
    assert first.attributes["gen_ai.operation.name"] == second.attributes["gen_ai.operation.name"] == "chat"
    # real times: the attempts lie inside the request, one after the other
    assert request.start_time <= first.start_time <= first.end_time <= second.start_time <= second.end_time <= request.end_time
    points = _metrics(reader)
    unit, (duration,) = points["gen_ai.client.operation.duration"]
    assert unit == "s" and duration.count == 1 and duration.attributes["server.port"] == fleet.fakes[1].port
    unit, (ttfc,) = points["gen_ai.client.operation.time_to_first_chunk"]
    assert unit == "s" and ttfc.count == 1 and ttfc.sum == pytest.approx(reply.ttft_s)
    unit, tokens = points["gen_ai.client.token.usage"]
    assert unit == "{token}"
    assert {p.attributes["gen_ai.token.type"]: p.sum for p in tokens} == {"input": 11, "output": len(FLEET_TOKENS)}


def test_generate_and_a_failed_request(otel):
    exporter, _ = otel
    fleet = OrderedFleet("sync", 1, scripts=[Script(status=500)])
    try:
        with pytest.raises(Exception) as info:
            fleet.client.generate("hi", model=FLEET_MODEL)
    finally:
        fleet.close()
    (request,) = [s for s in exporter.get_finished_spans() if s.parent is None]
    assert request.name == f"text_completion {FLEET_MODEL}"
    assert request.attributes["error.type"] == type(info.value).__name__ == "AllServersFailed"
    assert request.status.status_code is StatusCode.ERROR and "server.address" not in request.attributes


def test_a_hedged_request_shows_the_cancelled_attempt(otel):
    from aicortex import HedgePolicy
    from aicortex._hedge import TTFTWindows

    exporter, _ = otel
    hedge = HedgePolicy(floor_s=0.05, ceiling_s=0.1, windows=TTFTWindows())
    scripts = [Script(tokens=FLEET_TOKENS, first_token_delay=5), Script(tokens=FLEET_TOKENS)]
    fleet = OrderedFleet("async", 2, scripts=scripts, hedge=hedge, timeout=10)
    try:
        fleet.client.chat("hi", model=FLEET_MODEL)
    finally:
        fleet.close()
    children = [s for s in exporter.get_finished_spans() if s.parent is not None]
    by_number = {s.attributes["aicortex.attempt.number"]: s.attributes for s in children}
    assert by_number[1]["aicortex.attempt.cancelled"] is True and "error.type" not in by_number[1]
    assert by_number[2]["aicortex.attempt.hedge"] is True


class _Broken:
    def get_tracer(self, *a, **kw):
        return self

    def start_span(self, *a, **kw):
        raise RuntimeError("exporter exploded")


def test_a_telemetry_failure_never_breaks_a_reply(client_kind, caplog):
    telemetry.configure(tracer_provider=_Broken())
    before = telemetry.errors()
    fleet = OrderedFleet(client_kind, 1)
    try:
        with caplog.at_level(logging.DEBUG, logger="aicortex"):
            assert fleet.client.chat("hi", model=FLEET_MODEL).text == "".join(FLEET_TOKENS)
            assert fleet.client.chat("hi", model=FLEET_MODEL, stream=True).text() == "".join(FLEET_TOKENS)
    finally:
        fleet.close()
        telemetry.configure()
    assert telemetry.errors() == before + 2
    assert any("OpenTelemetry" in r.getMessage() and "exporter exploded" in r.getMessage() for r in caplog.records)


def test_without_opentelemetry_nothing_is_imported_or_recorded(tmp_path):
    """``import aicortex`` never imports OpenTelemetry; without it a request records nothing."""
    code = (
        "import sys; sys.modules['opentelemetry'] = None\n"  # as if it were not installed
        "import aicortex\n"
        "from aicortex import telemetry\n"
        "from aicortex.testing import FakeOllama\n"
        "assert not [m for m in sys.modules if m.startswith('opentelemetry.')]\n"
        "with FakeOllama(models=['m']) as fake, aicortex.Client(fake.url) as c:\n"
        "    assert c.chat('hi', model='m').text\n"
        "assert telemetry._state.api is False and telemetry.errors() == 0\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_import_aicortex_does_not_import_opentelemetry():
    code = "import sys, aicortex; print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr
