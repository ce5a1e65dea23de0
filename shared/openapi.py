"""The HTTP API's OpenAPI 3.1 document, served at ``GET /api/openapi.json``.

Generated, never written by hand: the request body is :class:`TrainingRequest`'s own JSON schema (the
model that validates it), the answers are the models below and :class:`RunRecord`, and every error
answer is :class:`Errors` with the statuses of :data:`shared.errors.HTTP_ANSWERS`, so the document
cannot drift from what the handlers accept and send. Other languages generate their clients from it;
Python services use :mod:`shared.client`.

The schema is necessary, not sufficient: rules across fields and against the deployment (the
environment catalogs, the config keys' bounds, caps) are the validator's, and a body the schema
accepts may still be refused with a ``400`` naming the field.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from shared.contracts.models import Model, ModelDetail, PromoteBody, RollbackBody
from shared.contracts.request import NAME_RE, TrainingRequest
from shared.contracts.run import RunRecord
from shared.errors import HTTP_ANSWERS

OPENAPI_VERSION = "3.1.0"
PREFIX = "/api"  # host.json's routePrefix (the Functions default)
LIST_LIMIT = (1, 1000)  # GET /api/trainings?limit=: the allowed range
COMPONENTS = "#/components/schemas/{model}"

# --- the answers' shapes (the handlers in functions/http_api.py build them) ----------------------


class FieldError(BaseModel):
    """One refusal: the field it names (dotted path into the body, a query parameter, a header, or
    ``(body)`` / ``(request)`` / ``(service)``) and what is wrong with it, naming what is allowed."""

    model_config = ConfigDict(extra="forbid")

    field: str = Field(min_length=1)
    message: str


class Errors(BaseModel):
    """Every 4xx and 503 answer of the JSON API."""

    model_config = ConfigDict(extra="forbid")

    errors: list[FieldError] = Field(min_length=1)


class Accepted(BaseModel):
    """``202`` to ``POST /api/trainings``: the request is recorded and queued."""

    model_config = ConfigDict(extra="forbid")

    request_id: str
    status_url: str


class RunList(BaseModel):
    """``GET /api/trainings``: run records, newest first, each without its ``curve``."""

    model_config = ConfigDict(extra="forbid")

    items: list[RunRecord]


class ModelList(BaseModel):
    """``GET /api/models``: the models by name, each without its ``history``."""

    model_config = ConfigDict(extra="forbid")

    items: list[Model]


class HealthCheck(BaseModel):
    """One dependency's readiness (``ok`` null: the dependency has no check of its own)."""

    model_config = ConfigDict(extra="forbid")

    ok: bool | None
    detail: str


class Health(BaseModel):
    """``GET /api/health``: ``200`` when every check passed, ``503`` naming what did not."""

    model_config = ConfigDict(extra="forbid")

    status: Literal["ok", "unavailable"]
    checks: dict[str, HealthCheck]
    age_s: float = Field(ge=0, description="how long ago the checks ran (they are reused for a few seconds)")


# --- the document ------------------------------------------------------------------------------

_MODELS: tuple[tuple[type[BaseModel], JsonSchemaMode], ...] = (
    (TrainingRequest, "validation"),
    (RunRecord, "serialization"),
    (Errors, "serialization"),
    (Accepted, "serialization"),
    (RunList, "serialization"),
    (Health, "serialization"),
    (ModelList, "serialization"),
    (ModelDetail, "serialization"),
    (PromoteBody, "validation"),
    (RollbackBody, "validation"),
)


def _schemas() -> dict[str, Any]:
    _, top = models_json_schema(_MODELS, ref_template=COMPONENTS)
    schemas: dict[str, Any] = top["$defs"]
    # The API assigns a request id when the body has none (the queue's message must carry one).
    body = {**schemas["TrainingRequest"], "title": "TrainingSubmission"}
    body["required"] = [f for f in body.get("required", []) if f != "request_id"]
    body["description"] = (
        "A training request as POST /api/trainings takes it: a TrainingRequest whose request_id "
        "may be left out (the API assigns one)."
    )
    schemas["TrainingSubmission"] = body
    return schemas


def _ref(model: str) -> dict[str, str]:
    return {"$ref": COMPONENTS.format(model=model)}


def _json(model: str, description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": _ref(model)}},
    }
    if headers:
        answer["headers"] = headers
    return answer


_RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds after which asking again may help",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}


def _refusals(*extra: tuple[int, str]) -> dict[str, Any]:
    """The error answers every JSON route can give (:data:`HTTP_ANSWERS`), plus the route's own."""
    answers: dict[str, Any] = {}
    for _, answer in HTTP_ANSWERS:
        key = str(answer.status)
        headers = _RETRY_AFTER if answer.retry_after_s is not None else None
        if key in answers:
            answers[key]["description"] += f"; {answer.title.lower()}"
            continue
        answers[key] = _json("Errors", f"{answer.title} (the error names `{answer.field}`)", headers)
    for status, description in extra:
        answers[str(status)] = _json("Errors", description)
    return dict(sorted(answers.items()))


