"""The dashboard's pages: server-rendered HTML under /api/ui, beside the JSON API and with its auth.

* ``GET ui`` — the runs; ``GET ui/runs/{request_id}`` — one run with its live reward curve;
  ``GET ui/dead-letters`` — the dead letters with Resubmit.
* ``GET ui/live`` and ``GET ui/runs/{request_id}/live`` — the regions of those pages as JSON,
  polled by ``dashboard.js`` while something can still change.
* ``POST ui/runs/{request_id}/cancel`` and ``POST ui/dead-letters/{source}/{seq}/resubmit`` —
  checked against cross-site requests (:mod:`shared.dashboard.csrf`), then answered with a
  redirect back to the page (post/redirect/get).
* ``GET ui/models/{name}`` — one model: its champion, its versions' evaluations over time, its
  champion changes (linked from the page of each run that registered a version).
* ``GET ui/static/{name}`` — the vendored CSS and JS (anonymous: they hold no data).

Every page goes through the service (``list``, ``get``, ``cancel``) and the dead-letter inbox of
the wiring, as the API and the CLI do; the service's errors become pages by the one error-tree →
HTTP table (:func:`shared.errors.http_answer`), the one the JSON API answers by. The triggers
that route to these pages are in ``functions/dashboard.py``. With a function key in the URL (``?code=``, the way a
browser carries one in Azure), every link, form and poll on the page carries it on.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import azure.functions as func

from shared.composition import wiring
from shared.contracts.models import ModelVersion
from shared.contracts.request import NAME_RE
from shared.contracts.run import RunState
from shared.core.intake import guess_request_id
from shared.dashboard import csrf
from shared.dashboard.charts import reward_svg, sparkline_svg
from shared.dashboard.render import render, render_block, static_files
from shared.dashboard.views import RunView, redact_notify, request_json, run_view
from shared.errors import InvalidRequest, NotFound, PermanentError, RlqError, http_answer

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
PORTAL_NAMES = {"ray": "Ray", "azureml": "Azure ML", "twin": "Twin"}
LIST_LIMIT = 100
LIST_POLL_MS = 5_000  # the runs list: a hundred records a poll, so less often than one run's page


class _Page:
    """Links for one request: the API's base path (whatever the route prefix) and the function key."""

    def __init__(self, req: func.HttpRequest) -> None:
        path = urlsplit(req.url).path
        i = path.find("/ui")
        while i >= 0 and path[i + 3 : i + 4] not in ("", "/"):
            i = path.find("/ui", i + 1)
        self.base = path[:i] if i >= 0 else "/api"
        self.code = req.params.get("code")
        self.token, self.set_cookie = csrf.page_token(req)

    def link(self, route: str, **params: Any) -> str:
        query = {k: v for k, v in params.items() if v not in (None, "")}
        if self.code:
            query["code"] = self.code
        return f"{self.base}/{route}" + (f"?{urlencode(query)}" if query else "")

    def static(self, name: str) -> str:
        return f"{self.base}/ui/static/{name}"

    def context(self, **extra: Any) -> dict[str, Any]:
        return {
            "link": self.link,
            "run_href": lambda request_id: _run_href(self, request_id),
            "model_href": lambda name: self.link(f"ui/models/{quote(name, safe='')}"),
            "static": self.static,
            "code": self.code,
            "csrf_token": self.token,
            "live_url": None,
            **extra,
        }

    def html(self, body: str, status: int = 200) -> func.HttpResponse:
        headers = dict(SECURITY_HEADERS)
        if self.set_cookie:
            headers["Set-Cookie"] = self.set_cookie
        return func.HttpResponse(
            body, status_code=status, mimetype="text/html", charset="utf-8", headers=headers
        )

    def json(self, data: Any) -> func.HttpResponse:
        return func.HttpResponse(
            json.dumps(data), status_code=200, mimetype="application/json", headers=dict(SECURITY_HEADERS)
        )

    def redirect(self, location: str) -> func.HttpResponse:
        return func.HttpResponse(status_code=303, headers={**SECURITY_HEADERS, "Location": location})

    def error(
        self, status: int, heading: str, message: str, *, retry_after_s: int | None = None
    ) -> func.HttpResponse:
        body = render(
            "error.html",
            **self.context(page_title=heading, nav=None, status=status, heading=heading, message=message),
        )
        resp = self.html(body, status)
        if retry_after_s is not None:
            resp.headers["Retry-After"] = str(retry_after_s)
        return resp


