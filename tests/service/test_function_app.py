"""function_app.py's handlers, called as the Functions host calls them."""

from __future__ import annotations

import json

import azure.functions as func
import pytest
from azure.functions.servicebus import ServiceBusMessage

import function_app
from shared.composition import install
from shared.contracts.run import RunState
from shared.localhost.bindings import list_functions
from tests.support.topics import drain_topic

FUNCTIONS = {fn.get_function_name(): fn for fn in list_functions(function_app.app)}


def handler(name: str):
    return FUNCTIONS[name].get_user_function()


def sb_message(body: bytes, message_id: str, delivery_count: int = 1) -> ServiceBusMessage:
    return ServiceBusMessage(
        body=body,
        message_id=message_id,
        delivery_count=delivery_count,
        content_type="application/json",
        application_properties={},
        user_properties={},
    )


def http(method: str, url: str, body: bytes = b"", route_params=None, params=None) -> func.HttpResponse:
    name = {("POST", "/api/trainings"): "submit_training", ("GET", "/api/trainings"): "list_trainings"}.get(
        (method, url)
    )
    if name is None:
        name = (
            "cancel_training"
            if url.endswith("/cancel")
            else ("reward_png" if url.endswith("reward.png") else "get_training")
        )
    req = func.HttpRequest(
        method=method,
        url=url,
        body=body,
        route_params=route_params or {},
        params=params or {},
        headers={"content-type": "application/json"},
    )
    return handler(name)(req)


@pytest.fixture(autouse=True)
def installed(wired):
    install(wired)
    yield wired
    install(None)


def test_bindings_are_the_documented_ones():
    bindings = {name: fn.get_trigger() for name, fn in FUNCTIONS.items()}
    assert bindings["intake"].queue_name == "training-requests"
    assert bindings["notifier"].topic_name == "training-completed"
    assert bindings["notifier"].subscription_name == "notifier"
    assert bindings["poller"].schedule == "%RLQ_POLL_SCHEDULE%"
    routes = {
        (b.route, tuple(str(getattr(m, "value", m)) for m in b.methods))
        for n, b in bindings.items()
        if b.type == "httpTrigger"
    }
    assert ("trainings/{request_id}/cancel", ("POST",)) in routes


def test_queue_to_completion_through_the_handlers(wired, twin):
    body = json.dumps(
        {"request_id": "h1", "env": "CartPole-v1", "stop": {"episode_reward_mean": 150}}
    ).encode()
    handler("intake")(sb_message(body, "m-1"))
    for _ in range(3):
        handler("poller")(None)  # the poller ignores its TimerRequest
    (msg,) = drain_topic(wired)
    assert msg.request_id == "h1" and msg.status == "Completed"
    handler("notifier")(sb_message(msg.model_dump_json().encode(), msg.message_id))
    assert wired.store.get("h1").notified_at is not None


def test_post_validates_and_enqueues(wired):
    ok = http(
        "POST", "/api/trainings", json.dumps({"env": "CartPole-v1", "stop": {"time_total_s": 60}}).encode()
    )
    assert ok.status_code == 202
    rid = json.loads(ok.get_body())["request_id"]
    assert ok.headers["Location"] == f"/api/trainings/{rid}"
    got = http("GET", f"/api/trainings/{rid}", route_params={"request_id": rid})
    assert got.status_code == 200 and json.loads(got.get_body())["state"] == "received"


def test_post_bad_body_is_400_naming_the_field(wired):
    bad = http("POST", "/api/trainings", json.dumps({"env": "CartPole-v1", "algorithm": "A2C"}).encode())
    assert bad.status_code == 400
    errors = json.loads(bad.get_body())["errors"]
    assert errors[0]["field"] == "algorithm" and "IMPALA" in errors[0]["message"]
    assert wired.broker.counts(wired.settings.queue_name)["active"] == 0
    malformed = http("POST", "/api/trainings", b"{")
    assert malformed.status_code == 400 and json.loads(malformed.get_body())["errors"][0]["field"] == "(body)"


