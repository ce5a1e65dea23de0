"""The HTTP API's OpenAPI document (``GET /api/openapi.json``, shared/openapi.py): valid OpenAPI 3.1,
naming every route of the JSON API, and Schemathesis fuzzing the local host against it.

The fuzzer runs against the function app on a started local host (a real socket, the SQLite queue
and store, the compute twin, no timers: nothing trains), ``MAX_EXAMPLES`` examples per operation
with a fixed seed that it prints (``RLQ_FUZZ_SEED`` picks another). It fails on a 5xx, on an
answer the document does not describe, and on a 4xx whose body is not the ``errors`` list naming
a field. Two of Schemathesis' checks are off, each for a reason: ``ignored_auth`` (the local host
checks no function key, as ``func start`` does not) and ``positive_data_acceptance`` (the schema is
necessary, not sufficient: an unknown env or a config value out of its bounds is refused with a 400
naming it, which the schema cannot say).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate

from shared.composition import Wiring, build
from shared.localhost import LocalHost
from shared.localhost.bindings import HTTP_TRIGGER, list_functions
from shared.localhost.host import load_function_app
from shared.openapi import PREFIX, document
from shared.settings import Settings
from tests.support.readme import readme_number

MAX_EXAMPLES = 25
DEFAULT_SEED = 20261206
SEED = int(os.environ.get("RLQ_FUZZ_SEED", DEFAULT_SEED))
# What the document describes: the JSON API; the dashboard's HTML pages (/api/ui) are not part of it.
DOCUMENTED = ("trainings", "health", "models", "openapi.json")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Wiring]]:
    """The function app on a started local host: its base URL and its wiring."""
    data = tmp_path_factory.mktemp("openapi")
    env = {
        "RLQ_BACKEND": "twin",
        "RLQ_BROKER": "sqlite",
        "RLQ_STORE": "sqlite",
        "RLQ_DATA_DIR": str(data / "rlq"),
    }
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        mp.chdir(data)  # no stray .env file is read
        w = build(Settings(_env_file=None))  # type: ignore[call-arg]
        host = LocalHost.for_wiring(w, http_port=0)
        host.start(timers=False)
        try:
            yield host.base_url, w
        finally:
            host.close()


@pytest.fixture(scope="module")
def api(served: tuple[str, Wiring]) -> str:
    return served[0]


def test_the_served_document_is_valid_openapi_3_1_and_is_the_generated_one(api: str) -> None:
    served = httpx.get(f"{api}{PREFIX}/openapi.json", timeout=30)
    assert served.status_code == 200
    assert served.headers["content-type"].startswith("application/json")
    doc = served.json()
    validate(doc)  # raises naming what is wrong
    assert doc["openapi"] == "3.1.0"
    assert doc == json.loads(json.dumps(document(), default=str))


def test_every_route_of_the_json_api_is_in_the_document() -> None:
    """Each HTTP function of the app under /api/trainings, /api/health, /api/models is an operation of
    the document with the same methods, and the document names no route the app does not serve;
    the operations that need no key (``security: []``) are the app's anonymous functions."""
    served: dict[str, set[str]] = {}
    anonymous: set[tuple[str, str]] = set()
    for fn in list_functions(load_function_app()):
        trigger = fn.get_trigger()
        if trigger is None or trigger.type != HTTP_TRIGGER:
            continue
        template = str(trigger.route).strip("/")
        if template.split("/", 1)[0] in DOCUMENTED:
            path = f"{PREFIX}/" + re.sub(r"\{(\w+)(?::[^}]*)?\}", r"{\1}", template)  # {id:int} -> {id}
            methods = {str(getattr(m, "value", m)).lower() for m in trigger.methods}
            served.setdefault(path, set()).update(methods)
            if str(getattr(trigger.auth_level, "value", trigger.auth_level)).lower() == "anonymous":
                anonymous |= {(path, m) for m in methods}
    doc = document()
    assert {path: set(ops) for path, ops in doc["paths"].items()} == served
    keyless = {
        (path, m) for path, ops in doc["paths"].items() for m, op in ops.items() if op.get("security") == []
    }
    assert keyless == anonymous == {(f"{PREFIX}/health", "get"), (f"{PREFIX}/openapi.json", "get")}


def test_every_error_answer_is_the_errors_list_naming_a_field() -> None:
    doc = document()
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            for status, answer in op["responses"].items():
                if status.startswith("4") or (status == "503" and path != f"{PREFIX}/health"):
                    schema = answer["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Errors"}, (method, path, status)
    errors = doc["components"]["schemas"]["Errors"]
    assert errors["required"] == ["errors"] and errors["properties"]["errors"]["minItems"] == 1
    field = doc["components"]["schemas"]["FieldError"]
    assert field["required"] == ["field", "message"] and field["properties"]["field"]["minLength"] == 1


def test_the_submission_body_is_the_training_requests_own_schema_with_the_id_optional() -> None:
    schemas = document()["components"]["schemas"]
    body, request = schemas["TrainingSubmission"], schemas["TrainingRequest"]
    assert request["required"] == ["request_id"] and body["required"] == []
    assert body["properties"] == request["properties"] and body["additionalProperties"] is False


