"""The local Functions host drives a small function app of the test's own on a real SQLite broker.

Time is a fake clock the test steps (shared by broker and host), except where real threads are the
point (concurrency, graceful stop, lock renewal under a real clock).
"""

from __future__ import annotations

import json
import logging
import os
import resource
import socket
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import azure.functions as func
import httpx
import pytest

from shared.adapters.broker.sqlite_broker import MAX_DELIVERY_REASON, SqliteBroker
from shared.localhost import (
    DEAD_LETTER_REASON,
    LocalHost,
    LocalHostError,
)
from shared.settings import Settings
from tests.support.clock import FakeClock

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


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "rlq")


@pytest.fixture
def broker(tmp_path: Path, clock: FakeClock):
    b = SqliteBroker(tmp_path / "queue.sqlite3", lock_duration_s=60, max_delivery_count=3, clock=clock.epoch)
    b.create_queue(Q)
    b.create_topic(TOPIC)
    b.create_subscription(TOPIC, SUB)
    b.create_subscription(TOPIC, "other")
    yield b
    b.close()


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
def no_host_json(tmp_path: Path) -> Path:
    return tmp_path / "absent-host.json"


@pytest.fixture
def host(rec, broker, settings, clock, no_host_json):
    h = LocalHost(
        make_app(rec),
        broker=broker,
        settings=settings,
        host_json=no_host_json,
        http_port=0,
        clock=clock.epoch,
    )
    yield h
    h.stop()


def write_host_json(path: Path, service_bus: dict[str, Any]) -> Path:
    path.write_text(json.dumps({"version": "2.0", "extensions": {"serviceBus": service_bus}}))
    return path


# --- Service Bus triggers ----------------------------------------------------------------------


def test_success_completes_and_the_handler_gets_the_runtime_message(host, broker, rec, caplog):
    broker.send(
        Q, b'{"n": 1}', message_id="m-1", correlation_id="c-1", application_properties={"kind": "test"}
    )
    caplog.set_level(logging.INFO, logger="shared.localhost")

    assert host.drain() == 1

    (msg,) = rec.messages
    assert isinstance(msg, func.ServiceBusMessage)
    assert msg.get_body() == b'{"n": 1}'
    assert (msg.message_id, msg.delivery_count, msg.correlation_id) == ("m-1", 1, "c-1")
    assert msg.application_properties == {"kind": "test"}
    assert msg.enqueued_time_utc == datetime.fromtimestamp(T0, UTC)
    assert msg.metadata["DeliveryCount"] == 1
    assert broker.counts(Q) == {"active": 0, "scheduled": 0, "locked": 0, "dead_letter": 0}
    assert [(i.function, i.outcome) for i in host.invocations] == [("work", "completed")]
    assert any(
        "fn=work" in r.message
        and "outcome=completed" in r.message
        and "id=m-1" in r.message
        and "delivery=1" in r.message
        for r in caplog.records
    )


def test_a_failing_handler_is_abandoned_redelivered_and_dead_lettered_with_the_last_error(host, broker, rec):
    def fail(msg):
        raise ValueError(f"backend said no on delivery {msg.delivery_count}")

    rec.behaviour = fail
    broker.send(Q, b"{}", message_id="poison")

    assert host.drain() == 3  # max_delivery_count=3: tried three times, then dead-lettered

    assert [m.delivery_count for m in rec.messages] == [1, 2, 3]
    assert [i.outcome for i in host.invocations] == ["abandoned", "abandoned", "dead_lettered"]
    (dead,) = broker.dead_letters(Q)
    assert dead.message_id == "poison"
    assert dead.reason == DEAD_LETTER_REASON == MAX_DELIVERY_REASON
    assert dead.description == "ValueError: backend said no on delivery 3"
    assert broker.counts(Q)["active"] == 0


