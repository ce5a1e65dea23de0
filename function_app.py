"""rlq's Azure Functions app (Python v2 model). The same file runs in Azure and under `rlq serve`."""

import azure.functions as func

from functions import dashboard, http_api, intake, notifier, poller

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
for blueprint in (intake.bp, poller.bp, notifier.bp, http_api.bp, dashboard.bp):
    app.register_functions(blueprint)
