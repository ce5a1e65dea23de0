"""Webhook delivery over real sockets: signatures, retries, Retry-After, 410, redirects, pinning."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime

import httpx
import pytest

from shared.adapters.notify.webhooks import (
    MemoryEndpointRegistry,
    SqliteEndpointRegistry,
    WebhookSender,
    parse_retry_after,
)
from shared.webhook_verify import verify

from .conftest import SECRET, FakeDNS, Receiver, Sleeps, make_pki

NOW = 1_767_225_600.0
BODY = json.dumps({"type": "training.completed", "data": {"request_id": "r1"}}).encode()


def sender(sleeps: Sleeps, **kw) -> WebhookSender:
    kw.setdefault("local_mode", True)
    kw.setdefault("max_attempts", 5)
    return WebhookSender(sleep=sleeps, clock=lambda: NOW, timeout_s=5, **kw)


def test_receiver_verifies_the_signature_with_the_shipped_verifier(
    receiver: Receiver, sleeps: Sleeps
) -> None:
    d = sender(sleeps).send(receiver.url(), BODY, message_id="r1:completed", secrets=[SECRET])
    assert (d.ok, d.attempts, d.status_code, d.error) == (True, 1, 200, None)
    [seen] = receiver.requests
    event = verify(seen.body, seen.headers, [SECRET], now=NOW)
    assert event["data"]["request_id"] == "r1"
    assert seen.headers["webhook-id"] == "r1:completed"
    assert seen.headers["webhook-timestamp"] == str(int(NOW))
    assert seen.headers["content-type"] == "application/json"
    assert sleeps == []


def test_500_twice_then_200_arrives_on_the_third_attempt(receiver: Receiver, sleeps: Sleeps) -> None:
    receiver.respond(500, 502)
    d = sender(sleeps, backoff_s=1.0).send(receiver.url(), BODY, message_id="m", secrets=[SECRET])
    assert (d.ok, d.attempts, d.status_code) == (True, 3, 200)
    assert len(receiver.requests) == 3
    # same id on every attempt, so receivers can drop repeats; each attempt is signed afresh
    assert {r.headers["webhook-id"] for r in receiver.requests} == {"m"}
    for r in receiver.requests:
        verify(r.body, r.headers, [SECRET], now=NOW)
    # full jitter: attempt n waits uniformly in [0, backoff * 2**(n-1)]
    assert len(sleeps) == 2 and 0 <= sleeps[0] <= 1.0 and 0 <= sleeps[1] <= 2.0


def test_429_retry_after_seconds_is_honoured(receiver: Receiver, sleeps: Sleeps) -> None:
    receiver.respond((429, {"Retry-After": "1"}))
    d = sender(sleeps, backoff_s=0.001).send(receiver.url(), BODY, message_id="m")
    assert d.ok and d.attempts == 2
    assert sleeps == [1.0]  # the header's value, not the (tiny) backoff


def test_503_retry_after_http_date_is_honoured_and_capped(receiver: Receiver, sleeps: Sleeps) -> None:
    in_7s = format_datetime(datetime.fromtimestamp(NOW + 7, UTC), usegmt=True)
    receiver.respond((503, {"Retry-After": in_7s}), (503, {"Retry-After": "3600"}))
    d = sender(sleeps, max_retry_after_s=60).send(receiver.url(), BODY, message_id="m")
    assert d.ok and d.attempts == 3
    assert sleeps == [7.0, 60.0]


def test_retry_after_parsing() -> None:
    assert parse_retry_after("120", now=NOW) == 120.0
    past = format_datetime(datetime.fromtimestamp(NOW - 30, UTC), usegmt=True)
    assert parse_retry_after(past, now=NOW) == 0.0
    assert parse_retry_after("soon", now=NOW) is None
    assert parse_retry_after(None, now=NOW) is None


def test_gives_up_after_max_attempts(receiver: Receiver, sleeps: Sleeps) -> None:
    receiver.respond(500, 500, 500, 500)
    d = sender(sleeps, max_attempts=3).send(receiver.url(), BODY, message_id="m")
    assert (d.ok, d.attempts, d.status_code) == (False, 3, 500)
    assert "HTTP 500" in (d.error or "")
    assert len(receiver.requests) == 3 and len(sleeps) == 2


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_4xx_is_not_retried(receiver: Receiver, sleeps: Sleeps, status: int) -> None:
    receiver.respond(status)
    d = sender(sleeps).send(receiver.url(), BODY, message_id="m")
    assert (d.ok, d.attempts, d.status_code) == (False, 1, status)
    assert len(receiver.requests) == 1 and sleeps == []


def test_408_is_retried(receiver: Receiver, sleeps: Sleeps) -> None:
    receiver.respond(408)
    assert sender(sleeps).send(receiver.url(), BODY, message_id="m").attempts == 2


def test_410_disables_the_endpoint_and_later_messages_skip_it(
    receiver: Receiver, sleeps: Sleeps, tmp_path
) -> None:
    registry = SqliteEndpointRegistry(tmp_path / "webhooks.sqlite3")
    receiver.respond(410)
    first = sender(sleeps, registry=registry).send(receiver.url("/hook?token=abc"), BODY, message_id="m1")
    assert (first.ok, first.attempts, first.status_code) == (False, 1, 410)
    assert "disabled" in (first.error or "")
    # a new sender over the same SQLite file: the decision survives a restart
    second = sender(sleeps, registry=SqliteEndpointRegistry(tmp_path / "webhooks.sqlite3")).send(
        receiver.url("/hook?token=abc"), BODY, message_id="m2"
    )
    assert (second.ok, second.attempts) == (False, 0)
    assert "skipped: endpoint disabled" in (second.error or "")
    assert len(receiver.requests) == 1  # no request for the second message
    [entry] = registry.list()
    assert entry.target == f"http://127.0.0.1:{receiver.port}/hook" and "abc" not in entry.target
    # another endpoint on the same host is unaffected; re-enabling restores delivery
    assert sender(sleeps, registry=registry).send(receiver.url("/other"), BODY, message_id="m3").ok
    assert registry.enable(receiver.url("/hook?token=abc"))
    assert sender(sleeps, registry=registry).send(receiver.url("/hook?token=abc"), BODY, message_id="m4").ok


def test_redirect_is_not_followed(receivers: Callable[..., Receiver], sleeps: Sleeps) -> None:
    first, elsewhere = receivers(), receivers()
    first.respond((302, {"Location": elsewhere.url("/stolen?x=1")}))
    d = sender(sleeps).send(first.url(), BODY, message_id="m", secrets=[SECRET])
    assert (d.ok, d.attempts, d.status_code) == (False, 1, 302)
    assert "redirect" in (d.error or "") and "not followed" in (d.error or "")
    assert elsewhere.requests == []


def test_connection_refused_is_retried_then_reported(sleeps: Sleeps) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    d = sender(sleeps, max_attempts=3).send(f"http://127.0.0.1:{port}/hook", BODY, message_id="m")
    assert (d.ok, d.attempts, d.status_code) == (False, 3, None)
    assert "ConnectError" in (d.error or "")


def test_connect_failure_moves_on_to_the_next_checked_address(
    receiver: Receiver, dns: FakeDNS, sleeps: Sleeps
) -> None:
    # ::1 first (nobody listens there on this port), then 127.0.0.1: one attempt, no backoff wait.
    dns.set("dual.test", ["::1", "127.0.0.1"])
    d = sender(sleeps).send(f"http://dual.test:{receiver.port}/hook", BODY, message_id="m")
    assert (d.ok, d.attempts) == (True, 1) and sleeps == []
    assert receiver.requests[0].headers["host"] == f"dual.test:{receiver.port}"


def test_a_silent_server_times_out_and_is_retried(sleeps: Sleeps) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # accepts connections (kernel backlog) but never answers
    try:
        port = listener.getsockname()[1]
        s = WebhookSender(local_mode=True, timeout_s=0.2, max_attempts=2, sleep=sleeps, clock=lambda: NOW)
        d = s.send(f"http://127.0.0.1:{port}/hook", BODY, message_id="m")
    finally:
        listener.close()
    assert (d.ok, d.attempts) == (False, 2) and "timeout" in (d.error or "")


def test_retries_stop_at_the_time_budget(sleeps: Sleeps) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    try:
        s = WebhookSender(
            local_mode=True,
            timeout_s=0.3,
            max_attempts=10,
            backoff_s=0,
            max_elapsed_s=0.5,
            sleep=sleeps,
            clock=lambda: NOW,
        )
        d = s.send(f"http://127.0.0.1:{listener.getsockname()[1]}/hook", BODY, message_id="m")
    finally:
        listener.close()
    assert not d.ok and d.attempts == 2  # 0.3 s, retry; 0.6 s >= 0.5 s budget, stop


def test_refused_url_is_not_retried_and_sends_nothing(sleeps: Sleeps) -> None:
    d = sender(sleeps, local_mode=False).send(
        "https://169.254.169.254/latest/meta-data", BODY, message_id="m"
    )
    assert (d.ok, d.attempts) == (False, 1)
    assert d.error and d.error.startswith("refused:") and "metadata" in d.error
    assert sleeps == []


def test_connects_to_the_checked_address_with_the_original_host_header(
    receiver: Receiver, dns: FakeDNS, sleeps: Sleeps
) -> None:
    # The name answers 127.0.0.1 at check time and an unroutable address afterwards: the request
    # still reaches the receiver, so httpx never resolved the name itself (no DNS rebinding).
    dns.set("hooks.rebind.test", ["127.0.0.1"], ["203.0.113.9"])
    d = sender(sleeps).send(f"http://hooks.rebind.test:{receiver.port}/hook?k=v", BODY, message_id="m")
    assert d.ok, d.error
    [seen] = receiver.requests
    assert seen.headers["host"] == f"hooks.rebind.test:{receiver.port}"
    assert seen.path == "/hook?k=v"
    assert dns.asked == ["hooks.rebind.test"]  # one lookup: ours


def test_https_pins_the_address_and_keeps_sni_and_certificate_name(
    receivers: Callable[..., Receiver], dns: FakeDNS, sleeps: Sleeps
) -> None:
    pki = make_pki("hooks.example.test")
    tls = receivers(tls=pki.server)
    dns.set("hooks.example.test", ["127.0.0.1"])
    d = sender(sleeps, http_client_factory=lambda: httpx.Client(verify=pki.client, trust_env=False)).send(
        f"https://hooks.example.test:{tls.port}/hook", BODY, message_id="m", secrets=[SECRET]
    )
    assert d.ok, d.error
    [seen] = tls.requests
    assert seen.sni == "hooks.example.test"  # SNI is the name, though we connected to 127.0.0.1
    assert seen.headers["host"] == f"hooks.example.test:{tls.port}"
    verify(seen.body, seen.headers, [SECRET], now=NOW)


def test_https_certificate_for_another_name_fails_without_retry(
    receivers: Callable[..., Receiver], dns: FakeDNS, sleeps: Sleeps
) -> None:
    pki = make_pki("someone-else.test")
    tls = receivers(tls=pki.server)
    dns.set("hooks.example.test", ["127.0.0.1"])
    d = sender(sleeps, http_client_factory=lambda: httpx.Client(verify=pki.client, trust_env=False)).send(
        f"https://hooks.example.test:{tls.port}/hook", BODY, message_id="m"
    )
    assert (d.ok, d.attempts) == (False, 1)
    assert "CERTIFICATE_VERIFY_FAILED" in (d.error or "")
    assert tls.requests == []


def test_secrets_in_the_query_never_reach_deliveries_or_logs(
    receiver: Receiver, sleeps: Sleeps, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.respond(500, 500)
    url = receiver.url("/hook?sig=TOPSECRETSIG&sv=1.0")
    with caplog.at_level(logging.DEBUG):
        d = sender(sleeps, max_attempts=2).send(url, BODY, message_id="m", secrets=[SECRET])
    assert d.target == f"http://127.0.0.1:{receiver.port}/hook"
    dumped = d.model_dump_json()
    assert "TOPSECRETSIG" not in dumped and SECRET not in dumped
    assert "TOPSECRETSIG" not in caplog.text and SECRET.removeprefix("whsec_") not in caplog.text
    assert receiver.requests[0].path.endswith("sig=TOPSECRETSIG&sv=1.0")  # the receiver does get it


def test_memory_registry_twin_behaves_like_sqlite(tmp_path) -> None:
    for registry in (MemoryEndpointRegistry(), SqliteEndpointRegistry(tmp_path / "r.sqlite3")):
        url = "https://h.example.com/x?sig=1"
        assert registry.disabled(url) is None
        registry.disable(url, reason="410 Gone")
        got = registry.disabled(url)
        assert got is not None and got.reason == "410 Gone" and got.target == "https://h.example.com/x"
        assert registry.disabled("https://h.example.com/x?sig=2") is None
        assert registry.enable(url) and not registry.enable(url)
        assert registry.list() == []


def test_concurrent_senders_share_one_sqlite_registry(
    tmp_path, receivers: Callable[..., Receiver], sleeps: Sleeps
) -> None:
    registry = SqliteEndpointRegistry(tmp_path / "r.sqlite3")
    hooks = [receivers() for _ in range(4)]
    for h in hooks:
        h.respond(410)
    results = []
    threads = [
        threading.Thread(
            target=lambda h=h: results.append(
                sender(sleeps, registry=registry).send(h.url(), BODY, message_id="m")
            )
        )
        for h in hooks
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.status_code for r in results) == [410] * 4
    assert len(registry.list()) == 4
