"""Fixtures of the relay's tests."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from orders.telemetry import OrderIdSpanProcessor

SPANS = InMemorySpanExporter()


@pytest.fixture
def spans() -> InMemorySpanExporter:
    """This process's tracer provider also records into :data:`SPANS`. OpenTelemetry
    allows one global provider per process, and another test may have installed it
    already (the CLI's ``orders publish`` does, run in-process): add to that one."""
    global _recording
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(OrderIdSpanProcessor())
        trace.set_tracer_provider(provider)
    if not _recording:
        provider.add_span_processor(SimpleSpanProcessor(SPANS))
        _recording = True
    SPANS.clear()
    return SPANS


_recording = False
