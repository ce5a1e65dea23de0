"""The host's life: graceful stop, ``run_forever``, app-setting expressions and refused triggers."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import azure.functions as func
import pytest

from shared.adapters.broker.sqlite_broker import SqliteBroker
from shared.localhost import LocalHost, LocalHostError
from shared.settings import Settings
from tests.localhost.hosted_app import Q, make_app, write_host_json


def test_stop_finishes_in_flight_work_and_receives_nothing_new(rec, settings, tmp_path):
    broker = SqliteBroker(tmp_path / "real.sqlite3", lock_duration_s=30)
    host_json = write_host_json(tmp_path / "host.json", {"maxConcurrentCalls": 1})
    host = LocalHost(make_app(rec), broker=broker, settings=settings, host_json=host_json)
    started, gate = threading.Event(), threading.Event()

    def hold(msg):
        started.set()
        gate.wait(10)

    rec.behaviour = hold
    broker.send(Q, b"{}", message_id="first")
    broker.send(Q, b"{}", message_id="second")
    host.start(timers=False, http=False)
    try:
        assert started.wait(10)
        stopper = threading.Thread(target=host.stop)
        stopper.start()
        for _ in range(100):
            if host.stopping:
                break
            threading.Event().wait(0.01)
        gate.set()
        stopper.join(10)
        assert not stopper.is_alive()
    finally:
        gate.set()
        host.stop()

    assert [m.message_id for m in rec.messages] == ["first"]
    assert [i.outcome for i in host.invocations] == ["completed"]
    (left,) = broker.peek(Q)
    assert (left.message_id, left.delivery_count) == ("second", 0)
    broker.close()


def test_run_forever_returns_after_request_stop(host):
    threading.Timer(0.3, host.request_stop).start()
    host.run_forever()
    assert host.stopping


def test_app_setting_expressions_resolve_from_environment_then_settings(
    rec, broker, clock, tmp_path, monkeypatch, no_host_json
):
    monkeypatch.delenv("RLQ_POLL_SCHEDULE", raising=False)
    monkeypatch.delenv("RLQ_QUEUE_NAME", raising=False)
    settings = Settings(data_dir=tmp_path, poll_schedule="0 */5 * * * *", queue_name="from-settings")
    app = make_app(rec, schedule="%RLQ_POLL_SCHEDULE%", queue="%RLQ_QUEUE_NAME%")

    host = LocalHost(app, broker=broker, settings=settings, host_json=no_host_json, clock=clock.epoch)
    assert host.next_due("tick") == datetime.fromtimestamp(1_700_000_100, UTC)  # next 5-minute mark
    assert {f.name: f.detail for f in host.functions}["work"] == "queue from-settings"

    monkeypatch.setenv("RLQ_POLL_SCHEDULE", "30 * * * * *")  # the environment wins
    host = LocalHost(
        make_app(rec, schedule="%RLQ_POLL_SCHEDULE%"),
        broker=broker,
        settings=settings,
        host_json=no_host_json,
        clock=clock.epoch,
    )
    assert host.next_due("tick") == datetime.fromtimestamp(1_700_000_010, UTC)  # :30 of that minute

    with pytest.raises(LocalHostError, match="RLQ_NOT_A_SETTING"):
        LocalHost(
            make_app(rec, schedule="%RLQ_NOT_A_SETTING%"),
            broker=broker,
            settings=settings,
            host_json=no_host_json,
            clock=clock.epoch,
        )


def test_unsupported_triggers_are_refused_by_name(broker, settings, no_host_json):
    app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

    @app.function_name("blobby")
    @app.blob_trigger(arg_name="blob", path="c/{name}", connection="C")
    def blobby(blob: func.InputStream) -> None: ...

    with pytest.raises(LocalHostError, match=r"blobby.*blobTrigger"):
        LocalHost(app, broker=broker, settings=settings, host_json=no_host_json)
