"""shared/client.py against the real local host: the function app's HTTP API on a socket, the SQLite
queue and store, the compute twin (instant jobs) driven by the host's own poller timer."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from shared.cli.local import choose_port
from shared.client import (
    FUNCTION_KEY_HEADER,
    ApiError,
    Client,
    RequestRejected,
    RunNotFound,
    ServiceUnavailable,
    WaitTimeout,
    servicebus_message,
)
from tests.client.conftest import CARTPOLE

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def client(serve):
    host, _ = serve()
    with Client(host.base_url, retries=2, backoff_s=0.05) as c:
        yield c


def test_submit_get_and_wait_return_the_run_and_its_completion_message(client):
    rid = client.submit({**CARTPOLE, "experiment": "client", "tags": {"team": "rl"}})

    record = client.get(rid)
    assert record["request_id"] == rid and record["request"]["experiment"] == "client"
    done = client.wait(rid, timeout_s=30, interval_s=0.2)
    assert done["request_id"] == rid and done["message_id"] == f"{rid}:completed"
    assert done["status"] == "Completed" and done["tags"] == {"team": "rl"}
    assert done["checkpoint_path"].startswith("file://")
    assert rid in [r["request_id"] for r in client.list()]


def test_a_refused_request_raises_the_same_field_errors_the_api_returns(client):
    bad = {"env": "CartPole-v9", "algorithm": "A2C", "stop": {"time_total_s": 60}}
    raw = httpx.post(f"{client.api_url}/trainings", json=bad, timeout=10)
    assert raw.status_code == 400

    with pytest.raises(RequestRejected) as err:
        client.submit(bad)

    assert err.value.status_code == 400
    assert err.value.errors == raw.json()["errors"]
    assert {e["field"] for e in err.value.errors} >= {"algorithm", "env"}
    assert client.list() == []  # nothing was queued or recorded


def test_an_unknown_id_is_run_not_found(client):
    with pytest.raises(RunNotFound) as err:
        client.get("nobody")
    assert err.value.errors == [{"field": "request_id", "message": "no training request 'nobody'"}]
    with pytest.raises(RunNotFound):
        client.cancel("nobody")


def test_cancel_ends_the_run_canceled(serve):
    host, w = serve(timers=False)  # the poller runs when the test says so
    with Client(host.base_url) as c:
        rid = c.submit(CARTPOLE)
        deadline = time.monotonic() + 20
        while c.get(rid)["state"] != "submitted":  # the host's queue receiver ran intake
            assert time.monotonic() < deadline, c.get(rid)
            time.sleep(0.05)

        record = c.cancel(rid)

        assert record["cancel_requested"] is True
        w.service.poll_once()
        done = c.wait(rid, timeout_s=10, interval_s=0.1)
        assert done["status"] == "Canceled"


def test_wait_gives_up_after_its_timeout_with_the_last_record(serve):
    host, _ = serve(timers=False)  # no poller: the run never moves past submitted
    with Client(host.base_url) as c:
        rid = c.submit(CARTPOLE)
        started = time.monotonic()
        with pytest.raises(WaitTimeout) as err:
            c.wait(rid, timeout_s=0.5, interval_s=0.1)
    assert 0.5 <= time.monotonic() - started < 5
    assert err.value.record["request_id"] == rid and isinstance(err.value, TimeoutError)
    assert "still" in str(err.value)


def test_a_host_that_comes_up_late_is_retried_until_it_answers(serve):
    port = choose_port(0, fallback=True)
    starter = threading.Timer(1.0, lambda: serve(port=port))
    starter.start()
    try:
        with Client(f"http://127.0.0.1:{port}", retries=8, backoff_s=0.2, max_backoff_s=0.5) as c:
            started = time.monotonic()
            rid = c.submit(CARTPOLE)  # the first attempts are refused: nothing listens yet
            assert time.monotonic() - started >= 0.9
            assert c.wait(rid, timeout_s=30, interval_s=0.2)["status"] == "Completed"
    finally:
        starter.join()


def test_a_host_that_never_answers_is_given_up_after_the_bound():
    port = choose_port(0, fallback=True)  # free: connections are refused
    slept: list[float] = []
    c = Client(f"http://127.0.0.1:{port}", retries=3, backoff_s=0.1, sleep=slept.append)
    with c, pytest.raises(ServiceUnavailable) as err:
        c.get("r1")
    assert len(slept) == 3 and all(0 < s <= 10 for s in slept)
    assert "ConnectError" in str(err.value) and "after 4 attempts" in str(err.value)


def test_503_is_retried_honouring_retry_after_with_one_request_id_and_the_function_key():
    seen: list[httpx.Request] = []

    def api(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) < 3:  # what the API answers for a TransientError
            return httpx.Response(
                503,
                headers={"Retry-After": "2"},
                json={"errors": [{"field": "(service)", "message": "the queue is busy"}]},
            )
        rid = json.loads(request.content)["request_id"]
        return httpx.Response(202, json={"request_id": rid, "status_url": f"/api/trainings/{rid}"})

    slept: list[float] = []
    with Client(
        "https://rlq.example.net",
        function_key="k3y",
        transport=httpx.MockTransport(api),
        sleep=slept.append,
    ) as c:
        rid = c.submit(CARTPOLE)

    assert len(seen) == 3 and slept == [2.0, 2.0]
    assert {json.loads(r.content)["request_id"] for r in seen} == {rid}  # a retry is the same request
    assert all(r.headers[FUNCTION_KEY_HEADER] == "k3y" for r in seen)
    assert str(seen[0].url) == "https://rlq.example.net/api/trainings"


def test_a_wrong_function_key_is_an_api_error_and_not_retried():
    calls = []

    def api(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(401, text="")

    c = Client("https://rlq.example.net/api", transport=httpx.MockTransport(api))
    with c, pytest.raises(ApiError) as err:
        c.get("r1")
    assert len(calls) == 1 and err.value.status_code == 401 and not isinstance(err.value, RunNotFound)


# --- the Service Bus message for producers that write to the queue ----------------------------


def test_the_servicebus_message_is_what_intake_runs(serve):
    from azure.servicebus import ServiceBusMessage

    msg = servicebus_message({**CARTPOLE, "request_id": "sb-1"})

    assert isinstance(msg, ServiceBusMessage)
    assert msg.message_id == "sb-1" and msg.content_type == "application/json"
    assert msg.application_properties == {"rlq_message_id": "sb-1"}
    body = b"".join(msg.body)
    assert json.loads(body)["request_id"] == "sb-1"
    # Delivered by the queue (the SQLite twin of Service Bus) to the hosted intake, it runs:
    host, w = serve()
    w.broker.send(
        w.settings.queue_name,
        body,
        message_id=msg.message_id,
        content_type=msg.content_type,
        application_properties=dict(msg.application_properties),
    )
    with Client(host.base_url) as c:
        assert c.wait("sb-1", timeout_s=30, interval_s=0.2)["status"] == "Completed"


def test_wait_waits_for_a_request_that_intake_has_not_taken_yet(serve):
    """A producer that writes to the queue and then waits: the id is unknown until intake runs."""
    host, w = serve()
    msg = servicebus_message({**CARTPOLE, "request_id": "late-1"})
    sender = threading.Timer(
        1.0, lambda: w.broker.send(w.settings.queue_name, b"".join(msg.body), message_id=msg.message_id)
    )
    sender.start()
    try:
        with Client(host.base_url) as c:
            assert c.wait("late-1", timeout_s=30, interval_s=0.2)["status"] == "Completed"
    finally:
        sender.cancel()


def test_wait_on_an_id_that_never_appears_raises_run_not_found_after_the_timeout(client):
    started = time.monotonic()
    with pytest.raises(RunNotFound):
        client.wait("never-sent", timeout_s=1.0, interval_s=0.2)
    assert time.monotonic() - started >= 1.0


def test_the_servicebus_message_gets_a_request_id_when_the_request_has_none():
    msg = servicebus_message(CARTPOLE)
    assert msg.message_id and json.loads(b"".join(msg.body))["request_id"] == msg.message_id


def test_the_servicebus_message_refuses_a_bad_request_with_the_apis_field_errors(client):
    bad = {"env": "CartPole-v1", "stop": {"time_total_s": 60}, "config": {"rm_rf": 1}}
    with pytest.raises(RequestRejected) as from_helper:
        servicebus_message(bad)
    with pytest.raises(RequestRejected) as from_api:
        client.submit(bad)
    assert from_helper.value.errors == from_api.value.errors
    assert from_helper.value.errors[0]["field"] == "config"


def test_wait_on_a_request_intake_refused_raises_request_rejected(serve):
    host, w = serve()
    msg = servicebus_message({**CARTPOLE, "request_id": "orphan", "restore_from": "rlq://nobody"})
    w.broker.send(w.settings.queue_name, b"".join(msg.body), message_id=msg.message_id)
    with Client(host.base_url) as c, pytest.raises(RequestRejected) as err:
        c.wait("orphan", timeout_s=30, interval_s=0.2)
    assert "restore_from: rlq://nobody: no training request 'nobody'" in str(err.value)


def test_importing_the_client_loads_httpx_but_not_the_service():
    code = (
        "import sys, shared.client; "
        "heavy = [m for m in ('pydantic', 'azure.servicebus', 'shared.contracts', 'typer') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


def test_retrain_warm_starts_a_copy_from_the_parents_final_checkpoint(client):
    parent = client.submit({**CARTPOLE, "tags": {"model": "v1"}})
    parent_done = client.wait(parent, timeout_s=30, interval_s=0.2)

    child = client.retrain(parent, stop={"training_iteration": 5}, tags={"model": "v2"})

    record = client.get(child)
    assert child != parent and record["parent_request_id"] == parent
    assert record["request"]["restore_from"] == parent_done["checkpoint_path"]
    assert record["request"]["stop"]["training_iteration"] == 5
    assert record["request"]["stop"]["episode_reward_mean"] == 150
    done = client.wait(child, timeout_s=30, interval_s=0.2)
    assert done["status"] == "Completed" and done["parent_request_id"] == parent
    assert done["tags"] == {"model": "v2"}


def test_retrain_of_a_run_that_has_not_completed_is_refused_naming_restore_from(serve):
    host, _ = serve(timers=False)  # no poller: the parent never completes
    with Client(host.base_url) as c:
        parent = c.submit(CARTPOLE)
        with pytest.raises(RequestRejected) as err:
            c.retrain(parent)
    (e,) = err.value.errors
    assert e["field"] == "restore_from" and f"run {parent!r} did not complete" in e["message"]


class TricklingServer:
    """A real socket server on 127.0.0.1 that answers every request one byte a second, forever."""

    def __init__(self, *, in_headers: bool) -> None:
        import socket

        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.in_headers = in_headers
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn) -> None:
        with conn:
            conn.recv(65536)
            head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
            payload = head if self.in_headers else b""
            if not self.in_headers:
                conn.sendall(head)
            payload += b"{" + b" " * 200000
            for byte in payload:
                if self.stop.wait(1.0):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


def _timed_get(client: Client) -> tuple[float, BaseException | None]:
    """``client.get`` on a thread of its own: a call the timeout does not bound fails the test
    after 15 s instead of hanging it."""
    out: dict[str, object] = {}

    def call() -> None:
        t0 = time.monotonic()
        try:
            client.get("r-1")
        except BaseException as err:  # noqa: BLE001 - handed to the test to assert on
            out["err"] = err
        out["took"] = time.monotonic() - t0

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(15)
    assert not thread.is_alive(), "Client.get() was still reading after 15 s with a 3 s timeout"
    return float(out["took"]), out.get("err")  # type: ignore[arg-type]


@pytest.mark.parametrize("in_headers", [True, False], ids=["headers", "body"])
def test_a_server_trickling_a_byte_a_second_cannot_hold_a_call_past_its_timeout(in_headers):
    server = TricklingServer(in_headers=in_headers)
    try:
        with Client(f"http://127.0.0.1:{server.port}", timeout_s=3.0, retries=0) as client:
            took, err = _timed_get(client)
        assert took < 3.0 + 1.5, f"the call took {took:.1f} s with a 3 s timeout"
        assert isinstance(err, ServiceUnavailable) and "ReadTimeout" in str(err)
        # with retries, the whole call (attempts and waits) is still bounded by the one timeout
        with Client(f"http://127.0.0.1:{server.port}", timeout_s=3.0, retries=5, backoff_s=0.1) as client:
            took, err = _timed_get(client)
        assert took < 3.0 + 1.5 and isinstance(err, ServiceUnavailable)
        assert "timeout of 3 s spent" in str(err)
    finally:
        server.close()
