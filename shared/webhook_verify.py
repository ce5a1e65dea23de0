"""Verify an rlq webhook on the receiving side (the Standard Webhooks scheme).

This module depends on the standard library only, so a receiver can copy this one file into its own
code base. rlq signs every delivery with the headers

    webhook-id:        <message id>            (the same on every retry: drop repeats by it)
    webhook-timestamp: <unix seconds>          (the time of this attempt)
    webhook-signature: v1,<base64 HMAC-SHA256> [v1,<...> ...]   (one per active secret)

where the HMAC key is the base64 part of a ``whsec_…`` secret and the signed content is
``f"{id}.{timestamp}.{body}"``. During a secret rotation rlq signs with every configured secret, so
a receiver holding either the old or the new secret accepts the message.

Usage::

    from webhook_verify import verify, WebhookVerificationError
    try:
        event = verify(request_body_bytes, request_headers, ["whsec_..."])
    except WebhookVerificationError as err:
        return 400, err.reason
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["SECRET_PREFIX", "WebhookVerificationError", "secret_key", "sign", "verify"]

SECRET_PREFIX = "whsec_"
# A signature header longer than this is not something rlq sends; refusing it bounds the work.
_MAX_SIGNATURE_HEADER = 4096


class WebhookVerificationError(Exception):
    """The message cannot be trusted; ``reason`` says why (safe to log: it holds no secret)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret (the prefix is optional)."""
    text = secret.strip()
    text = text.removeprefix(SECRET_PREFIX)
    try:
        # Unpadded base64 is common in secrets; pad it as the reference implementations do.
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        # The message must not echo the secret itself.
        raise ValueError("webhook secret is not base64 after the 'whsec_' prefix") from None
    if len(key) < 16:
        raise ValueError("webhook secret is shorter than 16 bytes once decoded; use 24 to 64 random bytes")
    return key


def sign(msg_id: str, timestamp: int, payload: bytes, secret: str) -> str:
    """One ``v1,<base64>`` signature of ``payload`` for ``msg_id`` at ``timestamp``."""
    signed = f"{msg_id}.{timestamp}.".encode() + payload
    mac = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode("ascii")


def verify(  # noqa: C901 - the Standard Webhooks checks in the spec's order, one function receivers copy whole
    payload: bytes | str,
    headers: Mapping[str, str],
    secrets: Sequence[str],
    *,
    tolerance_s: float = 300,
    now: float | None = None,
) -> dict[str, Any]:
    """Check the signature and timestamp of one delivery and return its decoded JSON body.

    ``payload`` must be the raw request body, exactly as received (re-serialised JSON will not
    match). ``headers`` may be any mapping; names are compared case-insensitively. ``secrets`` are
    all the secrets currently accepted. The timestamp must lie within ``tolerance_s`` of ``now``
    in both directions, which bounds replays. Raises :class:`WebhookVerificationError`.
    """
    body = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
    lower = {str(k).lower(): str(v) for k, v in headers.items()}
    msg_id = lower.get("webhook-id")
    stamp = lower.get("webhook-timestamp")
    signature = lower.get("webhook-signature")
    missing = [
        name
        for name, value in (
            ("webhook-id", msg_id),
            ("webhook-timestamp", stamp),
            ("webhook-signature", signature),
        )
        if not value
    ]
    if missing:
        raise WebhookVerificationError(f"missing header(s): {', '.join(missing)}")
    assert msg_id is not None and stamp is not None and signature is not None
    if not secrets:
        raise WebhookVerificationError("no secret configured to verify with")
    if len(signature) > _MAX_SIGNATURE_HEADER:
        raise WebhookVerificationError("webhook-signature header is too long")

    try:
        timestamp = int(stamp.strip())
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not an integer number of seconds") from None
    current = time.time() if now is None else now
    if timestamp < current - tolerance_s:
        raise WebhookVerificationError(
            f"webhook-timestamp is {current - timestamp:.0f} s old; the tolerance is {tolerance_s:g} s"
        )
    if timestamp > current + tolerance_s:
        raise WebhookVerificationError(
            f"webhook-timestamp is {timestamp - current:.0f} s in the future; "
            f"the tolerance is {tolerance_s:g} s"
        )

    offered = []
    for part in signature.split():
        version, _, value = part.partition(",")
        if version == "v1" and value:
            offered.append(value.encode("ascii", "replace"))
    if not offered:
        raise WebhookVerificationError("webhook-signature holds no v1 signature")

    for secret in secrets:
        expected = sign(msg_id, timestamp, body, secret).partition(",")[2].encode("ascii")
        # compare_digest on every candidate: timing does not tell how close a forgery came.
        if any(hmac.compare_digest(expected, candidate) for candidate in offered):
            break
    else:
        raise WebhookVerificationError("no signature matches any accepted secret")

    try:
        decoded = json.loads(body)
    except ValueError:
        raise WebhookVerificationError("the body is not JSON") from None
    if not isinstance(decoded, dict):
        raise WebhookVerificationError("the body is not a JSON object")
    return decoded
