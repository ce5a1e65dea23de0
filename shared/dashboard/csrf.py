"""Cross-site request protection: the dashboard's POSTs (Cancel, Resubmit) and the JSON API's
state-changing routes (submit, cancel).

* **Fetch metadata / Origin** (:func:`cross_site`, every state-changing route). A browser says
  where a request comes from: ``Sec-Fetch-Site`` must be ``same-origin`` and, when an ``Origin`` is sent, it must be this page's own origin. A cross-site form
  or ``fetch`` is refused here even if it somehow carried the token.
* **JSON only** (:func:`not_json`, the JSON API). A body must say ``Content-Type:
  application/json``; a cross-site page can send ``text/plain`` or a form without asking the
  server first (a "simple" request), never JSON.
* **Signed double-submit token** (:func:`refusal`, the dashboard's forms). Every page sets a token
  in a ``SameSite=Strict``, ``HttpOnly`` cookie and renders the same token in each form; a POST must
  carry both, equal, and the token must be one this server issued: ``<nonce>.<HMAC-SHA256 of the
  nonce under the server's secret>``. A token someone chose (a cookie planted from a sibling
  domain, say) fails the signature. The secret is the ``csrf_secret`` setting (``RLQ_CSRF_SECRET``) when set (every instance of
  a scaled-out app must share it), else a random key kept in ``data_dir/csrf.key`` (mode 0600),
  else a random key for this process.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
from functools import lru_cache
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import urlsplit

import azure.functions as func

COOKIE = "rlq_csrf"
FIELD = "csrf_token"
KEY_FILE = "csrf.key"
_TOKEN_RE = re.compile(r"^([A-Za-z0-9_-]{32})\.([A-Za-z0-9_-]{43})$")
_JSON_TYPES = ("application/json",)


@lru_cache(maxsize=8)
def _file_secret(data_dir: Path) -> bytes:
    path = data_dir / KEY_FILE
    try:
        return bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError):
        pass
    key = secrets.token_bytes(32)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process wrote it first: use theirs
        return bytes.fromhex(path.read_text().strip())
    except OSError:  # a read-only or missing data directory: a key for this process only
        return key
    with os.fdopen(fd, "w") as f:
        f.write(key.hex())
    return key


def server_secret() -> bytes:
    """The key tokens are signed with (see the module docstring for where it comes from)."""
    from shared.composition import wiring  # the settings of the running app

    settings = wiring().settings
    if settings.csrf_secret is not None:
        return settings.csrf_secret.get_secret_value().encode()
    return _file_secret(Path(settings.data_dir).resolve())


def _sign(nonce: str, secret: bytes) -> str:
    mac = hmac.new(secret, b"rlq-csrf:" + nonce.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def issued(token: str) -> bool:
    """Whether ``token`` is one this server signed."""
    m = _TOKEN_RE.match(token)
    return m is not None and hmac.compare_digest(m.group(2), _sign(m.group(1), server_secret()))


def new_token() -> str:
    nonce = secrets.token_urlsafe(24)  # 32 characters
    return f"{nonce}.{_sign(nonce, server_secret())}"


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
    if morsel is None or not issued(morsel.value):
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
    token = new_token()
    secure = "; Secure" if urlsplit(req.url).scheme == "https" else ""
    return token, f"{COOKIE}={token}; Path=/; SameSite=Strict; HttpOnly{secure}"


def cross_site(req: func.HttpRequest) -> str | None:
    """Why this state-changing request is refused as sent by another site, or None.

    Clients that are not browsers (curl, :mod:`shared.client`) send neither header and pass."""
    site = (req.headers.get("sec-fetch-site") or "").lower()
    if site and site != "same-origin":
        return f"the request came from another site (Sec-Fetch-Site: {site})"
    origin = req.headers.get("origin")
    if origin is not None and origin.lower() != _origin(req.url):
        return f"the request came from another origin (Origin: {origin[:100]})"
    return None


def not_json(req: func.HttpRequest) -> str | None:
    """Why this request's body is refused as not JSON, or None (an empty body needs no type)."""
    if not req.get_body():
        return None
    sent = (req.headers.get("content-type") or "").split(";", 1)[0].strip().lower()
    if sent in _JSON_TYPES:
        return None
    return f"Content-Type {sent or '(none)'!r} is not accepted; send the body as application/json"


def refusal(req: func.HttpRequest) -> str | None:
    """Why this form POST is not accepted as coming from the dashboard itself, or None when it is."""
    site = cross_site(req)
    if site is not None:
        return site
    # Old browsers and non-browser clients send neither header; the token still has to match.
    cookie = _cookie_token(req)
    try:
        sent = req.form.get(FIELD)
    except Exception:  # noqa: BLE001 - an unparsable form body is simply a missing token
        sent = None
    if cookie is None or not sent:
        return "the form's security token is missing or was not issued here; reload the page and try again"
    if not hmac.compare_digest(cookie.encode(), str(sent).encode()):
        return "the form's security token does not match; reload the page and try again"
    return None