def test_one_failure_does_not_stop_the_next_message(host, broker, rec):
    def first_delivery_of_a_fails(msg):
        if msg.message_id == "a" and msg.delivery_count == 1:
            raise RuntimeError("first fails")

    rec.behaviour = first_delivery_of_a_fails
    broker.send(Q, b"{}", message_id="a")
    broker.send(Q, b"{}", message_id="b")

    host.drain()

    assert broker.counts(Q) == {"active": 0, "scheduled": 0, "locked": 0, "dead_letter": 0}
    outcomes = [(i.message_id, i.delivery_count, i.outcome) for i in host.invocations]
    assert ("a", 1, "abandoned") in outcomes and ("a", 2, "completed") in outcomes
    assert ("b", 1, "completed") in outcomes


def test_a_handler_that_dead_letters_its_own_message_makes_complete_a_no_op(host, broker, rec):
    def reject(msg):
        assert broker.dead_letter_by_id(
            Q, msg.message_id, reason="InvalidRequest", description="env: 'Nope' is not allowed"
        )

    rec.behaviour = reject
    broker.send(Q, b"{}", message_id="bad")

    assert host.drain() == 1

    assert [i.outcome for i in host.invocations] == ["settled_by_handler"]
    (dead,) = broker.dead_letters(Q)
    assert (dead.reason, dead.description) == ("InvalidRequest", "env: 'Nope' is not allowed")
    assert dead.delivery_count == 1


def test_topic_trigger_reads_its_own_subscription_only(host, broker, rec):
    broker.send(TOPIC, b'{"done": true}', message_id="r1:completed")

    assert host.drain() == 1

    (msg,) = rec.topic_messages
    assert msg.message_id == "r1:completed"
    assert broker.counts(TOPIC, subscription=SUB)["active"] == 0
    assert broker.counts(TOPIC, subscription="other")["active"] == 1  # nobody hosts "other"


def test_drain_stops_at_max_messages(host, broker, rec):
    for i in range(3):
        broker.send(Q, b"{}", message_id=f"m{i}")

    assert host.drain(max_messages=2) == 2
    assert broker.counts(Q)["active"] == 1
    assert host.drain() == 1


def test_scheduled_messages_wait_for_their_time(host, broker, rec, clock):
    broker.send(Q, b"{}", message_id="later", scheduled_at=T0 + 60)

    assert host.drain() == 0
    clock.advance(61)
    assert host.drain() == 1


def test_service_bus_output_binding_is_sent_after_success(broker, settings, clock, no_host_json):
    app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

    @app.function_name("forward")
    @app.service_bus_queue_trigger(arg_name="msg", queue_name=Q, connection="C")
    @app.service_bus_queue_output(arg_name="out", queue_name="forwarded", connection="C")
    def forward(msg: func.ServiceBusMessage, out: func.Out[str]) -> None:
        out.set(msg.get_body().decode().upper())

    host = LocalHost(app, broker=broker, settings=settings, host_json=no_host_json, clock=clock.epoch)
    broker.send(Q, b"hello", message_id="fw-1")
    host.drain()

    (sent,) = broker.peek("forwarded")
    assert sent.body == b"HELLO" and sent.correlation_id == "fw-1"


# --- lock renewal ------------------------------------------------------------------------------


def test_lock_is_renewed_while_a_long_handler_runs(host, broker, rec, clock):
    renewals = []

    def long_running(msg):
        for _ in range(3):  # 3 x 40 s = 120 s: twice the 60 s lock
            clock.advance(40)
            renewals.append(host.renew_locks())

    rec.behaviour = long_running
    broker.send(Q, b"{}", message_id="long")

    host.drain()

    assert sum(renewals) >= 2
    assert [i.outcome for i in host.invocations] == ["completed"]
    assert broker.counts(Q) == {"active": 0, "scheduled": 0, "locked": 0, "dead_letter": 0}


def test_without_renewal_past_max_auto_lock_renewal_the_lock_is_lost_and_redelivered(
    rec, broker, settings, clock, tmp_path
):
    host_json = write_host_json(tmp_path / "host.json", {"maxAutoLockRenewalDuration": "00:00:30"})
    host = LocalHost(make_app(rec), broker=broker, settings=settings, host_json=host_json, clock=clock.epoch)
    renewals = []

    def long_running(msg):
        if msg.delivery_count == 1:
            for _ in range(2):
                clock.advance(40)
                renewals.append(host.renew_locks())

    rec.behaviour = long_running
    broker.send(Q, b"{}", message_id="long")
    try:
        host.drain()
    finally:
        host.stop()

    assert renewals == [0, 0]  # the renewal window (30 s) was over before the lock needed it
    assert [(i.delivery_count, i.outcome) for i in host.invocations] == [(1, "lock_lost"), (2, "completed")]


