"""The OpenTelemetry SDK with its in-memory exporters, installed once for the test process.

The global providers can be set once per process: the first telemetry test sets them, every
later one reads the same exporter (cleared per test) and the same reader (delta temporality, so
each collection holds what happened since the last one).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import (
    Counter,
    Histogram,
    MeterProvider,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    UpDownCounter,
)
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shared import telemetry
from tests.core.conftest import settings, settings_overrides, twin, wired  # noqa: F401 - the core suite's fixtures, reused

_DELTA = dict.fromkeys(
    (Counter, UpDownCounter, Histogram, ObservableCounter, ObservableUpDownCounter, ObservableGauge),
    AggregationTemporality.DELTA,
)


@dataclass
class Sdk:
    spans: InMemorySpanExporter
    reader: InMemoryMetricReader

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def points(self) -> dict[str, list[tuple[dict[str, Any], Any]]]:
        """Each metric's points since the last call: (attributes, point)."""
        out: dict[str, list[tuple[dict[str, Any], Any]]] = {}
        data = self.reader.get_metrics_data()
        for rm in data.resource_metrics if data else []:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    for p in metric.data.data_points:
                        out.setdefault(metric.name, []).append((dict(p.attributes or {}), p))
        return out


_sdk: Sdk | None = None


@pytest.fixture
def sdk() -> Iterator[Sdk]:
    global _sdk
    if _sdk is None:
        spans, reader = InMemorySpanExporter(), InMemoryMetricReader(preferred_temporality=_DELTA)
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(spans))
        trace.set_tracer_provider(provider)
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
        assert trace.get_tracer_provider() is provider, "another tracer provider was set first"
        telemetry.install_log_fields()
        _sdk = Sdk(spans, reader)
    _sdk.spans.clear()
    _sdk.points()  # what earlier tests left
    yield _sdk
    _sdk.spans.clear()
