"""Dashboard triggers: the HTML pages under /api/ui, beside the JSON API and with its auth.

Each route hands its request to :mod:`shared.dashboard.pages`, where the pages are built.

* ``GET ui`` — the runs; ``GET ui/runs/{request_id}`` — one run with its live reward curve;
  ``GET ui/dead-letters`` — the dead letters with Resubmit; ``GET ui/models/{name}`` — one model.
* ``GET ui/live`` and ``GET ui/runs/{request_id}/live`` — the regions of those pages as JSON,
  polled by ``dashboard.js`` while something can still change.
* ``POST ui/runs/{request_id}/cancel`` and ``POST ui/dead-letters/{source}/{seq}/resubmit`` —
  checked against cross-site requests, then answered with a redirect back to the page.
* ``GET ui/static/{name}`` — the vendored CSS and JS (anonymous: they hold no data).
"""

from __future__ import annotations

import azure.functions as func

from shared.dashboard import pages

bp = func.Blueprint()


@bp.function_name("dashboard_runs")
@bp.route(route="ui", methods=["GET"])
def dashboard_runs(req: func.HttpRequest) -> func.HttpResponse:
    return pages.runs(req)


@bp.function_name("dashboard_runs_live")
@bp.route(route="ui/live", methods=["GET"])
def dashboard_runs_live(req: func.HttpRequest) -> func.HttpResponse:
    return pages.runs_live(req)


@bp.function_name("dashboard_run")
@bp.route(route="ui/runs/{request_id}", methods=["GET"])
def dashboard_run(req: func.HttpRequest) -> func.HttpResponse:
    return pages.run(req)


@bp.function_name("dashboard_run_live")
@bp.route(route="ui/runs/{request_id}/live", methods=["GET"])
def dashboard_run_live(req: func.HttpRequest) -> func.HttpResponse:
    return pages.run_live(req)


@bp.function_name("dashboard_model")
@bp.route(route="ui/models/{name}", methods=["GET"])
def dashboard_model(req: func.HttpRequest) -> func.HttpResponse:
    return pages.model(req)


@bp.function_name("dashboard_cancel")
@bp.route(route="ui/runs/{request_id}/cancel", methods=["POST"])
def dashboard_cancel(req: func.HttpRequest) -> func.HttpResponse:
    return pages.cancel(req)


@bp.function_name("dashboard_dead_letters")
@bp.route(route="ui/dead-letters", methods=["GET"])
def dashboard_dead_letters(req: func.HttpRequest) -> func.HttpResponse:
    return pages.dead_letters(req)


@bp.function_name("dashboard_resubmit")
@bp.route(route="ui/dead-letters/{source}/{sequence_number}/resubmit", methods=["POST"])
def dashboard_resubmit(req: func.HttpRequest) -> func.HttpResponse:
    return pages.resubmit(req)


@bp.function_name("dashboard_static")
@bp.route(route="ui/static/{name}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def dashboard_static(req: func.HttpRequest) -> func.HttpResponse:
    return pages.static_file(req)