_STATE_CHANGING = (
    (403, "sent from another site (`Sec-Fetch-Site` / `Origin`; the error names `Origin`)"),
    (415, "a body that is not `application/json` (the error names `Content-Type`)"),
)


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route under ``/api/trainings``, ``/api/health`` and this one."""
    schemas = _schemas()
    request_id = {
        "name": "request_id",
        "in": "path",
        "required": True,
        "description": "the request id a submission was answered with",
        "schema": {
            "type": "string",
            "pattern": schemas["TrainingRequest"]["properties"]["request_id"]["pattern"],
        },
    }
    lo, hi = LIST_LIMIT
    paths: dict[str, Any] = {
        f"{PREFIX}/trainings": {
            "post": {
                "operationId": "submit_training",
                "summary": "Validate a training request and put it on the queue",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("TrainingSubmission")}},
                },
                "responses": {
                    "202": _json(
                        "Accepted",
                        "recorded and queued",
                        {"Location": {"description": "the run's URL", "schema": {"type": "string"}}},
                    ),
                    **_refusals(*_STATE_CHANGING),
                },
            },
            "get": {
                "operationId": "list_trainings",
                "summary": "Run records, newest first",
                "parameters": [
                    {
                        "name": "state",
                        "in": "query",
                        "description": "only runs in this state",
                        "schema": _ref("RunState"),
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "description": "at most this many records",
                        "schema": {"type": "integer", "minimum": lo, "maximum": hi, "default": 100},
                    },
                ],
                "responses": {"200": _json("RunList", "the run records"), **_refusals()},
            },
        },
        f"{PREFIX}/trainings/{{request_id}}": {
            "get": {
                "operationId": "get_training",
                "summary": "One run record: state, progress, completion message, deliveries",
                "parameters": [request_id],
                "responses": {"200": _json("RunRecord", "the run record"), **_refusals()},
            }
        },
        f"{PREFIX}/trainings/{{request_id}}/cancel": {
            "post": {
                "operationId": "cancel_training",
                "summary": "Stop the run; its completion message says Canceled",
                "parameters": [request_id],
                "responses": {
                    "202": _json("RunRecord", "cancel recorded (a run already over is answered as it is)"),
                    **_refusals(*_STATE_CHANGING),
                },
            }
        },
        f"{PREFIX}/trainings/{{request_id}}/reward.png": {
            "get": {
                "operationId": "reward_png",
                "summary": "The reward curve",
                "parameters": [request_id],
                "responses": {
                    "200": {
                        "description": "the reward curve as a PNG",
                        "content": {
                            "image/png": {"schema": {"type": "string", "contentMediaType": "image/png"}}
                        },
                    },
                    **_refusals(),
                },
            }
        },
        **_model_paths(),
        f"{PREFIX}/health": {
            "get": {
                "operationId": "health",
                "summary": "Readiness: the run store writes, the queue takes messages, the compute answers",
                "security": [],
                "responses": {
                    "200": _json("Health", "ready"),
                    "503": _json("Health", "not ready: the checks name what is not"),
                },
            }
        },
        f"{PREFIX}/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "security": [],
                "responses": {
                    "200": {
                        "description": "the OpenAPI 3.1 document of this API",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
    }
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "rlq",
            "version": _version(),
            "description": (
                "Queue-driven reinforcement-learning training. Every 4xx and 503 answer is "
                '`{"errors": [{"field", "message"}]}` naming the field and what is allowed. '
                "Generated from the pydantic models that validate requests (shared/openapi.py)."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "securitySchemes": {
                "functionKey": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "x-functions-key",
                    "description": "the Function App's function key (Azure; the local host checks none)",
                },
                "functionKeyQuery": {"type": "apiKey", "in": "query", "name": "code"},
            },
        },
        "security": [{"functionKey": []}, {"functionKeyQuery": []}],
    }


def _model_paths() -> dict[str, Any]:
    """``/api/models``: the models, one with its versions, and a person's promote and rollback."""
    name = {
        "name": "name",
        "in": "path",
        "required": True,
        "description": "the model's name (a request's `model`, by default its `experiment`)",
        "schema": {"type": "string", "pattern": NAME_RE},
    }
    lo, hi = LIST_LIMIT
    limit = {
        "name": "limit",
        "in": "query",
        "description": "at most this many",
        "schema": {"type": "integer", "minimum": lo, "maximum": hi, "default": 100},
    }
    decided = _json("ModelDetail", "recorded (published once as a `model-promoted` event); the model now")

    def body(model: str) -> dict[str, Any]:
        return {"required": True, "content": {"application/json": {"schema": _ref(model)}}}

    return {
        f"{PREFIX}/models": {
            "get": {
                "operationId": "list_models",
                "summary": "The models by name, each with its champion version",
                "parameters": [limit],
                "responses": {"200": _json("ModelList", "the models"), **_refusals()},
            }
        },
        f"{PREFIX}/models/{{name}}": {
            "get": {
                "operationId": "get_model",
                "summary": "One model: its champion, its versions newest first with their evaluations, its history",
                "parameters": [name, {**limit, "description": "at most this many versions"}],
                "responses": {"200": _json("ModelDetail", "the model"), **_refusals()},
            }
        },
        f"{PREFIX}/models/{{name}}/promote": {
            "post": {
                "operationId": "promote_model",
                "summary": "A person makes a version the champion, saying why",
                "parameters": [name],
                "requestBody": body("PromoteBody"),
                "responses": {"200": decided, **_refusals(*_STATE_CHANGING)},
            }
        },
        f"{PREFIX}/models/{{name}}/rollback": {
            "post": {
                "operationId": "rollback_model",
                "summary": "A person makes the champion before the current one champion again, saying why",
                "parameters": [name],
                "requestBody": body("RollbackBody"),
                "responses": {"200": decided, **_refusals(*_STATE_CHANGING)},
            }
        },
    }


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rlq")
    except PackageNotFoundError:  # run from a checkout that was not installed
        return "0"


__all__ = ["Accepted", "Errors", "FieldError", "Health", "HealthCheck", "ModelList", "RunList", "document"]
