"""OpenTelemetry traces and metrics of aicortex requests (optional).

Install ``aicortex[otel]`` (``opentelemetry-api`` only) and configure an OpenTelemetry SDK
the usual way (``opentelemetry-sdk``, or ``opentelemetry-instrument``): every chat and
generate request then gives

* a span per request, ``"{operation} {model}"`` (kind ``CLIENT``), and under it a span per
  attempt, ``"{operation} {model} attempt"`` (kind ``CLIENT``), one for each server tried
  (failovers and hedges included), with their real start and end times;
* the client metrics ``gen_ai.client.operation.duration`` (s),
  ``gen_ai.client.operation.time_to_first_chunk`` (s) and ``gen_ai.client.token.usage``
  (``{token}``, ``gen_ai.token.type`` ``input`` / ``output``), one record per request
  (the time to first chunk for every request: aicortex always streams from Ollama, the
  caller's ``stream=False`` included).

Names and attributes follow the OpenTelemetry semantic conventions for generative AI,
version :data:`SEMCONV_VERSION` (status: Development, so they may change):
``gen_ai.operation.name`` (``chat``, or ``text_completion`` for ``generate``),
``gen_ai.provider.name`` (``ollama``), ``gen_ai.request.model``,
``gen_ai.usage.input_tokens`` / ``gen_ai.usage.output_tokens`` (Ollama's
``prompt_eval_count`` / ``eval_count``), ``gen_ai.response.finish_reasons`` (Ollama's
``done_reason``), ``gen_ai.response.time_to_first_chunk`` (TTFT, s), ``server.address``
and ``server.port`` of the Ollama server that answered (an attempt's own server on its
span), and ``error.type`` (the aicortex exception's class name) on what failed. aicortex
adds ``aicortex.attempt.number``, ``aicortex.attempt.mode``, ``aicortex.attempt.hedge``,
``aicortex.attempt.cancelled`` (a hedged race's loser) and ``aicortex.attempts``.

Without ``opentelemetry-api`` nothing is imported and nothing is done; with the API but
no SDK, OpenTelemetry's own no-op providers take the calls. Recording happens once, when
the request has ended, from the attempts the engine already keeps, so telemetry adds no
work to the token path. A telemetry failure never breaks a reply: it is logged on the
``"aicortex"`` logger and counted in :func:`errors`.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:  # pragma: no cover
    from ._session import ChatSession

__all__ = ["configure", "errors", "SEMCONV_VERSION"]

#: The version of the OpenTelemetry semantic conventions (GenAI) the names follow.
SEMCONV_VERSION = "1.41.0"
_SCHEMA_URL = f"https://opentelemetry.io/schemas/{SEMCONV_VERSION}"
_SCOPE = "aicortex"

logger = logging.getLogger("aicortex")

# Bucket boundaries the conventions advise for these histograms.
_DURATION_BUCKETS = [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92]
_TTFC_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0]
_TOKEN_BUCKETS = [4.0**i for i in range(14)]  # 1, 4, 16 ... 67108864


class _State:
    """What was loaded: ``api`` is ``None`` (not looked for yet), ``False`` (not
    installed, or turned off) or the instruments."""

    def __init__(self) -> None:
        self.api: Any = None
        self.enabled = True
        self.tracer_provider: Any = None
        self.meter_provider: Any = None
        self.errors = 0
        self.logged = False


_state = _State()


def configure(*, tracer_provider: Any = None, meter_provider: Any = None, enabled: bool = True) -> None:
    """Choose where aicortex's spans and metrics go.

    Args:
        tracer_provider: an OpenTelemetry ``TracerProvider`` (default: the global one,
            ``opentelemetry.trace.get_tracer_provider()``).
        meter_provider: a ``MeterProvider`` (default: the global one).
        enabled: ``False`` records nothing at all.

    Takes effect for the requests that end after the call. Never raises.
    """
    _state.tracer_provider, _state.meter_provider, _state.enabled = tracer_provider, meter_provider, enabled
    _state.api = None  # look again, with these providers


def errors() -> int:
    """How many times recording telemetry failed (each was logged on ``"aicortex"``)."""
    return _state.errors


class _Api:
    """The OpenTelemetry API objects aicortex uses, loaded on first use."""

    def __init__(self) -> None:
        from opentelemetry import metrics, trace

        self.trace = trace
        self.tracer = trace.get_tracer(_SCOPE, _version(), tracer_provider=_state.tracer_provider, schema_url=_SCHEMA_URL)
        meter = metrics.get_meter(_SCOPE, _version(), meter_provider=_state.meter_provider, schema_url=_SCHEMA_URL)
        self.duration = _histogram(meter, "gen_ai.client.operation.duration", "s", "GenAI operation duration.", _DURATION_BUCKETS)
        self.ttfc = _histogram(
            meter, "gen_ai.client.operation.time_to_first_chunk", "s",
            "Time to receive the first chunk, from when the client issues the request.", _TTFC_BUCKETS,
        )
        self.tokens = _histogram(meter, "gen_ai.client.token.usage", "{token}", "Number of input and output tokens used.", _TOKEN_BUCKETS)


def _version() -> str:
    from ._version import __version__

    return __version__


def _histogram(meter: Any, name: str, unit: str, description: str, buckets: list[float]) -> Any:
    try:
        return meter.create_histogram(name, unit=unit, description=description, explicit_bucket_boundaries_advisory=buckets)
    except TypeError:  # pragma: no cover - an API older than the bucket advice (1.23)
        return meter.create_histogram(name, unit=unit, description=description)


def _api() -> Any:
    api = _state.api
    if api is None:
        if not _state.enabled:
            api = False
        else:
            try:
                api = _Api()
            except ImportError:
                api = False
        _state.api = api
    return api


def _usage_attrs(usage: Any) -> dict[str, Any]:
    """The GenAI usage attributes of a reply's server-reported figures
    (``gen_ai.usage.input_tokens`` / ``output_tokens``, ``gen_ai.response.finish_reasons``);
    ``{}`` for ``None``."""
    attrs: dict[str, Any] = {}
    if usage is None:
        return attrs
    if usage.prompt_eval_count is not None:
        attrs["gen_ai.usage.input_tokens"] = usage.prompt_eval_count
    if usage.eval_count is not None:
        attrs["gen_ai.usage.output_tokens"] = usage.eval_count
    if usage.done_reason:
        attrs["gen_ai.response.finish_reasons"] = [usage.done_reason]
    return attrs


def record_request(s: "ChatSession") -> None:
    """Record the spans and metrics of the request ``s`` once it ended (the drivers call
    this from their ``finally``). Never raises."""
    if _state.api is False or s.started_at is None or s.recorded:
        return
    s.recorded = True
    try:
        api = _api()
        if api:
            _record(api, s, time.time())
    except Exception as exc:  # telemetry never hurts a reply
        _state.errors += 1
        if not _state.logged:
            _state.logged = True
            logger.warning("aicortex: recording OpenTelemetry data failed (replies go on): %r", exc)
        else:
            logger.debug("aicortex: recording OpenTelemetry data failed again: %r", exc)


def _server(url: str | None) -> dict[str, Any]:
    if not url:
        return {}
    parts = urlsplit(url)
    attrs: dict[str, Any] = {"server.address": parts.hostname or url}
    try:
        port = parts.port
    except ValueError:
        port = None
    attrs["server.port"] = port if port is not None else (443 if parts.scheme == "https" else 80)
    return attrs


def _ns(unix_s: float) -> int:
    return int(unix_s * 1e9)


def _record(api: Any, s: "ChatSession", now: float) -> None:
    trace = api.trace
    operation = "text_completion" if s.endpoint == "generate" else "chat"
    base = {"gen_ai.operation.name": operation, "gen_ai.provider.name": "ollama", "gen_ai.request.model": s.model}
    attrs: dict[str, Any] = dict(base)
    error = s.fatal
    usage = s.usage
    if s.complete:
        attrs.update(_server(s.server))
        attrs.update(_usage_attrs(usage))
    if s.ttft_s is not None:
        attrs["gen_ai.response.time_to_first_chunk"] = s.ttft_s
    if error is not None:
        attrs["error.type"] = type(error).__name__
    attempts = s.attempts
    attrs["aicortex.attempts"] = len(attempts)
    if s.closed_early:
        attrs["aicortex.closed_early"] = True
    start = s.started_at
    assert start is not None
    span = api.tracer.start_span(f"{operation} {s.model}", kind=trace.SpanKind.CLIENT, attributes=attrs, start_time=_ns(start))
    if error is not None:
        span.set_status(trace.Status(trace.StatusCode.ERROR, str(error)[:300]))
    context = trace.set_span_in_context(span)
    for a in attempts if span.is_recording() else ():  # no SDK: the children would not record either
        a_attrs: dict[str, Any] = {
            **base, **_server(a.server), "aicortex.attempt.number": a.number, "aicortex.attempt.mode": a.mode,
        }
        if a.hedge:
            a_attrs["aicortex.attempt.hedge"] = True
        if a.cancelled:
            a_attrs["aicortex.attempt.cancelled"] = True
        if a.ttft_s is not None:
            a_attrs["gen_ai.response.time_to_first_chunk"] = a.ttft_s
        if a.error is not None:
            a_attrs["error.type"] = type(a.error).__name__
        elif a.ok and s.complete and a.server == s.server:
            a_attrs.update(_usage_attrs(usage))
        child = api.tracer.start_span(
            f"{operation} {s.model} attempt", context=context, kind=trace.SpanKind.CLIENT, attributes=a_attrs,
            start_time=_ns(a.started_at),
        )
        if a.error is not None:
            child.set_status(trace.Status(trace.StatusCode.ERROR, str(a.error)[:300]))
        child.end(end_time=_ns(a.started_at + a.elapsed_s))
    span.end(end_time=_ns(now))
    # Metrics: one record per request, with the attributes the conventions name.
    m_attrs = dict(base)
    if s.complete:
        m_attrs.update(_server(s.server))
    if error is not None:
        m_attrs["error.type"] = type(error).__name__
    api.duration.record(max(0.0, now - start), m_attrs)
    if s.ttft_s is not None:
        api.ttfc.record(s.ttft_s, m_attrs)
    if usage is not None and s.complete:
        if usage.prompt_eval_count is not None:
            api.tokens.record(usage.prompt_eval_count, {**m_attrs, "gen_ai.token.type": "input"})
        if usage.eval_count is not None:
            api.tokens.record(usage.eval_count, {**m_attrs, "gen_ai.token.type": "output"})