def test_the_readme_states_the_fuzzers_examples_and_seed() -> None:
    assert readme_number(r"(\d+) examples per operation") == MAX_EXAMPLES
    assert readme_number(r"printed at the start \((\d+);") == DEFAULT_SEED


def test_a_runs_answers_through_its_life_are_the_documented_ones(served: tuple[str, Wiring]) -> None:
    """What the fuzzer cannot reach with made-up ids: a real run's record (received, then with its
    progress, curve, completion message and deliveries), the list, a cancel, the reward curve."""
    api, w = served
    cartpole = {"env": "CartPole-v1", "algorithm": "IMPALA", "stop": {"training_iteration": 3}}

    def answered(method: str, path: str, route: str, **kwargs: Any) -> httpx.Response:
        response = httpx.request(method, f"{api}{PREFIX}{path}", timeout=30, **kwargs)
        documented = document()["paths"][f"{PREFIX}{route}"][method.lower()]["responses"]
        assert str(response.status_code) in documented, (method, path, response.status_code, response.text)
        schema[f"{PREFIX}{route}"][method].validate_response(response)  # raises naming what differs
        return response

    sent = answered("POST", "/trainings", "/trainings", json=cartpole)
    assert sent.status_code == 202
    rid = sent.json()["request_id"]
    assert answered("GET", f"/trainings/{rid}", "/trainings/{request_id}").status_code == 200
    deadline = time.monotonic() + 60
    record: dict[str, Any] = {}
    while not record.get("completion") and time.monotonic() < deadline:
        w.service.poll_once()  # the timer is off: the poll ticks here
        record = answered("GET", f"/trainings/{rid}", "/trainings/{request_id}").json()
    assert record["completion"]["status"] == "Completed" and record["progress"] and record["curve"]
    assert answered("GET", "/trainings?limit=5", "/trainings").json()["items"][0]["request_id"] == rid
    assert answered("POST", f"/trainings/{rid}/cancel", "/trainings/{request_id}/cancel").status_code == 202
    png = answered("GET", f"/trainings/{rid}/reward.png", "/trainings/{request_id}/reward.png")
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    assert answered("GET", "/health", "/health").status_code == 200


def test_a_blank_query_value_is_refused_naming_it_not_read_as_absent(api: str) -> None:
    """What the fuzzer found: the local host dropped ``?limit=``, so it listed 100 runs; the
    Functions host hands the function ``limit=""``, which the API refuses."""
    for query, field in (("limit=", "limit"), ("state=", "state")):
        answer = httpx.get(f"{api}{PREFIX}/trainings?{query}", timeout=30)
        assert answer.status_code == 400, query
        assert [e["field"] for e in answer.json()["errors"]] == [field]


# --- the fuzzer ------------------------------------------------------------------------------------


def errors_name_a_field(ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> bool | None:
    """Every 4xx answer is ``{"errors": [{"field", "message"}, ...]}``, each naming a field."""
    if not 400 <= response.status_code < 500:
        return None
    try:
        body = json.loads(response.content)
    except ValueError:
        raise AssertionError(f"{response.status_code} is not JSON: {response.content[:200]!r}") from None
    errors = body.get("errors") if isinstance(body, dict) else None
    assert isinstance(errors, list) and errors, f"{response.status_code} carries no errors list: {body}"
    for e in errors:
        assert isinstance(e, dict) and isinstance(e.get("field"), str) and e["field"], f"names no field: {e}"
        assert isinstance(e.get("message"), str) and e["message"], f"says nothing: {e}"
    return True


# Loaded at import from the generator (the served copy is the same: the first test checks it); the
# host's address is handed to each call. (Not ``schemathesis.pytest.from_fixture``: its lazy loader
# sets ``node._nodeid``, which pytest 9 no longer has.)
schema = schemathesis.openapi.from_dict(
    document(),
    config=schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "generation": {"max-examples": MAX_EXAMPLES},
            "checks": {
                "ignored_auth": {"enabled": False},  # the local host checks no function key
                "positive_data_acceptance": {"enabled": False},  # the schema is necessary, not sufficient
            },
        }
    ),
)


SEED_LINE = (
    f"Schemathesis seed {SEED} (RLQ_FUZZ_SEED={SEED} repeats this run), {MAX_EXAMPLES} examples per operation"
)


@pytest.fixture(scope="module")
def seed_printed(request: pytest.FixtureRequest) -> None:
    """The seed on the terminal whatever pytest captures (and on every failure, as a note)."""
    terminal = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if terminal is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            terminal.write_line(f"\n{SEED_LINE}")


@schema.parametrize()
# database=None: the seed alone decides the examples (no failure saved by an earlier run replayed)
@settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_the_local_host_answers_as_the_document_says(
    case: schemathesis.Case, api: str, seed_printed: None
) -> None:
    try:
        case.call_and_validate(base_url=api, additional_checks=[errors_name_a_field], timeout=30)
    except Exception as err:
        err.add_note(SEED_LINE)
        raise
