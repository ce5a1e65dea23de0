"""HTTP API: JSON in and out under /api/trainings."""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

import azure.functions as func
from pydantic import ValidationError

from shared.artifacts import reward_curve_for
from shared.composition import wiring
from shared.contracts.models import PromoteBody, RollbackBody
from shared.contracts.parsing import DuplicateKey, field_errors, load_json
from shared.contracts.request import NAME_RE
from shared.contracts.run import RunState
from shared.dashboard.csrf import cross_site, not_json
from shared.errors import InvalidRequest, RlqError, http_answer
from shared.openapi import document

bp = func.Blueprint()
_Body = TypeVar("_Body", PromoteBody, RollbackBody)


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> func.HttpResponse:
    return func.HttpResponse(
        json.dumps(data, default=str, indent=1),
        status_code=status,
        mimetype="application/json",
        headers=headers,
    )


def _errors(status: int, errors: list[dict[str, str]]) -> func.HttpResponse:
    return _json({"errors": errors}, status)


def _guarded(handler):  # the error tree into HTTP by the one table (shared.errors.HTTP_ANSWERS)
    def wrapper(req: func.HttpRequest) -> func.HttpResponse:
        try:
            return handler(req)
        except RlqError as err:
            answer = http_answer(err)
            errors = (
                err.errors
                if isinstance(err, InvalidRequest)
                else [{"field": answer.field, "message": str(err)}]
            )
            retry = {"Retry-After": str(answer.retry_after_s)} if answer.retry_after_s is not None else None
            return _json({"errors": errors}, answer.status, retry)

    wrapper.__name__ = handler.__name__
    return wrapper


def _state_changing(handler):
    """Refuse what a page on another site could send: a cross-site request (403) or a body that is
    not JSON (415, what a cross-site "simple" request is limited to). Every POST route wears it."""

    def wrapper(req: func.HttpRequest) -> func.HttpResponse:
        refused = cross_site(req)
        if refused is not None:
            return _errors(403, [{"field": "Origin", "message": refused}])
        refused = not_json(req)
        if refused is not None:
            return _errors(415, [{"field": "Content-Type", "message": refused}])
        return handler(req)

    wrapper.__name__ = handler.__name__
    return wrapper


@bp.function_name("submit_training")
@bp.route(route="trainings", methods=["POST"])
@_state_changing
@_guarded
def submit_training(req: func.HttpRequest) -> func.HttpResponse:
    request_id = wiring().service.enqueue(req.get_body())
    return _json(
        {"request_id": request_id, "status_url": f"/api/trainings/{request_id}"},
        202,
        {"Location": f"/api/trainings/{request_id}"},
    )


@bp.function_name("get_training")
@bp.route(route="trainings/{request_id}", methods=["GET"])
@_guarded
def get_training(req: func.HttpRequest) -> func.HttpResponse:
    return _json(wiring().service.get(req.route_params["request_id"]).model_dump(mode="json"))


@bp.function_name("list_trainings")
@bp.route(route="trainings", methods=["GET"])
@_guarded
def list_trainings(req: func.HttpRequest) -> func.HttpResponse:
    state = req.params.get("state")
    allowed = [s.value for s in RunState]
    if state is not None and state not in allowed:
        return _errors(
            400, [{"field": "state", "message": f"{state!r} is not allowed; allowed: {', '.join(allowed)}"}]
        )
    try:
        limit = int(req.params.get("limit", "100"))
        if not 1 <= limit <= 1000:
            raise ValueError
    except ValueError:
        return _errors(400, [{"field": "limit", "message": "expected an integer between 1 and 1000"}])
    records = wiring().service.list(states=[RunState(state)] if state else None, limit=limit)
    return _json({"items": [r.model_dump(mode="json", exclude={"curve"}) for r in records]})


@bp.function_name("cancel_training")
@bp.route(route="trainings/{request_id}/cancel", methods=["POST"])
@_state_changing
@_guarded
def cancel_training(req: func.HttpRequest) -> func.HttpResponse:
    return _json(wiring().service.cancel(req.route_params["request_id"]).model_dump(mode="json"), 202)


@bp.function_name("reward_png")
@bp.route(route="trainings/{request_id}/reward.png", methods=["GET"])
@_guarded
def reward_png(req: func.HttpRequest) -> func.HttpResponse:
    w = wiring()
    png = reward_curve_for(w.service.get(req.route_params["request_id"]), w.settings)
    if png is None:
        return _errors(404, [{"field": "request_id", "message": "no training iterations recorded yet"}])
    return func.HttpResponse(png, status_code=200, mimetype="image/png")


