"""The real function_app.py under the local host on the compute twin: settlement as Service Bus does it."""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from shared.adapters.broker.sqlite_broker import SqliteBroker
from shared.adapters.compute.compute_twin import ComputeTwin
from shared.composition import build
from shared.contracts.run import RunState
from shared.errors import TransientError
from shared.localhost import LocalHost
from shared.localhost.ray_head import free_port
from shared.settings import Settings
from tests.support.descriptors import open_fds


@pytest.fixture
def hosted(tmp_path, clock):
    settings = Settings(_env_file=None, data_dir=tmp_path / "rlq", backend="twin")  # type: ignore[call-arg]
    settings.data_dir.mkdir(parents=True)
    twin = ComputeTwin(tmp_path / "twin.sqlite3")
    broker = SqliteBroker(settings.queue_db, clock=clock.epoch)
    w = build(settings, compute={"twin": twin}, broker=broker, clock=clock)
    host = LocalHost.for_wiring(w, clock=clock.epoch)
    yield w, host, twin
    host.close()


def test_invalid_request_is_dead_lettered_at_once_naming_the_field(hosted):
    w, host, twin = hosted
    w.broker.send(
        w.settings.queue_name,
        json.dumps({"env": "CartPole-v1", "config": {"num_workers": -2}}),
        message_id="poison",
    )
    host.drain()
    (dead,) = w.broker.dead_letters(w.settings.queue_name)
    assert dead.delivery_count == 1 and dead.reason == "InvalidRequest"
    assert "config" in dead.description and "num_workers" in dead.description
    assert twin.jobs_per_request() == {}
    assert w.store.get("poison").state is RunState.rejected


def test_transient_failures_are_resent_with_backoff_then_dead_lettered_with_the_last_error(hosted, clock):
    w, host, twin = hosted
    attempts = []

    def flaky(request):
        attempts.append(request.request_id)
        raise TransientError(f"ray head busy (attempt {len(attempts)})")

    twin.ensure_compute = flaky
    w.broker.send(
        w.settings.queue_name, json.dumps({"env": "CartPole-v1", "request_id": "t"}), message_id="t"
    )
    tries = w.settings.intake_retry_attempts + 1
    for _ in range(3 * tries):  # each re-send waits for its time: step the clock past the longest delay
        host.drain()
        clock.advance(w.settings.intake_retry_max_delay_s + 1)
    intakes = [i for i in host.invocations if i.function == "intake"]
    # one delivery each: a transient fault spends a scheduled re-send, not the delivery budget
    # the last one is dead-lettered by the intake itself (the rejecter), naming the last error
    assert [(i.delivery_count, i.outcome) for i in intakes] == [(1, "completed")] * (tries - 1) + [
        (1, "settled_by_handler")
    ]
    assert len(attempts) == tries
    (dead,) = w.broker.dead_letters(w.settings.queue_name)
    assert f"attempt {tries}" in dead.description
    assert twin.jobs_per_request() == {}
    rec = w.store.get("t")  # accounted for: the record says where the request went and why
    assert rec.state is RunState.rejected and f"after {tries} tries" in rec.error
    assert "rlq dead-letters --resubmit" in rec.error
    # Nothing is lost: resubmitting the dead letter once the fault is gone runs it.
    del twin.ensure_compute
    w.broker.resubmit_dead_letter(w.settings.queue_name, dead.sequence_number)
    host.drain()
    assert twin.jobs_per_request() == {"t": 1}
    assert w.store.get("t").state is RunState.submitted


# --- the answer to POST /api/trainings matches what happened ------------------------------------


def make_read_only(store) -> None:
    """From now on the store's connections refuse every write as a read-only file does
    (SQLITE_READONLY, 'attempt to write a readonly database'); reads still work."""
    db = store._db
    open_writable = db._open

    def open_read_only():
        conn = open_writable()
        conn.execute("PRAGMA query_only=1")
        return conn

    db._open = open_read_only
    db._local = threading.local()  # the connections already open are dropped (and closed)


def post(host, body: dict):
    resp = host.handle_http(
        "POST",
        "http://127.0.0.1/api/trainings",
        {"Content-Type": "application/json"},
        json.dumps(body).encode(),
    )
    return resp.status_code, json.loads(resp.get_body() or b"{}"), resp.headers


