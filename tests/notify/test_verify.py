"""The receiver-side verifier (shared/webhook_verify.py) and the sender's signatures agree."""

from __future__ import annotations

import ast
import base64
import json
import time
from pathlib import Path

import pytest

from shared.adapters.notify.webhooks import signature_headers
from shared.webhook_verify import WebhookVerificationError, sign, verify

from .conftest import OLD_SECRET, SECRET

NOW = 1_767_225_600  # 2026-01-01T00:00:00Z
BODY = json.dumps(
    {"type": "training.completed", "data": {"request_id": "r1", "final_reward": 475.5}}
).encode()


def headers(
    body: bytes = BODY, *, msg_id: str = "r1:completed", ts: int = NOW, secrets: tuple[str, ...] = (SECRET,)
) -> dict[str, str]:
    return signature_headers(msg_id, body, secrets, timestamp=ts)


def test_valid_signature_is_accepted_and_body_decoded() -> None:
    event = verify(BODY, headers(), [SECRET], now=NOW)
    assert event["data"]["final_reward"] == 475.5


def test_signature_is_hmac_sha256_of_id_timestamp_body_with_the_decoded_key() -> None:
    # Recompute by hand from the scheme's definition, independent of sign().
    import hashlib
    import hmac

    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    mac = hmac.new(key, f"r1:completed.{NOW}.".encode() + BODY, hashlib.sha256).digest()
    assert headers()["webhook-signature"] == "v1," + base64.b64encode(mac).decode()


def test_header_names_are_case_insensitive() -> None:
    upper = {k.upper(): v for k, v in headers().items()}
    assert verify(BODY, upper, [SECRET], now=NOW)["type"] == "training.completed"


@pytest.mark.parametrize("tamper", ["body", "id", "timestamp", "signature"])
def test_tampering_is_rejected(tamper: str) -> None:
    h = headers()
    body = BODY
    if tamper == "body":
        body = BODY.replace(b"475.5", b"499.9")
    elif tamper == "id":
        h["webhook-id"] = "r2:completed"
    elif tamper == "timestamp":
        h["webhook-timestamp"] = str(NOW + 1)
    else:
        sig = bytearray(base64.b64decode(h["webhook-signature"][3:]))
        sig[0] ^= 1
        h["webhook-signature"] = "v1," + base64.b64encode(bytes(sig)).decode()
    with pytest.raises(WebhookVerificationError, match="no signature matches"):
        verify(body, h, [SECRET], now=NOW)


def test_wrong_secret_is_rejected() -> None:
    with pytest.raises(WebhookVerificationError, match="no signature matches"):
        verify(BODY, headers(), [OLD_SECRET], now=NOW)


def test_old_and_future_timestamps_are_rejected_both_ways() -> None:
    h = headers(ts=NOW - 301)
    with pytest.raises(WebhookVerificationError, match="301 s old"):
        verify(BODY, h, [SECRET], now=NOW)
    h = headers(ts=NOW + 301)
    with pytest.raises(WebhookVerificationError, match="in the future"):
        verify(BODY, h, [SECRET], now=NOW)
    # inside the tolerance on both sides
    assert verify(BODY, headers(ts=NOW - 299), [SECRET], now=NOW)
    assert verify(BODY, headers(ts=NOW + 299), [SECRET], now=NOW)


def test_rotation_sender_signs_with_every_secret_and_either_receiver_accepts() -> None:
    h = headers(secrets=(SECRET, OLD_SECRET))
    assert len(h["webhook-signature"].split(" ")) == 2
    assert verify(BODY, h, [OLD_SECRET], now=NOW)  # receiver not yet rotated
    assert verify(BODY, h, [SECRET], now=NOW)  # receiver already rotated
    # a receiver accepting both during rotation takes a message signed with the old one only
    assert verify(BODY, headers(secrets=(OLD_SECRET,)), [SECRET, OLD_SECRET], now=NOW)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_headers_are_named(missing: str) -> None:
    h = headers()
    del h[missing]
    with pytest.raises(WebhookVerificationError, match=missing):
        verify(BODY, h, [SECRET], now=NOW)


def test_non_integer_timestamp_and_unknown_versions_are_rejected() -> None:
    h = headers()
    h["webhook-timestamp"] = "soon"
    with pytest.raises(WebhookVerificationError, match="not an integer"):
        verify(BODY, h, [SECRET], now=NOW)
    h = headers()
    h["webhook-signature"] = h["webhook-signature"].replace("v1,", "v9,")
    with pytest.raises(WebhookVerificationError, match="no v1 signature"):
        verify(BODY, h, [SECRET], now=NOW)


def test_bad_secret_is_reported_without_echoing_it() -> None:
    with pytest.raises(ValueError) as err:
        sign("id", NOW, BODY, "whsec_not*base64!")
    assert "not*base64" not in str(err.value)


def test_verifier_is_stdlib_only_so_receivers_can_copy_it() -> None:
    import sys

    source = Path(__file__).parents[2] / "shared" / "webhook_verify.py"
    tree = ast.parse(source.read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported - {"__future__"} <= set(sys.stdlib_module_names), imported


def test_agrees_with_the_standardwebhooks_reference_package() -> None:
    import standardwebhooks as sw

    now = int(time.time())  # the reference package only knows wall time
    reference = sw.Webhook(SECRET)
    ours = headers(ts=now)
    # the reference verifies what rlq signs ...
    assert reference.verify(BODY, ours)["data"]["request_id"] == "r1"
    # ... and rlq verifies what the reference signs
    from datetime import UTC, datetime

    theirs = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(now),
        "webhook-signature": reference.sign("msg_1", datetime.fromtimestamp(now, UTC), BODY.decode()),
    }
    assert verify(BODY, theirs, [SECRET])["type"] == "training.completed"
    assert sign("msg_1", now, BODY, SECRET) == theirs["webhook-signature"]
