"""Azure ML (``azure-ai-ml``) / ARM SDK errors translated into :mod:`shared.errors`.

HTTP 408/409/429/5xx and connection faults → ``TransientError``; authorization → ``PermanentError``;
quota → ``ComputeError``; a request the service refuses (4xx, a validation error) → ``PermanentError``.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

from shared.adapters._redact import scrub
from shared.errors import ComputeError, PermanentError, TransientError

_STATUS_RE = re.compile(r"(?:response code|status code|status_code|http status)\D{0,5}(\d{3})", re.IGNORECASE)


def _status_of(err: BaseException) -> int | None:
    for obj in (err, getattr(err, "inner_exception", None), getattr(err, "response", None)):
        code = getattr(obj, "status_code", None)
        if isinstance(code, int):
            return code
    m = _STATUS_RE.search(str(err))
    return int(m.group(1)) if m else None


def readable(text: str, limit: int = 1500) -> str:
    """One line, no signatures or keys, bounded."""
    text = scrub(" ".join(str(text).split()))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def translate(err: BaseException, *, action: str) -> Exception:
    """The :mod:`shared.errors` exception for an Azure ML / ARM SDK error."""
    text = readable(str(err) or type(err).__name__)
    low = text.lower()
    status = _status_of(err)
    kind = type(err).__name__
    if "quota" in low:
        return ComputeError(f"Azure ML {action}: not enough quota: {text}")
    if (
        kind in ("AuthenticationException", "ClientAuthenticationError")
        or status in (401, 403)
        or "authorizationfailed" in low
    ):
        return PermanentError(
            f"Azure ML {action}: not authorized ({kind}); the function's identity needs 'AzureML Data "
            f"Scientist' (and 'AzureML Compute Operator' to create clusters) on the workspace: {text}",
            reason="AzureMLAuthorization",
        )
    if kind == "ResourceNotFoundError" or status == 404:
        return PermanentError(f"Azure ML {action}: not found: {text}", reason="AzureMLNotFound")
    if kind == "ValidationException":
        return PermanentError(f"Azure ML {action} refused: {kind}: {text}", reason="AzureMLRequest")
    if status is not None and (status in (408, 409, 429) or status >= 500):
        return TransientError(f"Azure ML {action} failed with HTTP {status}; try again: {text}")
    transient_types = (
        "ConnectionError",
        "Timeout",
        "ReadTimeout",
        "ConnectTimeout",
        "ClientRequestError",
        "ServiceRequestError",
        "ServiceResponseError",
        "TimeoutError",
    )
    if kind in transient_types or isinstance(err, (ConnectionError, TimeoutError)):
        return TransientError(f"Azure ML {action} failed ({kind}); try again: {text}")
    if kind in ("ValueError", "TypeError") and (status is None or 400 <= status < 500):
        return PermanentError(f"Azure ML {action} refused: {kind}: {text}", reason="AzureMLRequest")
    return TransientError(f"Azure ML {action} failed ({kind}); try again: {text}")


@contextlib.contextmanager
def sdk_errors(action: str) -> Iterator[None]:
    """Translate whatever the SDK raises inside the block; rlq's own errors pass through."""
    try:
        yield
    except (PermanentError, TransientError):
        raise
    except Exception as err:
        raise translate(err, action=action) from err