def test_a_read_only_store_answers_503_and_queues_nothing_however_often_the_client_retries(hosted):
    w, host, twin = hosted
    make_read_only(w.store)
    for _ in range(3):  # a client retrying without an id: a new request each time
        status, body, headers = post(host, {"env": "CartPole-v1"})
        assert status == 503 and headers["Retry-After"]
        assert "readonly" in body["errors"][0]["message"]
    assert w.broker.peek(w.settings.queue_name) == []
    for _ in range(20):
        host.drain()
    assert w.broker.dead_letters(w.settings.queue_name) == []
    assert twin.jobs_per_request() == {}


def test_a_request_the_queue_refused_is_503_recorded_as_not_queued_and_runs_when_sent_again(hosted):
    w, host, twin = hosted
    send = w.service.core.sender.send

    def unreachable(*args, **kwargs):
        raise TransientError("the queue is unreachable")

    w.service.core.sender.send = unreachable
    status, body, _ = post(host, {"env": "CartPole-v1", "request_id": "q1"})
    assert status == 503 and "unreachable" in body["errors"][0]["message"]
    rec = w.store.get("q1")  # GET /api/trainings/q1 says it was not queued, not "received" for good
    assert rec.state is RunState.rejected and "not queued" in rec.error
    w.service.core.sender.send = send
    status, body, _ = post(host, {"env": "CartPole-v1", "request_id": "q1"})
    assert status == 202
    host.drain()
    assert twin.jobs_per_request() == {"q1": 1}
    assert w.store.get("q1").state is RunState.submitted


def test_a_queued_request_is_202_and_recorded(hosted):
    w, host, _ = hosted
    status, _, headers = post(host, {"env": "CartPole-v1", "request_id": "ok1"})
    assert status == 202 and headers["Location"] == "/api/trainings/ok1"
    assert [m.message_id for m in w.broker.peek(w.settings.queue_name)] == ["ok1"]
    assert w.store.get("ok1").state is RunState.received


# --- health means ready ----------------------------------------------------------------------------


def health(host):
    resp = host.handle_http("GET", "http://127.0.0.1/api/health", {}, b"")
    return resp.status_code, json.loads(resp.get_body())


def test_health_is_200_when_the_store_writes_the_queue_takes_messages_and_the_compute_answers(hosted):
    _, host, _ = hosted
    status, body = health(host)
    assert status == 200 and body["status"] == "ok"
    assert {name: check["ok"] for name, check in body["checks"].items()} == {
        "store": True,
        "queue": True,
        "topic": True,
        "compute:twin": True,
    }
    assert "writable" in body["checks"]["store"]["detail"]


def test_health_is_503_naming_a_store_that_cannot_write(hosted):
    w, host, _ = hosted
    make_read_only(w.store)
    status, body = health(host)
    assert status == 503 and body["status"] == "unavailable"
    assert body["checks"]["store"]["ok"] is False and "readonly" in body["checks"]["store"]["detail"]
    assert body["checks"]["queue"]["ok"] is True


def test_health_is_503_naming_a_queue_that_cannot_take_messages(hosted):
    w, host, _ = hosted
    make_read_only(w.broker)
    status, body = health(host)
    assert status == 503 and body["checks"]["queue"]["ok"] is False
    assert "readonly" in body["checks"]["queue"]["detail"]


def test_health_is_503_naming_a_compute_that_does_not_answer(tmp_path, clock):
    from shared.adapters.compute.ray_jobs import RayJobsBackend

    settings = Settings(_env_file=None, data_dir=tmp_path / "rlq", backend="ray")  # type: ignore[call-arg]
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray = RayJobsBackend(address=f"http://127.0.0.1:{port}", settings=settings)
    host = LocalHost.for_wiring(build(settings, compute={"ray": ray}, clock=clock), clock=clock.epoch)
    try:
        status, body = health(host)
    finally:
        host.close()
    assert status == 503
    check = body["checks"]["compute:ray"]
    assert check["ok"] is False and "unreachable" in check["detail"] and str(port) in check["detail"]


def test_a_poll_tick_with_failures_is_logged_and_recorded_as_a_failure(hosted, caplog):
    w, host, twin = hosted
    w.broker.send(
        w.settings.queue_name, json.dumps({"env": "CartPole-v1", "request_id": "p1"}), message_id="p1"
    )
    host.drain()
    assert w.store.get("p1").state is RunState.submitted

    def down(run_id):
        raise TransientError("the compute is down")

    twin.status = down
    caplog.set_level(logging.INFO)
    host.tick_timers(now=host.next_due("poller"))
    (tick,) = [i for i in host.invocations if i.function == "poller"]
    assert tick.outcome == "error" and "the compute is down" in tick.error
    failed = [r for r in caplog.records if "poll tick failed for 1 of 1 run" in r.getMessage()]
    assert failed and failed[0].levelno == logging.WARNING