def test_lock_renewal_under_a_real_clock(tmp_path, settings, rec, no_host_json):
    broker = SqliteBroker(tmp_path / "real.sqlite3", lock_duration_s=0.3)
    host = LocalHost(make_app(rec), broker=broker, settings=settings, host_json=no_host_json)
    seen_locked = []

    def slow(msg):
        for _ in range(4):  # 1.2 s in all: four lock durations
            threading.Event().wait(0.3)
            seen_locked.append(broker.peek(Q)[0].locked_until > 0)

    rec.behaviour = slow
    broker.send(Q, b"{}", message_id="slow")
    try:
        host.drain()
    finally:
        host.stop()
        broker.close()

    assert seen_locked == [True, True, True, True]
    assert [i.outcome for i in host.invocations] == ["completed"]


# --- concurrency and lifecycle -----------------------------------------------------------------


def test_max_concurrent_calls_from_host_json_is_respected(rec, broker, settings, tmp_path):
    broker_real = SqliteBroker(tmp_path / "real.sqlite3", lock_duration_s=30)
    host_json = write_host_json(tmp_path / "host.json", {"maxConcurrentCalls": 2})
    host = LocalHost(make_app(rec), broker=broker_real, settings=settings, host_json=host_json)
    active = 0
    peak = 0
    done = threading.Semaphore(0)
    two_in = threading.Event()
    too_many = threading.Event()
    gate = threading.Event()
    guard = threading.Lock()

    def hold(msg):
        nonlocal active, peak
        with guard:
            active += 1
            peak = max(peak, active)
            if active == 2:
                two_in.set()
            if active > 2:
                too_many.set()
        gate.wait(10)
        with guard:
            active -= 1
        done.release()

    rec.behaviour = hold
    for i in range(6):
        broker_real.send(Q, b"{}", message_id=f"c{i}")
    host.start(timers=False, http=False)
    try:
        assert two_in.wait(10)
        too_many.wait(0.5)  # a third invocation would start well within this if it were allowed
        gate.set()
        for _ in range(6):
            assert done.acquire(timeout=10)
    finally:
        gate.set()
        host.stop()
        broker_real.close()

    assert peak == 2
    assert len(rec.messages) == 6


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


# --- timers ------------------------------------------------------------------------------------


def test_timer_fires_on_its_schedule_and_reports_past_due(host, rec):
    assert host.next_due("tick") == datetime.fromtimestamp(T0 + 7, UTC)  # the next 10-second mark

    assert host.tick_timers(now=T0 + 6.9) == []
    assert host.tick_timers(now=T0 + 7) == ["tick"]
    assert host.tick_timers(now=T0 + 7.5) == []  # once per occurrence
    assert rec.timer_calls[0].past_due is False

    # 20 s late: fires once (missed occurrences collapse into one), marked past due
    assert host.tick_timers(now=T0 + 37) == ["tick"]
    assert rec.timer_calls[1].past_due is True
    assert host.next_due("tick") == datetime.fromtimestamp(T0 + 47, UTC)
    assert [i.outcome for i in host.invocations] == ["ok", "ok"]


def test_timer_never_runs_concurrently_with_itself(host, rec):
    inside, gate = threading.Event(), threading.Event()

    def hold(timer):
        inside.set()
        gate.wait(10)

    rec.timer_behaviour = hold
    first = threading.Thread(target=host.tick_timers, kwargs={"now": T0 + 7})
    first.start()
    try:
        assert inside.wait(10)
        assert host.tick_timers(now=T0 + 17) == []  # due, but still running: skipped
        assert len(rec.timer_calls) == 1
    finally:
        gate.set()
        first.join(10)
    rec.timer_behaviour = None
    assert host.tick_timers(now=T0 + 18) == ["tick"]  # fires late once the first run is done
    assert rec.timer_calls[1].past_due is True