def _page(handler: Callable[[func.HttpRequest, _Page], func.HttpResponse]):
    """Build the page helper and turn the service's errors into an HTML page, once for every route."""

    def wrapper(req: func.HttpRequest) -> func.HttpResponse:
        page = _Page(req)
        try:
            return handler(req, page)
        except RlqError as err:
            answer = http_answer(err)
            return page.error(answer.status, answer.title, str(err), retry_after_s=answer.retry_after_s)

    wrapper.__name__ = handler.__name__
    return wrapper


def _run_href(page: _Page, request_id: str) -> str:
    return page.link(f"ui/runs/{quote(request_id, safe='')}")


# --- runs -------------------------------------------------------------------------------------


def _state_param(req: func.HttpRequest) -> RunState | None:
    state = req.params.get("state") or None
    if state is None:
        return None
    allowed = [s.value for s in RunState]
    if state not in allowed:
        raise InvalidRequest(
            [{"field": "state", "message": f"{state!r} is not allowed; allowed: {', '.join(allowed)}"}]
        )
    return RunState(state)


def _runs(req: func.HttpRequest) -> tuple[RunState | None, list[RunView]]:
    w = wiring()
    state = _state_param(req)
    records = w.service.list(states=[state] if state else None, limit=LIST_LIMIT)
    return state, [run_view(r, w.settings, compact=True) for r in records]


def _runs_context(page: _Page, req: func.HttpRequest) -> dict[str, Any]:
    state, runs = _runs(req)
    return page.context(
        page_title="Runs",
        nav="runs",
        runs=runs,
        state=state.value if state else None,
        states=[s.value for s in RunState],
        sparkline=sparkline_svg,
        live_url=page.link("ui/live", state=state.value if state else None),
    )


@_page
def runs(req: func.HttpRequest, page: _Page) -> func.HttpResponse:
    return page.html(render("runs.html", **_runs_context(page, req)))


@_page
def runs_live(req: func.HttpRequest, page: _Page) -> func.HttpResponse:
    ctx = _runs_context(page, req)
    return page.json(
        {
            "regions": {"rows": render_block("runs.html", "rows", **ctx)},
            "settled": False,
            "next_poll_ms": LIST_POLL_MS,
        }
    )


# --- one run ----------------------------------------------------------------------------------

RUN_REGIONS = ("summary", "actions", "chart", "outcome")


def _children(request_id: str) -> list[str]:
    """Runs that name this one as their parent (recent ones: the store keeps no index on it)."""
    return [r.request_id for r in wiring().service.list(limit=1000) if r.parent_request_id == request_id]


def _run_context(page: _Page, request_id: str, *, lineage: bool = True) -> dict[str, Any]:
    w = wiring()
    record = w.service.get(request_id)
    run = run_view(record, w.settings)
    completion = record.completion.model_dump_json(indent=2) if record.completion else None
    return page.context(
        page_title=f"Run {record.request_id}",
        nav="runs",
        run=run,
        chart=reward_svg(run.points, title=f"Reward of {run.title}", target=run.target),
        completion_json=completion,
        request_json=request_json(record),
        portal_name=PORTAL_NAMES.get(record.backend or "", record.backend or ""),
        children=_children(record.request_id) if lineage else [],  # not a live region
        live_url=None if run.settled else page.link(f"ui/runs/{quote(record.request_id, safe='')}/live"),
    )


@_page
def run(req: func.HttpRequest, page: _Page) -> func.HttpResponse:
    return page.html(render("run.html", **_run_context(page, req.route_params["request_id"])))


@_page
def run_live(req: func.HttpRequest, page: _Page) -> func.HttpResponse:
    ctx = _run_context(page, req.route_params["request_id"], lineage=False)
    run: RunView = ctx["run"]
    return page.json(
        {
            "state": run.state,
            "settled": run.settled,
            "next_poll_ms": run.poll_ms,
            "points": len(run.points),
            "regions": {name: render_block("run.html", name, **ctx) for name in RUN_REGIONS},
        }
    )


@_page
def cancel(req: func.HttpRequest, page: _Page) -> func.HttpResponse:
    refused = csrf.refusal(req)
    if refused is not None:
        return page.error(403, "Refused", refused)
    record = wiring().service.cancel(req.route_params["request_id"])
    return page.redirect(_run_href(page, record.request_id))


# --- one model --------------------------------------------------------------------------------


def evaluation_rows(versions: list[ModelVersion]) -> list[dict[str, Any]]:
    """The chart's rows: each version's evaluation in order (x the version, the band mean ± spread)."""
    rows = []
    for v in sorted(versions, key=lambda v: v.version):
        if v.candidate is not None:
            e = v.candidate
            rows.append(
                {
                    "iteration": v.version,
                    "episode_reward_mean": e.mean,
                    "episode_reward_min": e.mean - e.std,
                    "episode_reward_max": e.mean + e.std,
                }
            )
    return rows