# --- descriptors: every request's SQLite connections are closed or reused ------------------------


def sqlite_fds(data_dir: Path) -> int:
    """Descriptors on the databases under ``data_dir`` (each connection: the file and its WAL)."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            n += target.startswith(str(data_dir)) and ".sqlite3" in target
    return n


def one_request(port: int, i: int) -> int:
    """A POST of a new request or a GET of the previous one, each on a new connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        if i % 2:
            body = json.dumps({"env": "CartPole-v1", "request_id": f"fd-{i}"})
            conn.request("POST", "/api/trainings", body, {"Content-Type": "application/json"})
        else:
            conn.request("GET", f"/api/trainings/fd-{i - 1}" if i else "/api/health")
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def test_descriptors_stay_flat_over_a_thousand_http_requests(tmp_path):
    data_dir = tmp_path / "rlq"
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, data_dir=data_dir, backend="twin", poll_schedule="*/1 * * * * *", poll_concurrency=8
    )
    host = LocalHost.for_wiring(build(settings))
    host.start()
    try:
        for i in range(200):  # warm up: the server's and the function pool's threads exist now
            one_request(host.http_port, i)
        base, base_threads = open_fds(), threading.active_count()
        statuses = Counter(one_request(host.http_port, 200 + i) for i in range(1000))
        grown, threads, on_dbs = open_fds() - base, threading.active_count(), sqlite_fds(data_dir)
    finally:
        host.close()
    assert statuses == {202: 500, 200: 500}
    # Threads are pooled, and a connection lives no longer than its thread: at most one per
    # database (its file and WAL) per live thread, and no growth beyond new threads' own
    # (before: about 3 more descriptors per request, 3,000 here).
    assert on_dbs <= 2 * 3 * threads, (on_dbs, threads)
    assert grown <= 4 * max(0, threads - base_threads) + 8, (base, grown, base_threads, threads)


def test_rlq_serve_under_ulimit_1024_accepts_and_submits_300_requests(tmp_path):
    """The reproduction from the field: ``ulimit -n 1024``, then 300 POSTs of distinct requests."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RLQ_")}
    env.update(
        RLQ_DATA_DIR=str(tmp_path / "rlq"),
        RLQ_BACKEND="twin",
        RLQ_POLL_SCHEDULE="*/1 * * * * *",
        RLQ_MAX_IN_FLIGHT="1000",  # every request is submitted at once, none deferred
        # Each poll thread keeps one queue and one run-store connection (4 descriptors) for its life:
        # at the default of 128 threads that steady state alone is ~512. A small pool keeps the bound
        # below about what a leak of one connection per request (300 requests) would add.
        RLQ_POLL_CONCURRENCY="16",
        PYTHONPATH=str(Path(__file__).resolve().parents[2]),
    )

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))

    log = (tmp_path / "serve.log").open("wb")  # a file, not a pipe: nobody drains a pipe while posting
    proc = subprocess.Popen(
        [sys.executable, "-m", "shared.cli", "serve", "--port", str(port)],
        env=env,
        preexec_fn=limit,  # only sets a resource limit in the child
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{base}/api/health", timeout=2).status_code == 200:
                    break
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
            time.sleep(0.2)
        statuses = Counter(
            httpx.post(
                f"{base}/api/trainings", json={"env": "CartPole-v1", "request_id": f"u-{i}"}, timeout=30
            ).status_code
            for i in range(300)
        )
        assert statuses == {202: 300}
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            items = httpx.get(f"{base}/api/trainings", params={"limit": 1000}, timeout=30).json()["items"]
            if len(items) == 300 and all(r["state"] not in ("received", "rejected") for r in items):
                break
            time.sleep(1)
        assert len(items) == 300
        assert Counter(r["state"] for r in items if r["state"] in ("received", "rejected")) == {}
        assert httpx.get(f"{base}/api/health", timeout=5).status_code == 200
        fds = len(os.listdir(f"/proc/{proc.pid}/fd"))
        assert fds < 300, fds
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
