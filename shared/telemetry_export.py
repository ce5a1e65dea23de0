"""Where the telemetry goes: the OpenTelemetry SDK and its exporters, set up once per process.

The composition edge's half of :mod:`shared.telemetry` (which is the API only, and costs nothing
until this runs). ``function_app.py`` calls :func:`configure` when it is loaded, in Azure and
under ``rlq serve`` alike:

* ``APPLICATIONINSIGHTS_CONNECTION_STRING`` set (the Function App in Azure, infra/ sets it):
  ``azure.monitor.opentelemetry.configure_azure_monitor`` (traces, metrics and logs to Application
  Insights; the ``azure`` extra installs it);
* otherwise ``RLQ_OTEL_EXPORTER``: ``none`` (the default: no SDK, nothing exported), ``console``
  (spans, metric points and log records printed to stdout) or ``otlp`` (OTLP over HTTP to
  ``OTEL_EXPORTER_OTLP_ENDPOINT``, default http://localhost:4318; the ``otlp`` extra installs it).

The standard ``OTEL_*`` variables apply (``OTEL_SERVICE_NAME``, default ``rlq``;
``OTEL_METRIC_EXPORT_INTERVAL``, default 60000 ms; ``OTEL_BSP_SCHEDULE_DELAY``, ...).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from shared import telemetry
from shared.settings import Settings

log = logging.getLogger(__name__)

CONNECTION_STRING = "APPLICATIONINSIGHTS_CONNECTION_STRING"
# ``Authorization=AAD[;ClientId=<id>]``: ingestion with Entra ID (infra/modules/functionapp.bicep sets it;
# the Function App's identity holds Monitoring Metrics Publisher on the resource, roles.bicep)
AUTHENTICATION_STRING = "APPLICATIONINSIGHTS_AUTHENTICATION_STRING"
EXPORTERS = ("none", "console", "otlp")

_lock = threading.Lock()
_configured: str | None = None


def configure(settings: Settings) -> str:
    """Install the SDK and exporters the settings ask for, once per process; what was installed
    (``azure_monitor``, ``console``, ``otlp`` or ``none``). Log records carry ``request_id`` /
    ``run_id`` in every case."""
    global _configured
    with _lock:
        if _configured is not None:
            return _configured
        telemetry.install_log_fields()
        if os.environ.get(CONNECTION_STRING):
            from azure.monitor.opentelemetry import configure_azure_monitor

            configure_azure_monitor(resource=_resource(), credential=_entra_credential())
            _configured = "azure_monitor"
        elif settings.otel_exporter == "none":
            _configured = "none"
        else:
            _install_sdk(settings.otel_exporter)
            _configured = settings.otel_exporter
        if _configured != "none":
            log.info("telemetry exported to %s", _configured)
        return _configured


def _entra_credential() -> Any:
    """The managed identity the authentication string names (None: the connection string's key).

    The Functions host reads ``APPLICATIONINSIGHTS_AUTHENTICATION_STRING`` for its own telemetry;
    the distro in the worker does not, so it is handed the credential here."""
    parts = dict(p.split("=", 1) for p in os.environ.get(AUTHENTICATION_STRING, "").split(";") if "=" in p)
    if parts.get("Authorization", "").upper() != "AAD":
        return None
    from azure.identity import ManagedIdentityCredential

    client_id = parts.get("ClientId")
    return ManagedIdentityCredential(client_id=client_id) if client_id else ManagedIdentityCredential()


def _resource() -> Any:
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource

    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: "rlq"}
    return Resource.create(attributes)


def _install_sdk(exporter: str) -> None:
    from opentelemetry import metrics, trace
    from opentelemetry._logs import set_logger_provider
    from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    spans, points, records = _exporters(exporter)
    resource = _resource()
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(spans))
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(
        MeterProvider(resource=resource, metric_readers=[PeriodicExportingMetricReader(points)])
    )
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(BatchLogRecordProcessor(records))
    set_logger_provider(logger_provider)
    logging.getLogger().addHandler(LoggingHandler(logger_provider=logger_provider))


def _exporters(exporter: str) -> tuple[Any, Any, Any]:
    if exporter == "console":
        from opentelemetry.sdk._logs.export import ConsoleLogRecordExporter
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter(), ConsoleMetricExporter(), ConsoleLogRecordExporter()
    try:
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as err:
        raise RuntimeError(
            "RLQ_OTEL_EXPORTER=otlp needs opentelemetry-exporter-otlp-proto-http: pip install -e '.[otlp]'"
        ) from err
    return OTLPSpanExporter(), OTLPMetricExporter(), OTLPLogExporter()
