"""rlq's Azure Functions app (Python v2 model). The same file runs in Azure and under `rlq serve`."""

import azure.functions as func

from functions import dashboard, http_api, intake, notifier, poller
from shared.settings import get_settings
from shared.telemetry_export import configure as configure_telemetry

# Application Insights when APPLICATIONINSIGHTS_CONNECTION_STRING is set; else RLQ_OTEL_EXPORTER
configure_telemetry(get_settings())

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
for blueprint in (intake.bp, poller.bp, notifier.bp, http_api.bp, dashboard.bp):
    app.register_functions(blueprint)