@pytest.mark.parametrize(
    "body, field",
    [
        (
            b'{"env": "CartPole-v1", "stop": {"training_iteration": 1}, "config": {"lr": 1, "lr": 2}}',
            "config.lr",
        ),
        (b'{"env": "CartPole-v1", "stop": {"training_iteration": true}}', "stop.training_iteration"),
    ],
)
def test_post_refuses_repeated_keys_and_booleans_as_numbers_with_400(wired, body, field):
    resp = http("POST", "/api/trainings", body)
    assert resp.status_code == 400
    assert field in {e["field"] for e in json.loads(resp.get_body())["errors"]}
    assert wired.broker.counts(wired.settings.queue_name)["active"] == 0


def test_unknown_ids_are_404(wired):
    for url in ("/api/trainings/zz", "/api/trainings/zz/cancel", "/api/trainings/zz/reward.png"):
        resp = http("POST" if url.endswith("cancel") else "GET", url, route_params={"request_id": "zz"})
        assert resp.status_code == 404, url


def test_list_filters_and_checks_its_parameters(wired):
    wired.service.accept(json.dumps({"request_id": "l1", "env": "CartPole-v1"}).encode(), message_id="m")
    items = json.loads(http("GET", "/api/trainings", params={"state": "submitted"}).get_body())["items"]
    assert [i["request_id"] for i in items] == ["l1"]
    bad = http("GET", "/api/trainings", params={"state": "done"})
    assert bad.status_code == 400 and "submitted" in json.loads(bad.get_body())["errors"][0]["message"]


def test_cancel_route(wired, twin):
    wired.service.accept(json.dumps({"request_id": "c", "env": "CartPole-v1"}).encode(), message_id="m")
    resp = http("POST", "/api/trainings/c/cancel", route_params={"request_id": "c"})
    assert resp.status_code == 202 and json.loads(resp.get_body())["cancel_requested"] is True
    wired.service.poll_once()
    assert wired.store.get("c").completion.status == "Canceled"
    assert wired.store.get("c").state is RunState.notified


def _post(name: str, url: str, body: bytes, headers: dict[str, str], route_params=None) -> func.HttpResponse:
    req = func.HttpRequest(
        method="POST", url=url, body=body, route_params=route_params or {}, params={}, headers=headers
    )
    return handler(name)(req)


CROSS_SITE = [
    ({"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site", "Content-Type": "text/plain"}, 403),
    ({"Sec-Fetch-Site": "same-site", "Content-Type": "application/json"}, 403),
    ({"Origin": "null", "Content-Type": "application/json"}, 403),
    ({"Content-Type": "text/plain"}, 415),
    ({"Content-Type": "application/x-www-form-urlencoded"}, 415),
    ({"Content-Type": "multipart/form-data; boundary=x"}, 415),
    ({}, 415),
]


@pytest.mark.parametrize("headers, status", CROSS_SITE)
def test_submit_refuses_cross_site_requests_and_bodies_that_are_not_json(wired, headers, status):
    url = "http://127.0.0.1:7071/api/trainings"
    body = json.dumps({"env": "CartPole-v1", "stop": {"time_total_s": 60}}).encode()
    resp = _post("submit_training", url, body, headers)
    assert resp.status_code == status
    (error,) = json.loads(resp.get_body())["errors"]
    assert error["field"] == ("Origin" if status == 403 else "Content-Type")
    assert wired.broker.counts(wired.settings.queue_name)["active"] == 0
    same_origin = {"Origin": "http://127.0.0.1:7071", "Sec-Fetch-Site": "same-origin"}
    ok = _post(
        "submit_training", url, body, {**same_origin, "Content-Type": "application/json; charset=utf-8"}
    )
    assert ok.status_code == 202 and wired.broker.counts(wired.settings.queue_name)["active"] == 1


@pytest.mark.parametrize("headers, status", CROSS_SITE)
def test_cancel_refuses_cross_site_requests_and_bodies_that_are_not_json(wired, twin, headers, status):
    wired.service.accept(json.dumps({"request_id": "c", "env": "CartPole-v1"}).encode(), message_id="m")
    url = "http://127.0.0.1:7071/api/trainings/c/cancel"
    resp = _post("cancel_training", url, b"x", headers, {"request_id": "c"})
    assert resp.status_code == status
    assert wired.store.get("c").cancel_requested is False
    ok = _post("cancel_training", url, b"", {"Origin": "http://127.0.0.1:7071"}, {"request_id": "c"})
    assert ok.status_code == 202 and wired.store.get("c").cancel_requested is True
