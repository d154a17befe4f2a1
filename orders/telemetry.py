"""OpenTelemetry for every process, configured by the standard ``OTEL_*`` variables.

One trace per order: the producer's ``traceparent`` is continued by the bridge,
whose Celery sends carry it (with W3C baggage) into every task, and every span
is tagged with the order's id (:data:`ORDER_ID`) from that baggage.

- ``OTEL_SDK_DISABLED=true``: no spans are recorded; context still propagates.
- ``OTEL_TRACES_EXPORTER``: ``otlp`` (default), ``console`` or ``none``.
  ``otlp`` exports only when an endpoint is set (``OTEL_EXPORTER_OTLP_ENDPOINT``
  or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``): a process started without one
  records spans (their ids still reach the logs) but neither exports nor
  retries a collector that is not there.
- ``OTEL_EXPORTER_OTLP_PROTOCOL`` (or ``..._TRACES_PROTOCOL``): ``http/protobuf``
  (default) or ``grpc``. The exporters read the other ``OTEL_EXPORTER_OTLP_*``
  variables (headers, timeouts, certificates) themselves.
- ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES``: the resource; each
  process type has its own default service name.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from opentelemetry import baggage, propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

from orders.settings import ConfigError

log = logging.getLogger(__name__)

# Span attribute and baggage entry naming the order a span works for.
ORDER_ID = "order.id"

_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
_PROTOCOL_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")

_provider: TracerProvider | None = None


class OrderIdSpanProcessor(SpanProcessor):
    """Tags every span with the order id carried in baggage, so spans created by
    instrumentations that know nothing about orders (Celery's) name it too."""

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        order_id = baggage.get_baggage(ORDER_ID, parent_context) or baggage.get_baggage(ORDER_ID)
        if order_id is not None:
            span.set_attribute(ORDER_ID, str(order_id))

    def on_end(self, span: ReadableSpan) -> None:
        pass


def setup_tracing(default_service_name: str) -> None:
    """Install this process's tracer provider once (after a fork, in the child).

    Raises:
        ConfigError: an unknown exporter or protocol (one line naming the variable).
    """
    global _provider
    check_tracing_config()
    if _provider is not None or _truthy(os.environ.get("OTEL_SDK_DISABLED")):
        return
    exporters = _exporters()
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: default_service_name}))
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(OrderIdSpanProcessor())
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _provider = provider


def shutdown_tracing() -> None:
    """Export what is buffered (a process that exits without this loses its last spans)."""
    if _provider is not None:
        _provider.shutdown()


def flush_tracing(timeout_s: float = 5.0) -> None:
    if _provider is not None:
        _provider.force_flush(int(timeout_s * 1000))


def with_order_id(order_id: str, ctx: Context | None = None) -> Context:
    """``ctx`` (default: the current context) carrying the order id as baggage."""
    return baggage.set_baggage(ORDER_ID, order_id, ctx)


def current_order_id() -> str | None:
    value = baggage.get_baggage(ORDER_ID)
    return None if value is None else str(value)


def ids_in_headers(headers: Mapping[str, object]) -> tuple[str | None, str | None]:
    """The order id (baggage) and trace id (``traceparent``) a message carries."""
    carrier = {k: v for k, v in headers.items() if isinstance(v, str)}
    ctx = propagate.extract(carrier)
    order_id = baggage.get_baggage(ORDER_ID, ctx)
    span_context = trace.get_current_span(ctx).get_span_context()
    trace_id = format(span_context.trace_id, "032x") if span_context.is_valid else None
    return (None if order_id is None else str(order_id)), trace_id


def current_trace_id() -> str | None:
    span_context = trace.get_current_span().get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else None


def check_tracing_config() -> None:
    """Raise :class:`ConfigError` now, in the process's main, for a value that
    :func:`setup_tracing` would refuse later (in a forked child, say)."""
    for name in _exporter_names():
        if name == "otlp":
            _otlp_protocol()


def _exporter_names() -> list[str]:
    names = [
        name.strip().lower()
        for name in os.environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")
        if name.strip()
    ]
    for name in names:
        if name not in {"otlp", "console", "none"}:
            raise ConfigError(
                f"invalid setting OTEL_TRACES_EXPORTER: {name!r} (otlp, console or none)"
            )
    return names


def _otlp_protocol() -> str:
    variable, protocol = next(
        ((v, os.environ[v].strip().lower()) for v in _PROTOCOL_VARIABLES if os.environ.get(v)),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
    )
    if protocol not in {"http/protobuf", "grpc"}:
        raise ConfigError(f"invalid setting {variable}: {protocol!r} (http/protobuf or grpc)")
    return protocol


def _exporters() -> list[SpanExporter]:
    exporters: list[SpanExporter] = []
    for name in _exporter_names():
        if name == "console":
            exporters.append(ConsoleSpanExporter())
        elif name == "otlp" and (otlp := _otlp_exporter()):
            exporters.append(otlp)
    return exporters


def _otlp_exporter() -> SpanExporter | None:
    if not any(os.environ.get(v, "").strip() for v in _ENDPOINT_VARIABLES):
        log.debug("no OTLP endpoint set: spans are not exported")
        return None
    if _otlp_protocol() == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcSpanExporter,
        )

        return GrpcSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes"}
