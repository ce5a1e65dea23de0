"""The model routes of function_app.py (GET /api/models, GET /api/models/{name}, POST …/promote and
…/rollback), called as the Functions host calls them."""

from __future__ import annotations

import json

import azure.functions as func
import pytest

from shared.composition import install
from shared.contracts.models import ModelDetail
from tests.service.test_function_app import CROSS_SITE, handler
from tests.support.models import complete
from tests.support.topics import promotions

SAME_ORIGIN = {"Origin": "http://127.0.0.1:7071", "Content-Type": "application/json"}


@pytest.fixture(autouse=True)
def installed(wired):
    install(wired)
    yield wired
    install(None)


@pytest.fixture
def cartpole(wired):
    """cartpole: v1 champion (100), v2 worse (90, kept), v3 better (120, promoted); pong: v1."""
    complete(wired.service, "cp-1", mean=100.0)
    complete(wired.service, "cp-2", mean=90.0)
    complete(wired.service, "cp-3", mean=120.0, std=4.0)
    complete(wired.service, "pong-1", mean=-20.0, model="pong")
    return wired


def call(name: str, method: str, url: str, *, body: bytes = b"", headers=None, route=None, params=None):
    req = func.HttpRequest(
        method=method,
        url="http://127.0.0.1:7071" + url,
        body=body,
        route_params=route or {},
        params=params or {},
        headers=headers if headers is not None else SAME_ORIGIN,
    )
    resp: func.HttpResponse = handler(name)(req)
    return resp.status_code, json.loads(resp.get_body())


def promote(name: str, body: object, headers=None):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return call(
        "promote_model",
        "POST",
        f"/api/models/{name}/promote",
        body=raw,
        headers=headers,
        route={"name": name},
    )


def rollback(name: str, body: object, headers=None):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return call(
        "rollback_model",
        "POST",
        f"/api/models/{name}/rollback",
        body=raw,
        headers=headers,
        route={"name": name},
    )


def test_list_names_each_model_with_its_champion(cartpole) -> None:
    status, body = call("list_models", "GET", "/api/models")
    assert status == 200
    items = {m["name"]: m for m in body["items"]}
    assert (items["cartpole"]["champion_version"], items["cartpole"]["latest_version"]) == (3, 3)
    assert (items["pong"]["champion_version"], items["pong"]["latest_version"]) == (1, 1)
    assert all("history" not in m for m in body["items"])
    assert call("list_models", "GET", "/api/models", params={"limit": "0"}) == (
        400,
        {"errors": [{"field": "limit", "message": "expected an integer between 1 and 1000"}]},
    )


def test_one_model_shows_its_champion_and_each_versions_evaluations(cartpole) -> None:
    status, body = call("get_model", "GET", "/api/models/cartpole", route={"name": "cartpole"})
    assert status == 200
    detail = ModelDetail.model_validate(body)
    assert detail.model.champion_version == 3 and detail.champion is not None
    assert detail.champion.request_id == "cp-3"
    assert detail.champion.checkpoint_path == "file:///data/runs/cp-3/checkpoints/final"
    assert [v.version for v in detail.versions] == [3, 2, 1]
    v2 = detail.versions[1]
    assert (v2.promoted, v2.candidate.mean, v2.champion.mean, v2.champion_version) == (False, 90.0, 100.0, 1)
    assert [(e.from_version, e.to_version, e.by) for e in detail.model.history] == [
        (None, 1, "rule"),
        (1, 3, "rule"),
    ]
    status, body = call(
        "get_model", "GET", "/api/models/cartpole", route={"name": "cartpole"}, params={"limit": "1"}
    )
    assert [v["version"] for v in body["versions"]] == [3]


