"""The dashboard's handlers as the Functions host calls them, on a twin-backed wiring."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest

import function_app
from shared.adapters.broker.sqlite_broker import SqliteBroker
from shared.adapters.compute.compute_twin import ComputeTwin
from shared.composition import Wiring, build, install
from shared.localhost.bindings import list_functions
from shared.settings import Settings
from tests.support.notifiers import RecordingNotifier


def _functions() -> dict:
    """The app's functions by name."""
    return {fn.get_function_name(): fn for fn in list_functions(function_app.app)}


FUNCTIONS = _functions()


def handler(name: str):
    return FUNCTIONS[name].get_user_function()


# Every completion gets a failed webhook delivery whose error text holds markup (escaped on the page).
FAILING = {"target": "https://hooks.example.com/rlq", "error": "HTTP 500 after 3 attempts <b>busy</b>"}


@pytest.fixture
def wired(tmp_path: Path, clock) -> Wiring:
    settings = Settings(_env_file=None, data_dir=tmp_path / "rlq", backend="twin", max_in_flight=100)  # type: ignore[call-arg]
    settings.data_dir.mkdir(parents=True)
    twin = ComputeTwin(tmp_path / "twin.sqlite3", polls_to_finish=4)
    broker = SqliteBroker(settings.queue_db, clock=clock.epoch)
    w = build(
        settings,
        compute={"twin": twin},
        broker=broker,
        notifier=RecordingNotifier(**FAILING),
        clock=clock,
        faults=None,
    )
    install(w)
    yield w
    install(None)


def call(
    name: str,
    path: str,
    *,
    method: str = "GET",
    route_params: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
) -> func.HttpResponse:
    req = func.HttpRequest(
        method=method,
        url=f"http://127.0.0.1:7071{path}",
        body=body,
        route_params=route_params or {},
        params=params or {},
        headers=headers or {},
    )
    return handler(name)(req)


def html(resp: func.HttpResponse) -> str:
    return resp.get_body().decode("utf-8")


def live(resp: func.HttpResponse) -> dict[str, Any]:
    assert resp.mimetype == "application/json"
    return json.loads(resp.get_body())
