"""The dashboard's pages through function_app.py's handlers: what they show, escape, refuse and do."""

from __future__ import annotations

import json
import re

import pytest

from shared.contracts.run import RunState
from shared.errors import Forbidden, InvalidRequest, NotFound, RlqError, TransientError, http_answer
from shared.localhost import LocalHost
from tests.dashboard.conftest import FUNCTIONS, call, html, live

CARTPOLE = {"env": "CartPole-v1", "algorithm": "PPO", "stop": {"episode_reward_mean": 150}}


@pytest.fixture
def host(wired):
    return LocalHost.for_wiring(wired)  # stepped (drain), never started


def submit(w, host, request_id: str, **extra) -> None:
    w.service.enqueue(json.dumps({**CARTPOLE, "request_id": request_id, **extra}))
    host.drain()


def poll(w, host, times: int = 1) -> None:
    for _ in range(times):
        w.service.poll_once()
        host.drain()  # the notifier on the topic


def csrf_cookie(resp) -> str:
    m = re.match(r"rlq_csrf=([^;]+);", resp.headers["Set-Cookie"])
    assert m, resp.headers.get("Set-Cookie")
    return m.group(1)


def form_token(page: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert m
    return m.group(1)


def test_routes_are_function_key_routes_under_ui_except_the_static_files():
    http = {n: fn for n, fn in FUNCTIONS.items() if n.startswith("dashboard_")}
    routes = {fn.get_trigger().route: n for n, fn in http.items()}
    assert {
        "ui",
        "ui/live",
        "ui/runs/{request_id}",
        "ui/runs/{request_id}/live",
        "ui/runs/{request_id}/cancel",
        "ui/dead-letters",
        "ui/dead-letters/{source}/{sequence_number}/resubmit",
        "ui/models/{name}",
        "ui/static/{name}",
    } == set(routes)
    for name, fn in http.items():
        level = str(getattr(fn.get_trigger().auth_level, "value", fn.get_trigger().auth_level)).lower()
        assert level == ("anonymous" if name == "dashboard_static" else "function"), name
    methods = {n: {str(getattr(m, "value", m)) for m in fn.get_trigger().methods} for n, fn in http.items()}
    assert methods["dashboard_cancel"] == {"POST"} and methods["dashboard_resubmit"] == {"POST"}
    assert all(methods[n] == {"GET"} for n in http if n not in ("dashboard_cancel", "dashboard_resubmit"))


def test_runs_page_lists_each_run_with_state_progress_rewards_and_a_sparkline(wired, host):
    submit(wired, host, "r-1", tags={"team": "vision"})
    submit(wired, host, "r-2", experiment="pong-sweep")
    poll(wired, host, 2)
    resp = call("dashboard_runs", "/api/ui")
    assert resp.status_code == 200 and resp.mimetype == "text/html"
    page = html(resp)
    rows = re.findall(r'<tr data-run="([^"]+)" data-state="([^"]+)">', page)
    assert sorted(rows) == [("r-1", "running"), ("r-2", "running")]
    assert 'href="/api/ui/runs/r-1"' in page and "PPO · CartPole-v1" in page and "pong-sweep" in page
    assert page.count('<svg class="spark"') == 2 and 'data-points="2"' in page
    assert '<progress max="1" value="0.500"' in page  # twin: reward 75 of 150 after two of four polls
    assert '<td data-label="Reward" class="num">75</td>' in page  # the current reward
    assert 'data-live="/api/ui/live"' in page
    rows_only = live(call("dashboard_runs_live", "/api/ui/live"))
    assert rows_only["settled"] is False and 'data-run="r-1"' in rows_only["regions"]["rows"]
    assert rows_only["next_poll_ms"] == 5_000


def test_runs_page_filters_by_state_and_names_the_field_of_a_bad_one(wired, host):
    submit(wired, host, "r-1")
    wired.service.cancel("r-1")
    poll(wired, host, 2)
    page = html(call("dashboard_runs", "/api/ui", params={"state": "notified"}))
    assert 'data-run="r-1"' in page
    page = html(call("dashboard_runs", "/api/ui", params={"state": "running"}))
    assert 'data-run="r-1"' not in page and "No runs in state running" in page
    bad = call("dashboard_runs", "/api/ui", params={"state": "<b>done</b>"})
    assert bad.status_code == 400
    text = html(bad)
    assert "state: &#39;&lt;b&gt;done&lt;/b&gt;&#39; is not allowed; allowed: received" in text
    assert "<b>done" not in text


def test_run_page_shows_the_curve_growing_then_the_outcome_and_stops_polling_when_settled(wired, host):
    submit(wired, host, "r-1", tags={"owner": "ana"})
    seen = []
    for _ in range(3):
        poll(wired, host)
        data = live(call("dashboard_run_live", "/api/ui/runs/r-1/live", route_params={"request_id": "r-1"}))
        seen.append((data["state"], data["points"], data["settled"]))
        assert f'data-points="{data["points"]}"' in data["regions"]["chart"]
    assert seen == [("running", 1, False), ("running", 2, False), ("running", 3, False)]
    poll(wired, host)  # the fourth poll: succeeded → completed → published → notified
    rec = wired.store.get("r-1")
    assert rec.state is RunState.notified and rec.notified_at is not None
    data = live(call("dashboard_run_live", "/api/ui/runs/r-1/live", route_params={"request_id": "r-1"}))
    assert data["settled"] is True and data["state"] == "notified"
    page = html(call("dashboard_run", "/api/ui/runs/r-1", route_params={"request_id": "r-1"}))
    assert "data-live=" not in page  # settled: nothing left to poll
    assert f'<code class="uri" id="checkpoint">file:///twin/{rec.run_id}/checkpoints/final</code>' in page
    assert '<span class="badge status-Completed">Completed</span>' in page
    # the failed webhook delivery, its error escaped
    assert (
        "https://hooks.example.com/rlq" in page
        and "HTTP 500 after 3 attempts &lt;b&gt;busy&lt;/b&gt;" in page
    )
    assert '<tr class="failed">' in page
    assert "&#34;message_id&#34;: &#34;r-1:completed&#34;" in page  # the completion message
    assert "&#34;owner&#34;: &#34;ana&#34;" in page  # the request
    assert 'id="cancel"' not in page  # nothing left to cancel


def test_run_page_links_the_portal_only_over_http_and_redacts_teams_urls(wired, host):
    teams = "https://example.webhook.office.com/workflows/abc?sig=SECRET123"
    submit(wired, host, "r-1", notify={"teams": [teams]})
    rec = wired.store.get("r-1")
    wired.store.update(rec.model_copy(update={"portal_url": "https://ml.azure.com/runs/x?wsid=1&tid=2"}))
    page = html(call("dashboard_run", "/api/ui/runs/r-1", route_params={"request_id": "r-1"}))
    assert 'href="https://ml.azure.com/runs/x?wsid=1&amp;tid=2"' in page
    assert "SECRET123" not in page and "https://example.webhook.office.com/workflows/abc" in page
    rec = wired.store.get("r-1")
    wired.store.update(rec.model_copy(update={"portal_url": "javascript:alert(1)"}))
    page = html(call("dashboard_run", "/api/ui/runs/r-1", route_params={"request_id": "r-1"}))
    assert "javascript:" not in page and 'id="portal"' not in page


def test_a_request_whose_tags_hold_script_renders_as_text(wired, host):
    evil = "<script>alert(1)</script>"
    body = json.dumps({**CARTPOLE, "request_id": "xss-1", "tags": {evil: evil}})
    wired.broker.send(wired.settings.queue_name, body, message_id="xss-1")
    host.drain()  # refused: tag names and values may not hold < >
    rec = wired.store.get("xss-1")
    assert rec.state is RunState.rejected and evil in rec.error  # the error names the bad tag
    pages = [
        html(call("dashboard_run", "/api/ui/runs/xss-1", route_params={"request_id": "xss-1"})),
        html(call("dashboard_runs", "/api/ui")),
        html(call("dashboard_dead_letters", "/api/ui/dead-letters")),
    ]
    run_page, _, letters_page = pages
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in run_page  # in the error text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in letters_page  # in the body and the description
    assert '<a href="/api/ui/runs/xss-1">xss-1</a>' in letters_page  # the dead letter's run record
    for page in pages:
        assert "<script>alert" not in page
        assert re.findall(r"<script[^>]*>", page) == ['<script src="/api/ui/static/dashboard.js" defer>']


def test_tag_values_with_quotes_cannot_leave_their_text(wired, host):
    submit(wired, host, "q-1", tags={"note": 'a" onmouseover="alert(1)', "x": "it's"})
    page = html(call("dashboard_run", "/api/ui/runs/q-1", route_params={"request_id": "q-1"}))
    assert "<dd>a&#34; onmouseover=&#34;alert(1)</dd>" in page and "<dd>it&#39;s</dd>" in page
    assert 'onmouseover="alert' not in page


def test_dead_letter_bodies_show_webhook_and_teams_urls_redacted(wired, host):
    body = {
        **CARTPOLE,
        "request_id": "dl-teams",
        "algorithm": "A2C",  # refused: the body is dead-lettered as sent
        "notify": {"teams": ["https://example.webhook.office.com/workflows/a?sig=SECRET1"], "webhooks": 3},
    }
    wired.broker.send(wired.settings.queue_name, json.dumps(body), message_id="dl-teams")
    host.drain()
    (dead,) = wired.broker.dead_letters(wired.settings.queue_name)
    assert b"SECRET1" in dead.body  # the dead letter keeps the request as it came
    page = html(call("dashboard_dead_letters", "/api/ui/dead-letters"))
    assert "SECRET1" not in page and "https://example.webhook.office.com/workflows/a" in page
    assert "&#34;webhooks&#34;: 3" in page  # what is not a list of URLs is shown as it is


def test_unknown_run_is_a_404_page_naming_it_escaped(wired):
    resp = call("dashboard_run", "/api/ui/runs/x", route_params={"request_id": "<i>x</i>"})
    assert resp.status_code == 404 and "no training request &#39;&lt;i&gt;x&lt;/i&gt;&#39;" in html(resp)


def test_pages_send_security_headers_and_a_strict_csrf_cookie(wired):
    resp = call("dashboard_runs", "/api/ui")
    csp = resp.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
    assert resp.headers["X-Frame-Options"] == "DENY" and resp.headers["Cache-Control"] == "no-store"
    cookie = resp.headers["Set-Cookie"]
    assert "SameSite=Strict" in cookie and "HttpOnly" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # plain http on loopback
    token = csrf_cookie(resp)
    again = call("dashboard_runs", "/api/ui", headers={"Cookie": f"rlq_csrf={token}"})
    assert "Set-Cookie" not in again.headers  # the browser's token stays
    req = call("dashboard_runs", "/api/ui")
    assert csrf_cookie(req) != token  # a fresh random token for a new browser


def test_function_key_in_the_url_is_carried_by_links_forms_and_polls(wired, host):
    submit(wired, host, "r-1")
    page = html(
        call("dashboard_run", "/api/ui/runs/r-1", route_params={"request_id": "r-1"}, params={"code": "k3y"})
    )
    assert 'data-live="/api/ui/runs/r-1/live?code=k3y"' in page
    assert 'action="/api/ui/runs/r-1/cancel?code=k3y"' in page
    assert 'href="/api/ui?code=k3y"' in page and 'href="/api/trainings/r-1?code=k3y"' in page


def _cancel(token_cookie: str | None, token_form: str | None, **headers: str):
    h = {"Content-Type": "application/x-www-form-urlencoded", **headers}
    if token_cookie:
        h["Cookie"] = f"rlq_csrf={token_cookie}"
    body = f"csrf_token={token_form}".encode() if token_form else b""
    return call(
        "dashboard_cancel",
        "/api/ui/runs/r-1/cancel",
        method="POST",
        route_params={"request_id": "r-1"},
        headers=h,
        body=body,
    )


def test_cancel_needs_the_page_token_and_a_same_origin_request(wired, host):
    submit(wired, host, "r-1")
    page_resp = call("dashboard_run", "/api/ui/runs/r-1", route_params={"request_id": "r-1"})
    token = csrf_cookie(page_resp)
    assert form_token(html(page_resp)) == token
    refused = [
        _cancel(None, None),
        _cancel(token, None),
        _cancel(None, token),
        _cancel(token, "x" * 43),
        _cancel(token, token, **{"Sec-Fetch-Site": "cross-site"}),
        _cancel(token, token, **{"Sec-Fetch-Site": "same-site"}),
        _cancel(token, token, Origin="http://evil.example"),
    ]
    assert [r.status_code for r in refused] == [403] * len(refused)
    assert "another site" in html(refused[4]) and "another origin" in html(refused[6])
    assert wired.store.get("r-1").cancel_requested is False
    ok = _cancel(token, token, **{"Sec-Fetch-Site": "same-origin", "Origin": "http://127.0.0.1:7071"})
    assert ok.status_code == 303 and ok.headers["Location"] == "/api/ui/runs/r-1"
    assert wired.store.get("r-1").cancel_requested is True
    poll(wired, host, 2)
    rec = wired.store.get("r-1")
    assert rec.state is RunState.notified and rec.completion.status == "Canceled"


def test_a_token_the_server_did_not_issue_is_refused_even_when_cookie_and_form_agree(wired, host):
    submit(wired, host, "r-1")
    issued = csrf_cookie(call("dashboard_run", "/api/ui/runs/r-1", route_params={"request_id": "r-1"}))
    nonce, _, _sig = issued.partition(".")
    for forged in ("A" * 43, f"{nonce}.{'B' * 43}", f"{'C' * 32}.{_sig}"):
        refused = _cancel(forged, forged)
        assert refused.status_code == 403 and "not issued here" in html(refused)
        # a page never adopts a planted cookie: it issues a signed one of its own
        page = call("dashboard_run", "/api/ui/runs/r-1", route_params={"request_id": "r-1"})
        assert csrf_cookie(page) != forged and form_token(html(page)) == csrf_cookie(page)
    assert wired.store.get("r-1").cancel_requested is False
    assert _cancel(issued, issued).status_code == 303


def test_dead_letters_page_shows_reason_description_body_and_resubmits(wired, host):
    q = wired.settings.queue_name
    wired.broker.send(
        q, json.dumps({"env": "CartPole-v1", "config": {"num_workers": -2}}), message_id="bad-1"
    )
    host.drain()
    (dead,) = wired.broker.dead_letters(q)
    resp = call("dashboard_dead_letters", "/api/ui/dead-letters")
    page = html(resp)
    assert f'id="letter-intake-{dead.sequence_number}"' in page
    assert "InvalidRequest" in page and "num_workers" in page and "&#34;num_workers&#34;: -2" in page
    assert f'action="/api/ui/dead-letters/intake/{dead.sequence_number}/resubmit"' in page
    assert 'href="/api/ui/runs/' not in page  # no request id in the body: no run to link
    token = csrf_cookie(resp)
    form = {"Cookie": f"rlq_csrf={token}", "Content-Type": "application/x-www-form-urlencoded"}
    params = {"source": "intake", "sequence_number": str(dead.sequence_number)}
    url = f"/api/ui/dead-letters/intake/{dead.sequence_number}/resubmit"
    refused = call("dashboard_resubmit", url, method="POST", route_params=params, headers=form, body=b"")
    assert refused.status_code == 403 and len(wired.broker.dead_letters(q)) == 1
    ok = call(
        "dashboard_resubmit",
        url,
        method="POST",
        route_params=params,
        headers=form,
        body=f"csrf_token={token}".encode(),
    )
    assert (
        ok.status_code == 303
        and ok.headers["Location"] == "/api/ui/dead-letters?resubmitted=bad-1%3Aresubmit%3A1"
    )
    assert wired.broker.dead_letters(q) == []
    (msg,) = wired.broker.peek(q, limit=10)
    assert msg.message_id == "bad-1:resubmit:1"
    after = html(
        call("dashboard_dead_letters", "/api/ui/dead-letters", params={"resubmitted": "bad-1:resubmit:1"})
    )
    assert "Resubmitted as message bad-1:resubmit:1." in after
    gone = call(
        "dashboard_resubmit",
        url,
        method="POST",
        route_params=params,
        headers=form,
        body=f"csrf_token={token}".encode(),
    )
    assert gone.status_code == 404 and "no dead letter with sequence number" in html(gone)


def test_resubmit_names_a_bad_source_or_sequence_number(wired):
    token = csrf_cookie(call("dashboard_dead_letters", "/api/ui/dead-letters"))
    form = {"Cookie": f"rlq_csrf={token}", "Content-Type": "application/x-www-form-urlencoded"}
    body = f"csrf_token={token}".encode()
    bad_source = call(
        "dashboard_resubmit",
        "/x",
        method="POST",
        route_params={"source": "topic", "sequence_number": "1"},
        headers=form,
        body=body,
    )
    assert bad_source.status_code == 400
    assert "source: &#39;topic&#39; is not allowed; allowed: intake, notifier" in html(bad_source)
    bad_seq = call(
        "dashboard_resubmit",
        "/x",
        method="POST",
        route_params={"source": "intake", "sequence_number": "one"},
        headers=form,
        body=body,
    )
    assert bad_seq.status_code == 400 and "sequence_number: expected an integer" in html(bad_seq)


def test_without_a_dead_letter_inbox_the_page_says_where_to_look(wired):
    wired.dead_letters = None  # as on Service Bus
    page = html(call("dashboard_dead_letters", "/api/ui/dead-letters"))
    assert "Service Bus Explorer" in page and wired.settings.rejected_queue_name in page


def test_static_files_are_the_vendored_ones_only(wired):
    css = call("dashboard_static", "/api/ui/static/dashboard.css", route_params={"name": "dashboard.css"})
    assert (
        css.status_code == 200
        and css.mimetype == "text/css"
        and b"prefers-color-scheme: dark" in css.get_body()
    )
    js = call("dashboard_static", "/api/ui/static/dashboard.js", route_params={"name": "dashboard.js"})
    assert js.status_code == 200 and js.mimetype == "text/javascript" and b"data-live" in js.get_body()
    for name in ("../templates/base.html", "base.html", "", "dashboard.css.map"):
        assert call("dashboard_static", "/x", route_params={"name": name}).status_code == 404, name


def test_parent_and_child_runs_link_each_other(wired, host):
    submit(wired, host, "parent")
    poll(wired, host, 4)
    assert wired.store.get("parent").state is RunState.notified
    submit(wired, host, "child", restore_from="rlq://parent")
    submit(wired, host, "other")
    assert wired.store.get("child").parent_request_id == "parent"
    child = html(call("dashboard_run", "/api/ui/runs/child", route_params={"request_id": "child"}))
    assert 'Warm-started from <a id="parent" href="/api/ui/runs/parent">parent</a>' in child
    parent = html(call("dashboard_run", "/api/ui/runs/parent", route_params={"request_id": "parent"}))
    assert 'Retrained as <a class="child" href="/api/ui/runs/child">child</a>' in parent
    alone = html(call("dashboard_run", "/api/ui/runs/other", route_params={"request_id": "other"}))
    assert "Lineage" not in alone


def test_a_rejected_run_is_polled_seldom_since_a_resubmit_can_revive_it(wired, host):
    wired.broker.send(
        wired.settings.queue_name, json.dumps({"env": "Nope-v0", "request_id": "rj"}), message_id="rj"
    )
    host.drain()
    assert wired.store.get("rj").state is RunState.rejected
    data = live(call("dashboard_run_live", "/api/ui/runs/rj/live", route_params={"request_id": "rj"}))
    assert data["settled"] is False and data["next_poll_ms"] == 10_000
    submit(wired, host, "r-1")
    data = live(call("dashboard_run_live", "/api/ui/runs/r-1/live", route_params={"request_id": "r-1"}))
    assert data["next_poll_ms"] == 2_000


def test_a_resumed_run_shows_each_lost_attempt_in_a_row(wired, host):
    from shared.contracts.run import Attempt

    submit(wired, host, "resumed")
    submit(wired, host, "other")
    record = wired.store.get("resumed")
    lost = Attempt(
        number=1,
        run_id="rlq-resumed-1",
        ended_at=record.created_at,
        cause="Ray has no job rlq-resumed-1: the cluster was restarted <b>",
        resumed_from="file:///runs/resumed/checkpoints/iter_000004",
        steps_lost=812,
    )
    wired.store.update(record.model_copy(update={"attempts": [lost]}))
    page = html(call("dashboard_run", "/api/ui/runs/resumed", route_params={"request_id": "resumed"}))
    row = re.search(r'<table class="attempts">.*?</table>', page, re.S)
    assert row is not None
    assert "<td>1</td><td>rlq-resumed-1</td>" in row.group(0)
    assert "the cluster was restarted &lt;b&gt;</td>" in row.group(0)
    assert "<td>file:///runs/resumed/checkpoints/iter_000004</td><td>812</td>" in row.group(0)
    plain = html(call("dashboard_run", "/api/ui/runs/other", route_params={"request_id": "other"}))
    assert "Request" in plain and "Attempts" not in plain


@pytest.mark.parametrize(
    "error",
    [
        NotFound("no run named r-1"),
        InvalidRequest([{"field": "state", "message": "not a state"}]),
        Forbidden("over the cap"),
        TransientError("the store is busy"),
        RlqError("the run store is damaged"),  # neither transient nor permanent: a person must act
    ],
    ids=lambda e: type(e).__name__,
)
def test_the_api_and_the_dashboard_answer_an_error_by_the_one_table(wired, monkeypatch, error):
    def fail(*_args, **_kwargs):
        raise error

    monkeypatch.setattr(wired.service, "get", fail)
    api = call("get_training", "/api/trainings/r-1", route_params={"request_id": "r-1"})
    page = call("dashboard_run", "/api/ui/runs/r-1", route_params={"request_id": "r-1"})
    answer = http_answer(error)
    assert api.status_code == page.status_code == answer.status
    assert api.headers.get("Retry-After") == page.headers.get("Retry-After")
    assert page.headers.get("Retry-After") == (str(answer.retry_after_s) if answer.retry_after_s else None)
    assert answer.title in html(page)
    (named,) = json.loads(api.get_body())["errors"]
    assert named["field"] == ("state" if isinstance(error, InvalidRequest) else answer.field)