def test_a_failing_timer_is_logged_and_fires_again_next_time(host, rec):
    rec.timer_behaviour = lambda timer: 1 / 0

    assert host.tick_timers(now=T0 + 7) == ["tick"]
    assert host.tick_timers(now=T0 + 17) == ["tick"]
    assert [(i.outcome, i.error) for i in host.invocations] == [
        ("error", "ZeroDivisionError: division by zero")
    ] * 2


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


# --- HTTP --------------------------------------------------------------------------------------


def test_http_routes_over_real_http(host):
    host.start(queues=False, timers=False)
    base = f"{host.base_url}/api"
    with httpx.Client(timeout=10) as client:
        slash = client.get(f"{base}/items/a%2Fb")  # an encoded slash stays inside the parameter
        assert slash.status_code == 200 and slash.json()["item_id"] == "a/b"
        got = client.get(f"{base}/items/a%20b", params={"verbose": "1"})
        assert got.status_code == 200
        assert got.json() == {"item_id": "a b", "verbose": "1"}
        assert got.headers["x-item"] == "a b"
        assert got.headers["content-type"].startswith("application/json")

        tags = client.get(f"{base}/items/42/tags")
        assert tags.status_code == 200 and tags.json() == {"tags_of": 42}
        # {item_id:int}: a non-integer id is not this route
        assert client.get(f"{base}/items/abc/tags").status_code == 404

        created = client.post(f"{base}/items", json={"name": "x"})
        assert created.status_code == 201
        assert created.json() == {"created": {"name": "x"}, "content_type": "application/json"}

        assert client.get(f"{base}/nothing-here").status_code == 404
        assert client.get(f"{host.base_url}/items/1").status_code == 404  # outside the /api prefix
        wrong = client.delete(f"{base}/items/1")
        assert wrong.status_code == 405 and wrong.headers["allow"] == "GET"

        failed = client.get(f"{base}/broken")
        assert failed.status_code == 500
        assert "hunter2" not in failed.text and "Traceback" not in failed.text
    outcomes = [(i.function, i.outcome) for i in host.invocations]
    assert ("get_item", "200") in outcomes and ("broken", "error") in outcomes


def _raw(port: int, request: bytes, *, timeout_s: float = 10.0) -> tuple[bytes, float]:
    """Send ``request`` as is on a fresh connection; what came back before the server closed it
    (or the timeout), and how long that took."""
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(request)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks) and b"Connection: close" not in request:
                    head, _, rest = b"".join(chunks).partition(b"\r\n\r\n")
                    length = [ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length:")]
                    if length and len(rest) >= int(length[0].split(b":")[1]):
                        break
        except TimeoutError:
            pass
    return b"".join(chunks), time.perf_counter() - t0


def _status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/") else 0


def test_many_concurrent_clients_on_fresh_connections_are_all_served(host):
    """64 clients, each opening a new connection per request at the same moment: none is reset."""
    host.start(queues=False, timers=False)
    clients, per_client = 64, 16
    barrier = threading.Barrier(clients)
    failures: list[str] = []
    latencies: list[float] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        barrier.wait()
        for i in range(per_client):
            try:
                got, took = _raw(
                    host.http_port, f"GET /api/items/c{n}-{i} HTTP/1.1\r\nHost: t\r\n\r\n".encode()
                )
                ok = _status(got) == 200 and f'"c{n}-{i}"'.encode() in got
            except OSError as err:
                ok, got, took = False, repr(err).encode(), 0.0
            with lock:
                latencies.append(took)
                if not ok:
                    failures.append(got[:80].decode(errors="replace"))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert failures == []
    assert len(latencies) == clients * per_client
    assert max(latencies) < 5.0  # a refused SYN would be retried after 1 s, 3 s, ...: never here


@pytest.mark.parametrize("length", [b"-1", b"abc", b"1e3"])
def test_a_malformed_content_length_is_a_400_at_once(host, length):
    host.start(queues=False, timers=False)
    got, took = _raw(
        host.http_port,
        b"POST /api/items HTTP/1.1\r\nHost: t\r\nContent-Length: " + length + b"\r\n\r\n{}",
        timeout_s=5,
    )
    assert _status(got) == 400 and b"Traceback" not in got
    assert took < 2.0
    assert [i for i in host.invocations if i.function == "create_item"] == []  # never reached the app


def test_stop_closes_the_http_server_even_when_its_wake_up_pipe_is_gone(host, caplog):
    """The server's loop is woken through a pipe to close its sockets; if that pipe's descriptor
    was closed under it, stop() closes them from its own thread instead of raising EBADF."""
    host.start(queues=False, timers=False)
    port, server, thread = host.http_port, host._http.server, host._http.thread
    got, _ = _raw(port, b"GET /api/items/before HTTP/1.1\r\nHost: t\r\n\r\n")
    assert _status(got) == 200
    # The pipe's write end now refuses writes with EBADF, as after a stray close elsewhere; its
    # number stays taken (by /dev/null, read-only), so the host's own close of it later closes
    # nothing that belongs to another test.
    read_only = os.open(os.devnull, os.O_RDONLY)
    os.dup2(read_only, server.trigger.trigger)
    os.close(read_only)
    with caplog.at_level(logging.WARNING, logger="shared.localhost"):
        host.stop()
    assert "wake-up pipe failed" in caplog.text and "Bad file descriptor" in caplog.text
    thread.join(5)
    assert not thread.is_alive()  # the loop ended
    with pytest.raises(ConnectionRefusedError):  # and the listener is closed
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_a_chunked_body_reaches_the_function_whole(host):
    host.start(queues=False, timers=False)
    body = json.dumps({"name": "x" * 300}).encode()
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(body[i : i + 100]), body[i : i + 100]) for i in range(0, len(body), 100)
    )
    got, _ = _raw(
        host.http_port,
        b"POST /api/items HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n",
    )
    assert _status(got) == 201
    assert json.loads(got.partition(b"\r\n\r\n")[2])["created"] == {"name": "x" * 300}


