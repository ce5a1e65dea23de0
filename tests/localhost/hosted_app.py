"""A small function app of the tests' own, hosted on a real SQLite broker (the fixtures are in conftest.py).

Time is a fake clock the test steps (shared by broker and host), except where real threads are the
point (concurrency, graceful stop, lock renewal under a real clock).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import azure.functions as func

Q = "work"


TOPIC = "events"


SUB = "audit"


T0 = 1_700_000_003.0  # 3 s past a 10-second boundary


class Recorder:
    """What the test app's handlers saw; ``behaviour`` decides what the queue handler does."""

    def __init__(self) -> None:
        self.messages: list[func.ServiceBusMessage] = []
        self.topic_messages: list[func.ServiceBusMessage] = []
        self.timer_calls: list[func.TimerRequest] = []
        self.behaviour: Any = None  # callable(msg) or None
        self.timer_behaviour: Any = None
        self.lock = threading.Lock()


def make_app(rec: Recorder, *, schedule: str = "*/10 * * * * *", queue: str = Q) -> func.FunctionApp:
    app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

    @app.function_name("work")
    @app.service_bus_queue_trigger(arg_name="msg", queue_name=queue, connection="ServiceBusConnection")
    def work(msg: func.ServiceBusMessage) -> None:
        with rec.lock:
            rec.messages.append(msg)
        if rec.behaviour is not None:
            rec.behaviour(msg)

    @app.function_name("audit")
    @app.service_bus_topic_trigger(
        arg_name="msg", topic_name=TOPIC, subscription_name=SUB, connection="ServiceBusConnection"
    )
    def audit(msg: func.ServiceBusMessage) -> None:
        rec.topic_messages.append(msg)

    @app.function_name("tick")
    @app.timer_trigger(arg_name="timer", schedule=schedule, run_on_startup=False, use_monitor=False)
    def tick(timer: func.TimerRequest) -> None:
        rec.timer_calls.append(timer)
        if rec.timer_behaviour is not None:
            rec.timer_behaviour(timer)

    @app.function_name("get_item")
    @app.route(route="items/{item_id}", methods=["GET"])
    def get_item(req: func.HttpRequest) -> func.HttpResponse:
        return func.HttpResponse(
            json.dumps({"item_id": req.route_params["item_id"], "verbose": req.params.get("verbose")}),
            mimetype="application/json",
            headers={"X-Item": req.route_params["item_id"]},
        )

    @app.function_name("item_tags")
    @app.route(route="items/{item_id:int}/tags", methods=["GET"])
    async def item_tags(req: func.HttpRequest) -> func.HttpResponse:  # async handlers are awaited
        return func.HttpResponse(
            json.dumps({"tags_of": int(req.route_params["item_id"])}), mimetype="application/json"
        )

    @app.function_name("create_item")
    @app.route(route="items", methods=["POST"])
    def create_item(req: func.HttpRequest) -> func.HttpResponse:
        body = req.get_json()
        return func.HttpResponse(
            json.dumps({"created": body, "content_type": req.headers.get("content-type")}),
            status_code=201,
            mimetype="application/json",
        )

    @app.function_name("broken")
    @app.route(route="broken", methods=["GET"])
    def broken(req: func.HttpRequest) -> func.HttpResponse:
        raise RuntimeError("the database password is hunter2")

    return app


def write_host_json(path: Path, service_bus: dict[str, Any]) -> Path:
    path.write_text(json.dumps({"version": "2.0", "extensions": {"serviceBus": service_bus}}))
    return path
