"""Cross-site request protection for the dashboard's POSTs (Cancel, Resubmit).

Two independent checks, both required:

* **Fetch metadata / Origin.** A browser says where a request comes from: ``Sec-Fetch-Site``
  must be ``same-origin`` and, when an ``Origin`` is sent, it must be this page's own origin. A
  cross-site form or ``fetch`` is refused here even if it somehow carried the token.
* **Double-submit token.** Every page sets a random token in a ``SameSite=Strict``, ``HttpOnly``
  cookie and renders the same token in each form; a POST must carry both, equal. Stateless, so it
  works across Functions instances with no secret to configure; another site can neither read
  the cookie nor the page to learn the token.
"""

from __future__ import annotations

import hmac
import re
import secrets
from http.cookies import SimpleCookie
from urllib.parse import urlsplit

import azure.functions as func

COOKIE = "rlq_csrf"
FIELD = "csrf_token"
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{32,128}$")


def _cookie_token(req: func.HttpRequest) -> str | None:
    raw = req.headers.get("cookie")
    if not raw:
        return None
    jar = SimpleCookie()
    try:
        jar.load(raw)
    except Exception:  # noqa: BLE001 - http.cookies raises CookieError and others on odd headers
        return None
    morsel = jar.get(COOKIE)
    if morsel is None or not _TOKEN_RE.match(morsel.value):
        return None
    return morsel.value


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def page_token(req: func.HttpRequest) -> tuple[str, str | None]:
    """The token for the forms on this page, and a ``Set-Cookie`` value when it is a new one."""
    token = _cookie_token(req)
    if token is not None:
        return token, None
    token = secrets.token_urlsafe(32)
    secure = "; Secure" if urlsplit(req.url).scheme == "https" else ""
    return token, f"{COOKIE}={token}; Path=/; SameSite=Strict; HttpOnly{secure}"


def refusal(req: func.HttpRequest) -> str | None:
    """Why this POST is not accepted as coming from the dashboard itself, or None when it is."""
    site = (req.headers.get("sec-fetch-site") or "").lower()
    if site and site != "same-origin":
        return f"the request came from another site (Sec-Fetch-Site: {site})"
    origin = req.headers.get("origin")
    if origin is not None and origin.lower() != _origin(req.url):
        return "the request came from another origin"
    # Old browsers and non-browser clients send neither header; the token still has to match.
    cookie = _cookie_token(req)
    try:
        sent = req.form.get(FIELD)
    except Exception:  # noqa: BLE001 - an unparsable form body is simply a missing token
        sent = None
    if cookie is None or not sent:
        return "the form's security token is missing; reload the page and try again"
    if not hmac.compare_digest(cookie.encode(), str(sent).encode()):
        return "the form's security token does not match; reload the page and try again"
    return None
