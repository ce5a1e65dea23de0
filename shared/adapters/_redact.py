"""One scrubber for every adapter: what an error message, a log line or a delivery may show.

Removes the values of connection-string keys and SAS / OAuth parameters (``AccountKey=…``,
``SharedAccessKey=…``, ``sig=…``, ``access_token=…``) and every secret the caller names (a Ray
token, a webhook URL's query string), whatever produced the text.
"""

from __future__ import annotations

import re

MASK = "***"

_SECRET_RE = re.compile(
    r"(?<![A-Za-z0-9_])(SharedAccessKey|SharedAccessSignature|AccountKey|access_token|sig|se|sv|sp|skn|"
    r"skoid|sktid)=([^&;\s\"']+)",
    re.IGNORECASE,
)


def scrub(text: str, *secrets: str | None) -> str:
    """``text`` without key / signature values and without any of ``secrets`` (longest first)."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return _SECRET_RE.sub(lambda m: f"{m.group(1)}={MASK}", text)