def test_an_idle_or_stalled_client_is_disconnected_after_the_idle_timeout(
    rec, broker, settings, clock, no_host_json
):
    host = LocalHost(
        make_app(rec),
        broker=broker,
        settings=settings,
        host_json=no_host_json,
        http_port=0,
        http_idle_timeout_s=1,
    )
    host.start(queues=False, timers=False)
    try:
        # a body promised but never sent, and a connection that never says anything
        stalled, took_stalled = _raw(
            host.http_port, b"POST /api/items HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n{", timeout_s=8
        )
        silent, took_silent = _raw(host.http_port, b"", timeout_s=8)
        assert (stalled, silent) == (b"", b"")  # closed by the server, not by our timeout
        assert took_stalled < 6.0 and took_silent < 6.0
        # the server still serves others afterwards
        assert httpx.get(f"{host.base_url}/api/items/1", timeout=5).status_code == 200
    finally:
        host.stop()


def test_stop_closes_the_listening_socket_and_open_connections(host):
    host.start(queues=False, timers=False)
    port = host.http_port
    keep = socket.create_connection(("127.0.0.1", port), timeout=5)  # an idle keep-alive client
    try:
        host.stop()
        try:  # closed by the server on stop (reset when the listener closed before accepting it)
            assert keep.recv(1) == b""
        except ConnectionResetError:
            pass
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        keep.close()


def test_unsupported_triggers_are_refused_by_name(broker, settings, no_host_json):
    app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

    @app.function_name("blobby")
    @app.blob_trigger(arg_name="blob", path="c/{name}", connection="C")
    def blobby(blob: func.InputStream) -> None: ...

    with pytest.raises(LocalHostError, match=r"blobby.*blobTrigger"):
        LocalHost(app, broker=broker, settings=settings, host_json=no_host_json)


def test_http_is_served_when_the_process_holds_over_1024_descriptors(host):
    """select() cannot watch a descriptor numbered 1024 or more (FD_SETSIZE); a long-lived host
    (or one beside many open files) must keep serving when its sockets get such numbers."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.fail(f"this check needs a hard descriptor limit of at least 2048 (have {hard})")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2048), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        host.start(queues=False, timers=False)
        got, _ = _raw(host.http_port, b"GET /api/items/high HTTP/1.1\r\nHost: t\r\n\r\n")
        assert _status(got) == 200 and b'"high"' in got
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
