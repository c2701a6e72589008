"""OpenTelemetry traces of one delivery: received → job → handler → each Codat call and notification.

Off by default, and then free: no SDK is imported, `span` hands back one shared null context and
`traceparent` is None, so no job payload grows. `codat-relay serve|web|worker` turn it on from the
standard variables (`configure_from_env`): `OTEL_TRACES_EXPORTER=otlp` (OTLP/HTTP, configured by the
SDK's own `OTEL_EXPORTER_OTLP_*` variables) or `console` (both: `otlp,console`), `OTEL_SERVICE_NAME`
(default `codat-relay`), `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_SDK_DISABLED=true`.

Across the queue, the W3C trace context rides in the job's payload under `TRACE_KEY` (written by
service/queue.py, which builds every job row): the worker's job span is a child of the span that
enqueued it, in whichever process, so a delivery and the work it caused are one trace.
"""

from __future__ import annotations

import atexit
import contextlib
import os
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

TRACE_KEY = "traceparent"  # the job payload's key for the W3C `traceparent` of the span that enqueued it
EXPORTERS = ("otlp", "console")
DEFAULT_SERVICE_NAME = "codat-relay"
TRACER_NAME = "codat-relay"

SERVER, CLIENT, CONSUMER, INTERNAL = SpanKind.SERVER, SpanKind.CLIENT, SpanKind.CONSUMER, SpanKind.INTERNAL

_NOOP: AbstractContextManager[None] = contextlib.nullcontext()
_PROPAGATOR = TraceContextTextMapPropagator()
_tracer: trace.Tracer | None = None  # None: tracing is off


class TracingConfigError(ValueError):
    """An OTEL_* value codat-relay cannot act on: the message names the variable."""


def enabled() -> bool:
    return _tracer is not None


def use(provider: TracerProvider | None) -> None:
    """Trace into `provider` (tests hand in one with an in-memory exporter); None turns tracing off."""
    global _tracer
    _tracer = provider.get_tracer(TRACER_NAME) if provider is not None else None


def exporters_from_env(environ: Mapping[str, str]) -> list[str]:
    """The exporters OTEL_TRACES_EXPORTER names (none: tracing stays off)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = [n.strip().lower() for n in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    if names in ([], ["none"]):
        return []
    unknown = [n for n in names if n not in EXPORTERS]
    if unknown:
        raise TracingConfigError(
            f"OTEL_TRACES_EXPORTER: {', '.join(unknown)} is not one of {', '.join(EXPORTERS)} (or none)"
        )
    return names


def configure_from_env(environ: Mapping[str, str] | None = None) -> bool:
    """Turn tracing on as the OTEL_* variables say; whether it is on. Spans are exported in batches by
    a background thread, flushed at exit."""
    environ = os.environ if environ is None else environ
    names = exporters_from_env(environ)
    if not names:
        use(None)
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; an attribute given here would win.
    named = environ.get("OTEL_SERVICE_NAME") or "service.name=" in environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    provider = TracerProvider(resource=Resource.create({} if named else {"service.name": DEFAULT_SERVICE_NAME}))
    for name in names:
        exporter: SpanExporter
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()  # OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, _HEADERS, _TIMEOUT, …
        else:
            exporter = ConsoleSpanExporter()
        provider.add_span_processor(BatchSpanProcessor(exporter))
    atexit.register(provider.shutdown)
    use(provider)
    return True


def span(
    name: str, *, kind: SpanKind = INTERNAL, parent: object = None, attributes: Mapping[str, Any] | None = None
) -> AbstractContextManager[Any]:
    """A span around a block, made current (a child of the current one, or of `parent`, a `traceparent`
    string from a job payload or a request's headers); with tracing off, a shared null context."""
    if _tracer is None:
        return _NOOP
    context = None
    if isinstance(parent, str):
        context = _PROPAGATOR.extract({"traceparent": parent})
    elif isinstance(parent, Mapping):
        context = _PROPAGATOR.extract(parent)
    return _tracer.start_as_current_span(name, context=context, kind=kind, attributes=dict(attributes or {}))


def traceparent() -> str | None:
    """The W3C `traceparent` of the current span (None when tracing is off or no span is current)."""
    if _tracer is None:
        return None
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent")


def annotate(**attributes: Any) -> None:
    """Attributes of the current span (None values left out); nothing when tracing is off."""
    if _tracer is None:
        return
    current = trace.get_current_span()
    for key, value in attributes.items():
        if value is not None:
            current.set_attribute(key, value)


def failed(error: BaseException) -> None:
    """Mark the current span failed with `error` (for errors caught before they leave the span)."""
    if _tracer is None:
        return
    current = trace.get_current_span()
    current.record_exception(error)
    current.set_status(Status(StatusCode.ERROR, type(error).__name__))