@bp.function_name("health")
@bp.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def health(req: func.HttpRequest) -> func.HttpResponse:
    """Ready means ready: the run store writes, the queue takes messages, the compute answers;
    503 naming what is not."""
    readiness = wiring().service.readiness()
    return _json(
        {
            "status": "ok" if readiness.ready else "unavailable",
            "checks": {c.name: {"ok": c.ok, "detail": c.detail} for c in readiness.checks},
            "age_s": readiness.age_s,  # the checks are reused for a few seconds (shared/core/readiness.py)
        },
        200 if readiness.ready else 503,
    )


@bp.function_name("openapi")
@bp.route(route="openapi.json", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def openapi(req: func.HttpRequest) -> func.HttpResponse:
    """The OpenAPI 3.1 document of this API (shared/openapi.py); it holds no data, so no key."""
    return _json(document())


# --- models and champions (docs/models.md) ---------------------------------------------------------


def _model_name(req: func.HttpRequest) -> str:
    name = req.route_params["name"]
    if not re.fullmatch(NAME_RE, name):
        raise InvalidRequest(
            [
                {
                    "field": "name",
                    "message": f"{name[:80]!r} is not a model name (letters, digits, '_' and '-', at most 64)",
                }
            ]
        )
    return name


def _limit(req: func.HttpRequest) -> int:
    try:
        limit = int(req.params.get("limit", "100"))
        if not 1 <= limit <= 1000:
            raise ValueError
    except ValueError:
        raise InvalidRequest(
            [{"field": "limit", "message": "expected an integer between 1 and 1000"}]
        ) from None
    return limit


def _decision(req: func.HttpRequest, contract: type[_Body]) -> _Body:
    """A person's promote / rollback body, or InvalidRequest naming each bad field."""
    try:
        data = load_json(req.get_body() or b"")
    except DuplicateKey as err:
        raise InvalidRequest([{"field": err.field, "message": err.message}]) from None
    except ValueError:
        raise InvalidRequest([{"field": "(body)", "message": "expected a JSON object"}]) from None
    if not isinstance(data, dict):
        raise InvalidRequest([{"field": "(body)", "message": "expected a JSON object"}])
    try:
        return contract.model_validate(data)
    except ValidationError as err:
        raise InvalidRequest(field_errors(err)) from None


def _no_model(name: str) -> func.HttpResponse:
    return _errors(404, [{"field": "name", "message": f"no model {name!r}"}])


@bp.function_name("list_models")
@bp.route(route="models", methods=["GET"])
@_guarded
def list_models(req: func.HttpRequest) -> func.HttpResponse:
    models = wiring().service.list_models(limit=_limit(req))
    return _json({"items": [m.model_dump(mode="json", exclude={"history"}) for m in models]})


@bp.function_name("get_model")
@bp.route(route="models/{name}", methods=["GET"])
@_guarded
def get_model(req: func.HttpRequest) -> func.HttpResponse:
    name = _model_name(req)
    detail = wiring().service.model(name, limit=_limit(req))
    return _no_model(name) if detail is None else _json(detail.model_dump(mode="json"))


@bp.function_name("promote_model")
@bp.route(route="models/{name}/promote", methods=["POST"])
@_state_changing
@_guarded
def promote_model(req: func.HttpRequest) -> func.HttpResponse:
    name = _model_name(req)
    body = _decision(req, PromoteBody)
    service = wiring().service
    detail = service.model(name, limit=1)
    if detail is None:
        return _no_model(name)
    if body.version > detail.model.latest_version:
        latest = detail.model.latest_version
        return _errors(
            404,
            [
                {
                    "field": "version",
                    "message": f"model {name!r} has no version {body.version}; it has 1 to {latest}",
                }
            ],
        )
    return _json(service.promote(name, body.version, reason=body.reason).model_dump(mode="json"))


@bp.function_name("rollback_model")
@bp.route(route="models/{name}/rollback", methods=["POST"])
@_state_changing
@_guarded
def rollback_model(req: func.HttpRequest) -> func.HttpResponse:
    name = _model_name(req)
    body = _decision(req, RollbackBody)
    service = wiring().service
    if service.model(name, limit=1) is None:
        return _no_model(name)
    return _json(service.rollback(name, reason=body.reason).model_dump(mode="json"))
