"""The HTTP driver: routing over real HTTP on waitress, malformed requests, idle clients, stop."""

from __future__ import annotations

import json
import logging
import os
import resource
import socket
import threading
import time

import httpx
import pytest

from shared.localhost import LocalHost
from tests.localhost.hosted_app import make_app


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