@_page
def model(req: func.HttpRequest, page: _Page) -> func.HttpResponse:
    name = req.route_params["name"]
    if not re.fullmatch(NAME_RE, name):
        raise InvalidRequest([{"field": "name", "message": f"{name[:80]!r} is not a model name"}])
    detail = wiring().service.model(name, limit=LIST_LIMIT)
    if detail is None:
        raise NotFound(f"no model {name!r}")
    chart = reward_svg(
        evaluation_rows(detail.versions),
        title=f"Evaluation of each version of {name} (mean ± spread)",
        x_label="version",
        empty="no version has an evaluation yet",
    )
    body = render(
        "model.html", **page.context(page_title=f"Model {name}", nav="runs", detail=detail, chart=chart)
    )
    return page.html(body)


# --- dead letters -----------------------------------------------------------------------------


def _sources() -> dict[str, tuple[str, str | None, str]]:
    """``key -> (entity, subscription, title)`` of the dead-letter queues a person acts on."""
    settings = wiring().settings
    topic, subscription = settings.topic_name, settings.subscription_name
    return {
        "intake": (settings.queue_name, None, f"Intake queue · {settings.queue_name}"),
        "notifier": (topic, subscription, f"Notifier · {topic}/{subscription}"),
    }


def _body_text(body: bytes) -> str:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return body.decode("utf-8", "replace")
    return json.dumps(redact_notify(data), indent=2, ensure_ascii=False)


def _letter_run(body: bytes) -> str | None:
    """The request id a dead letter names, when a run record of it exists."""
    rid = guess_request_id(body)  # the intake's own reading of an id from a body that may be invalid
    if rid is None:
        return None
    try:
        wiring().service.get(rid)
    except NotFound:
        return None
    return rid


@_page
def dead_letters(req: func.HttpRequest, page: _Page) -> func.HttpResponse:
    w = wiring()
    inbox = w.dead_letters
    sources = []
    if inbox is not None:
        for key, (entity, subscription, title) in _sources().items():
            letters = [
                {
                    "sequence_number": d.sequence_number,
                    "message_id": d.message_id,
                    "reason": d.reason,
                    "description": d.description,
                    "delivery_count": d.delivery_count,
                    "dead_lettered_at": d.dead_lettered_at,
                    "body_text": _body_text(d.body),
                    "size": len(d.body),
                    "run_id": _letter_run(d.body),
                }
                for d in inbox.dead_letters(entity, subscription=subscription, limit=LIST_LIMIT)
            ]
            sources.append({"key": key, "title": title, "letters": letters})
    resubmitted = req.params.get("resubmitted")
    notice = f"Resubmitted as message {resubmitted}." if resubmitted else None
    body = render(
        "dead_letters.html",
        **page.context(
            page_title="Dead letters",
            nav="dead-letters",
            inbox=inbox is not None,
            sources=sources,
            notice=notice,
            rejected_queue=w.settings.rejected_queue_name,
        ),
    )
    return page.html(body)


@_page
def resubmit(req: func.HttpRequest, page: _Page) -> func.HttpResponse:
    refused = csrf.refusal(req)
    if refused is not None:
        return page.error(403, "Refused", refused)
    sources = _sources()
    key = req.route_params["source"]
    if key not in sources:
        raise InvalidRequest(
            [{"field": "source", "message": f"{key!r} is not allowed; allowed: {', '.join(sources)}"}]
        )
    try:
        seq = int(req.route_params["sequence_number"])
    except ValueError:
        raise InvalidRequest([{"field": "sequence_number", "message": "expected an integer"}]) from None
    inbox = wiring().dead_letters
    if inbox is None:
        raise PermanentError("dead letters are resubmitted with the Service Bus Explorer on Azure")
    entity, subscription, _title = sources[key]
    try:
        new_id = inbox.resubmit_dead_letter(entity, seq, subscription=subscription)
    except KeyError:
        raise NotFound(f"no dead letter with sequence number {seq} on {entity}") from None
    return page.redirect(page.link("ui/dead-letters", resubmitted=new_id))


# --- static -----------------------------------------------------------------------------------


def static_file(req: func.HttpRequest) -> func.HttpResponse:
    found = static_files().get(req.route_params.get("name", ""))
    if found is None:
        return func.HttpResponse("not found", status_code=404, mimetype="text/plain")
    data, content_type = found
    return func.HttpResponse(
        data,
        status_code=200,
        mimetype=content_type,
        charset="utf-8",
        headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"},
    )
