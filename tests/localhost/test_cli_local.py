"""``rlq serve`` and ``rlq demo`` (shared/cli/local.py): the function app hosted on this machine,
ports, and the demo's webhook receiver, which checks every delivery's signature."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import standardwebhooks

from shared.cli.local import WebhookReceiver, choose_port, new_webhook_secret
from shared.errors import PermanentError
from shared.webhook_verify import WebhookVerificationError

ROOT = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("cli_env")


# --- demo and serve, end to end on the compute twin --------------------------------------------


def test_demo_on_the_twin_backend_completes_publishes_and_verifies_the_webhook(run, data_dir, monkeypatch):
    monkeypatch.setenv("RLQ_POLL_SCHEDULE", "*/1 * * * * *")

    result = run("demo", "--backend", "twin", "--port", "0", "--interval-s", "0.2", "--timeout-s", "60")

    assert result.exit_code == 0, result.output
    assert "webhook delivered and verified" in result.output
    assert '"status": "Completed"' in result.output
    assert re.search(r"dashboard: http://127\.0\.0\.1:\d+/api/ui/runs/demo-[0-9a-f]{10}\n", result.output)
    png = re.search(r"reward curve: (\S+)", result.output)
    assert png and Path(png.group(1)).read_bytes()[:4] == b"\x89PNG"


def test_serve_answers_http_and_stops_gracefully_on_sigterm(data_dir, tmp_path):
    env = {**os.environ, "RLQ_BACKEND": "twin", "RLQ_POLL_SCHEDULE": "*/1 * * * * *", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "shared.cli", "--data-dir", str(data_dir), "serve", "--port", "0"],
        cwd=str(ROOT),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        base = None
        seen = []
        for line in proc.stdout:  # type: ignore[union-attr]
            seen.append(line)
            m = re.search(r"API (http://127\.0\.0\.1:\d+/api)", line)
            if m:
                base = m.group(1)
                break
        assert base, "".join(seen)
        assert httpx.get(f"{base}/health", timeout=10).json()["status"] == "ok"
        assert f"dashboard: {base}/ui\n" in seen  # printed before the serving line
        assert "Training runs" in httpx.get(f"{base}/ui", timeout=10).text
        posted = httpx.post(
            f"{base}/trainings", json={"env": "CartPole-v1", "stop": {"time_total_s": 60}}, timeout=10
        )
        assert posted.status_code == 202
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, rest
    assert "host stopped" in rest


def test_a_busy_port_is_refused_for_serve_and_replaced_for_demo():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        busy = sock.getsockname()[1]
        with pytest.raises(PermanentError, match=f"port {busy}"):
            choose_port(busy, fallback=False)
        other = choose_port(busy, fallback=True)
    assert other != busy and other > 0


# --- the demo's webhook receiver ---------------------------------------------------------------

EVENT = {"type": "training.completed", "data": {"request_id": "r1", "status": "Completed"}}


def signed(secret: str, body: bytes, msg_id: str = "msg_1") -> dict[str, str]:
    """Headers as the Standard Webhooks reference package signs them (not rlq's own signer)."""
    now = datetime.now(UTC)
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": standardwebhooks.Webhook(secret).sign(msg_id, now, body.decode()),
    }


def test_the_receiver_keeps_a_signed_delivery_and_refuses_unsigned_or_forged_ones():
    secret, other = new_webhook_secret(), new_webhook_secret()
    body = json.dumps(EVENT).encode()
    with WebhookReceiver([secret]) as receiver:
        good = httpx.post(receiver.url, content=body, headers=signed(secret, body), timeout=10)
        unsigned = httpx.post(receiver.url, content=body, headers={"content-type": "application/json"})
        forged = httpx.post(receiver.url, content=body, headers=signed(other, body, "msg_2"), timeout=10)
        tampered = httpx.post(
            receiver.url, content=body.replace(b"Completed", b"Failed"), headers=signed(secret, body, "msg_3")
        )

    assert good.status_code == 204
    assert [unsigned.status_code, forged.status_code, tampered.status_code] == [401, 401, 401]
    assert receiver.events == [EVENT]
    assert len(receiver.failures) == 3


def test_the_receiver_never_skips_the_signature_check(monkeypatch):
    """No import fallback turns verification off: with the verifier module unimportable (as a
    missing optional dependency would be) an unsigned body is still refused."""
    monkeypatch.setitem(sys.modules, "shared.webhook_verify", None)  # any import of it now fails
    receiver = WebhookReceiver([new_webhook_secret()])
    try:
        with pytest.raises(WebhookVerificationError):
            receiver.verify(json.dumps(EVENT).encode(), {"content-type": "application/json"})
    finally:
        receiver.server.server_close()


def test_cli_logging_writes_to_the_stderr_of_the_moment_not_a_closed_one(monkeypatch):
    """An in-process CLI run swaps ``sys.stderr`` and closes its copy afterwards; a handler bound
    to that copy printed "Logging error ... I/O operation on closed file" for every later record."""
    import io
    import logging

    from shared.cli.local import configure_logging

    root = logging.getLogger()
    before = list(root.handlers)
    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    try:
        configure_logging(logging.INFO)
        first.close()
        second = io.StringIO()
        monkeypatch.setattr(sys, "stderr", second)
        logging.getLogger("shared.probe").warning("after the swap")
        assert "after the swap" in second.getvalue()
    finally:
        for h in root.handlers[:]:
            if h not in before:
                root.removeHandler(h)
