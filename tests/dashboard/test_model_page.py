"""The dashboard's model page (GET /api/ui/models/{name}) and the run page's link to it, through
function_app.py's handlers: the champion, each version's evaluation over time, the champion changes."""

from __future__ import annotations

import json
import re

from shared.dashboard.pages import evaluation_rows
from tests.dashboard.conftest import call, html
from tests.support.models import complete

from .test_pages import CARTPOLE, poll


def model_page(name: str):
    return call("dashboard_model", f"/api/ui/models/{name}", route_params={"name": name})


def test_the_model_page_shows_the_champion_each_versions_evaluation_and_the_changes(wired) -> None:
    complete(wired.service, "cp-1", mean=100.0)
    complete(wired.service, "cp-2", mean=90.0)  # kept
    complete(wired.service, "cp-3", mean=120.0, std=4.0)  # promoted
    wired.service.rollback("cartpole", reason="v3 <b>regressed</b> in production")
    resp = model_page("cartpole")
    assert resp.status_code == 200 and resp.mimetype == "text/html"
    page = html(resp)
    assert '<dd data-field="champion">v1</dd>' in page
    assert 'id="champion-run" href="/api/ui/runs/cp-1"' in page
    assert (
        '<code class="uri" id="champion-checkpoint">file:///data/runs/cp-1/checkpoints/final</code>' in page
    )
    # the chart: one point per evaluated version, x the version, mean ± spread as the band
    [svg] = re.findall(r'<svg class="chart".*?</svg>', page, re.S)
    assert 'data-points="3"' in svg and ">version</text>" in svg and '<polygon class="band"' in svg
    # its rows: x the version, the band one spread either side of the mean (not the episodes' range)
    versions = wired.service.model("cartpole").versions
    assert [
        (r["iteration"], r["episode_reward_mean"], r["episode_reward_min"], r["episode_reward_max"])
        for r in evaluation_rows(versions)
    ] == [(1, 100.0, 95.0, 105.0), (2, 90.0, 85.0, 95.0), (3, 120.0, 116.0, 124.0)]
    rows = re.findall(r'<tr class="[^"]*" data-version="(\d+)">', page)
    assert rows == ["3", "2", "1"]
    assert "120.00 ± 4.00" in page and "v1: 100.00 ± 5.00" in page
    assert "kept the champion" in page and "promoted" in page
    # the history, newest first, the person's reason escaped
    assert "v3 &lt;b&gt;regressed&lt;/b&gt; in production" in page and "<b>regressed" not in page
    assert page.index("a person") < page.index("the rule")


def test_an_unknown_or_malformed_model_is_an_error_page_naming_it(wired) -> None:
    resp = model_page("nobody")
    assert resp.status_code == 404 and "no model &#39;nobody&#39;" in html(resp)
    bad = model_page("<script>")
    assert bad.status_code == 400 and "name:" in html(bad) and "<script>" not in html(bad)


def test_a_model_without_evaluations_says_so_in_its_chart(wired) -> None:
    from shared.contracts.parsing import parse_request
    from shared.contracts.run import RunRecord, RunState
    from shared.contracts.trainer import TrainerSummary

    champions = wired.service.core.champions()
    request = parse_request({"request_id": "x-1", "env": "CartPole-v1", "model": "plain"})
    record = RunRecord(request_id="x-1", request=request, state=RunState.completed)
    champions.register(record, TrainerSummary(checkpoint_path="file:///x/final"))
    page = html(model_page("plain"))
    assert "no version has an evaluation yet" in page and "no evaluation" in page


def test_the_run_page_says_what_the_run_did_to_its_model_and_links_its_page(wired) -> None:
    from shared.localhost import LocalHost

    host = LocalHost.for_wiring(wired)
    wired.service.enqueue(json.dumps({**CARTPOLE, "request_id": "r-1", "model": "balancer"}))
    host.drain()
    poll(wired, host, 4)
    page = html(call("dashboard_run", "/api/ui/runs/r-1", route_params={"request_id": "r-1"}))
    assert 'id="model-link" href="/api/ui/models/balancer"' in page
    [verdict] = re.findall(r'<p id="model-verdict">(.*?) ·', page)
    assert verdict.startswith("promoted v1 of balancer")
    assert model_page("balancer").status_code == 200
