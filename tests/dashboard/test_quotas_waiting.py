"""A request deferred for its team's quota says so: in the API's run record, on its page (and the
page's live region), in the runs list; once it takes its slot, no more."""

from __future__ import annotations

import json

import pytest

from shared.contracts.run import RunState
from shared.localhost import LocalHost
from shared.settings import load_team_quotas
from tests.dashboard.conftest import call, html, live

WAITING = "waiting for team quota: team team-a has 1 of 1 runs in flight"


@pytest.fixture
def host(wired):
    wired.settings._team_quotas = load_team_quotas('{"team-a": {"max_in_flight": 1}}')
    return LocalHost.for_wiring(wired)  # stepped (drain), never started


def submit(w, host, request_id: str) -> None:
    body = {"request_id": request_id, "env": "CartPole-v1", "team": "team-a", "priority": "high"}
    w.service.enqueue(json.dumps({**body, "stop": {"timesteps_total": 10_000}}))
    host.drain()


def test_the_wait_for_team_quota_shows_in_the_api_the_run_page_and_the_list(wired, host, clock):
    submit(wired, host, "a-1")
    submit(wired, host, "a-2")
    api = json.loads(
        call("get_training", "/api/trainings/a-2", route_params={"request_id": "a-2"}).get_body()
    )
    assert (api["state"], api["waiting"], api["request"]["team"]) == ("received", WAITING, "team-a")
    page = html(call("dashboard_run", "/api/ui/runs/a-2", route_params={"request_id": "a-2"}))
    assert f'<span class="muted" data-field="waiting">{WAITING}</span>' in page
    regions = live(call("dashboard_run_live", "/api/ui/runs/a-2/live", route_params={"request_id": "a-2"}))
    assert any(WAITING in region for region in regions["regions"].values())
    assert page.count(WAITING) == 1 and WAITING in html(call("dashboard_runs", "/api/ui"))

    for _ in range(20):  # a-1 ends, a-2 comes back and takes the slot
        if wired.store.get("a-2").state is not RunState.received:
            break
        wired.service.poll_once()
        clock.advance(wired.settings.defer_delay_s)
        host.drain()
    assert wired.store.get("a-2").waiting is None
    assert "waiting for" not in html(
        call("dashboard_run", "/api/ui/runs/a-2", route_params={"request_id": "a-2"})
    )