def test_unknown_and_malformed_names_are_refused_naming_the_name(cartpole) -> None:
    assert call("get_model", "GET", "/api/models/nope", route={"name": "nope"}) == (
        404,
        {"errors": [{"field": "name", "message": "no model 'nope'"}]},
    )
    status, body = call("get_model", "GET", "/api/models/..", route={"name": ".."})
    assert status == 400 and body["errors"][0]["field"] == "name"
    assert promote("nope", {"version": 1, "reason": "x"})[0] == 404
    assert rollback("nope", {"reason": "x"})[1]["errors"][0]["field"] == "name"


def test_a_person_promotes_a_version_with_a_reason_and_the_event_goes_out_once(cartpole) -> None:
    before = promotions(cartpole)
    status, body = promote("cartpole", {"version": 2, "reason": "v3 misbehaves on the new track"})
    assert status == 200
    detail = ModelDetail.model_validate(body)
    assert detail.model.champion_version == 2 and detail.champion.request_id == "cp-2"
    last = detail.model.history[-1]
    assert (last.from_version, last.to_version, last.by, last.reason) == (
        3,
        2,
        "person",
        "v3 misbehaves on the new track",
    )
    events = promotions(cartpole)[len(before) :]
    assert [(e.model, e.to_version, e.by, e.message_id) for e in events] == [
        ("cartpole", 2, "person", "model-promoted:cartpole:3")
    ]
    # promoting the champion again changes nothing and publishes nothing more
    again = promote("cartpole", {"version": 2, "reason": "again"})
    assert again[1]["model"]["history"] == body["model"]["history"]
    assert len(promotions(cartpole)) == len(before) + 1


def test_a_person_rolls_back_to_the_champion_before(cartpole) -> None:
    status, body = rollback("cartpole", {"reason": "reward hacking found in v3"})
    assert status == 200
    assert (body["model"]["champion_version"], body["champion"]["request_id"]) == (1, "cp-1")
    assert body["model"]["history"][-1]["reason"] == "reward hacking found in v3"
    status, body = rollback("pong", {"reason": "no earlier one"})
    assert status == 400 and body["errors"][0]["field"] == "model"


@pytest.mark.parametrize(
    "body, field",
    [
        ({"reason": "no version"}, "version"),
        ({"version": 0, "reason": "x"}, "version"),
        ({"version": "2", "reason": "x"}, "version"),
        ({"version": True, "reason": "x"}, "version"),
        ({"version": 2}, "reason"),
        ({"version": 2, "reason": ""}, "reason"),
        ({"version": 2, "reason": "   "}, "reason"),
        ({"version": 2, "reason": "x" * 501}, "reason"),
        ({"version": 2, "reason": "x", "force": True}, "force"),
        (b'{"version": 2, "version": 3, "reason": "x"}', "version"),
        (b"[2]", "(body)"),
        (b"not json", "(body)"),
        (b"", "(body)"),
    ],
)
def test_a_bad_promote_body_is_400_naming_the_field_and_changes_nothing(cartpole, body, field) -> None:
    status, answer = promote("cartpole", body)
    assert status == 400, answer
    assert answer["errors"][0]["field"] == field
    assert cartpole.service.model("cartpole").model.champion_version == 3


def test_a_version_the_model_does_not_have_is_404_naming_the_version(cartpole) -> None:
    assert promote("cartpole", {"version": 9, "reason": "x"}) == (
        404,
        {"errors": [{"field": "version", "message": "model 'cartpole' has no version 9; it has 1 to 3"}]},
    )


@pytest.mark.parametrize("headers, status", CROSS_SITE)
def test_promote_and_rollback_refuse_cross_site_requests_and_bodies_that_are_not_json(
    cartpole, headers, status
) -> None:
    for answer in (
        promote("cartpole", {"version": 1, "reason": "x"}, headers),
        rollback("cartpole", {"reason": "x"}, headers),
    ):
        assert answer[0] == status
        assert answer[1]["errors"][0]["field"] == ("Origin" if status == 403 else "Content-Type")
    assert cartpole.service.model("cartpole").model.champion_version == 3
