"""Outgoing webhooks: Standard Webhooks signing and retried, address-pinned delivery over httpx.

Why each piece exists:

* Every attempt first runs :func:`shared.urlguard.check_url` (the SSRF rules), which resolves the
  host and checks every address; the connection then goes to a checked address
  (:func:`pinned_url`), so a DNS answer that changes between the check and the connect (DNS
  rebinding) cannot redirect it.
* :class:`WebhookSender` posts one body to one URL with bounded retries, honouring ``Retry-After``,
  never following redirects, and disabling endpoints that answer 410 Gone (:class:`EndpointRegistry`).
* Errors and logs name a target by :func:`shared.urlguard.redact` (no query string, no user info): Teams Workflows
  URLs carry their signature in the query, and it must never reach a log line or a run record.
"""

from __future__ import annotations

import email.utils
import hashlib
import itertools
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, runtime_checkable
from urllib.parse import urlsplit

import httpx
import tenacity

from shared.adapters._redact import scrub
from shared.contracts.completion import Delivery
from shared.urlguard import IPAddress, ResolvedTarget, ResolveError, UnsafeUrl, check_url, redact
from shared.webhook_verify import secret_key, sign

log = logging.getLogger(__name__)


class _RedactUrls(logging.Filter):
    """httpx logs every request's full URL at INFO; a Workflows URL's query is its credential."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(isinstance(a, httpx.URL) for a in record.args):
            record.args = tuple(redact(str(a)) if isinstance(a, httpx.URL) else a for a in record.args)
        return True


if not any(isinstance(f, _RedactUrls) for f in logging.getLogger("httpx").filters):
    logging.getLogger("httpx").addFilter(_RedactUrls())

USER_AGENT = "rlq-webhooks/1"

__all__ = [
    "DisabledEndpoint",
    "EndpointRegistry",
    "MemoryEndpointRegistry",
    "SqliteEndpointRegistry",
    "WebhookSender",
    "parse_retry_after",
    "pinned_url",
    "signature_headers",
]


def pinned_url(target: ResolvedTarget, address: IPAddress) -> httpx.URL:
    """``target``'s URL with its host replaced by a checked address: httpx connects there, no DNS."""
    if address not in target.addresses:
        raise ValueError("address was not checked")
    return httpx.URL(target.url).copy_with(host=str(address))


# --- signing ---------------------------------------------------------------------------------


def signature_headers(msg_id: str, body: bytes, secrets: Sequence[str], *, timestamp: int) -> dict[str, str]:
    """Standard Webhooks headers for one attempt: one ``v1`` signature per secret (rotation)."""
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(timestamp)}
    if secrets:
        headers["webhook-signature"] = " ".join(sign(msg_id, timestamp, body, s) for s in secrets)
    return headers


def check_secrets(secrets: Sequence[str]) -> None:
    """Fail loudly, naming the setting, when a configured secret cannot sign."""
    for i, secret in enumerate(secrets):
        try:
            secret_key(secret)
        except ValueError as err:
            raise ValueError(f"RLQ_WEBHOOK_SECRETS entry {i + 1}: {err}") from None


# --- endpoints disabled after 410 Gone -------------------------------------------------------


@dataclass(frozen=True)
class DisabledEndpoint:
    key: str
    target: str
    reason: str
    disabled_at: datetime


def endpoint_key(url: str) -> str:
    """Endpoints are keyed by a hash of the full URL: the query may hold a secret, so it is not stored."""
    return hashlib.sha256(url.encode("utf-8")).hexdigest()


@runtime_checkable
class EndpointRegistry(Protocol):
    """Remembers endpoints that said 410 Gone, so later messages skip them."""

    def disabled(self, url: str) -> DisabledEndpoint | None: ...

    def disable(self, url: str, *, reason: str) -> None: ...

    def enable(self, url: str) -> bool:
        """Forget a disabled endpoint; True when it was disabled."""

    def list(self) -> list[DisabledEndpoint]: ...


class SqliteEndpointRegistry:
    """``disabled_endpoints`` in a SQLite file (default ``<data_dir>/webhooks.sqlite3``).

    A connection per call keeps it safe to share between the notifier's threads.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db, db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS disabled_endpoints ("
                " key TEXT PRIMARY KEY, target TEXT NOT NULL, reason TEXT NOT NULL,"
                " disabled_at TEXT NOT NULL)"
            )

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=10)

    def disabled(self, url: str) -> DisabledEndpoint | None:
        with closing(self._connect()) as db:
            row = db.execute(
                "SELECT key, target, reason, disabled_at FROM disabled_endpoints WHERE key = ?",
                (endpoint_key(url),),
            ).fetchone()
        return None if row is None else _entry(row)

    def disable(self, url: str, *, reason: str) -> None:
        with closing(self._connect()) as db, db:
            db.execute(
                "INSERT OR REPLACE INTO disabled_endpoints VALUES (?, ?, ?, ?)",
                (endpoint_key(url), redact(url), reason, datetime.now(UTC).isoformat()),
            )

    def enable(self, url: str) -> bool:
        with closing(self._connect()) as db, db:
            cursor = db.execute("DELETE FROM disabled_endpoints WHERE key = ?", (endpoint_key(url),))
            return cursor.rowcount > 0

    def list(self) -> list[DisabledEndpoint]:
        with closing(self._connect()) as db:
            rows = db.execute(
                "SELECT key, target, reason, disabled_at FROM disabled_endpoints ORDER BY disabled_at DESC"
            ).fetchall()
        return [_entry(r) for r in rows]


def _entry(row: tuple[str, str, str, str]) -> DisabledEndpoint:
    return DisabledEndpoint(row[0], row[1], row[2], datetime.fromisoformat(row[3]))


@dataclass
class MemoryEndpointRegistry:
    """In-memory twin of :class:`SqliteEndpointRegistry`."""

    entries: dict[str, DisabledEndpoint] = field(default_factory=dict)

    def disabled(self, url: str) -> DisabledEndpoint | None:
        return self.entries.get(endpoint_key(url))

    def disable(self, url: str, *, reason: str) -> None:
        key = endpoint_key(url)
        self.entries[key] = DisabledEndpoint(key, redact(url), reason, datetime.now(UTC))

    def enable(self, url: str) -> bool:
        return self.entries.pop(endpoint_key(url), None) is not None

    def list(self) -> list[DisabledEndpoint]:
        return sorted(self.entries.values(), key=lambda e: e.disabled_at, reverse=True)


# --- delivery --------------------------------------------------------------------------------


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


@dataclass(frozen=True)
class _Outcome:
    ok: bool
    attempt: int
    retry: bool = False
    status_code: int | None = None
    error: str | None = None
    retry_after_s: float | None = None


def _default_client() -> httpx.Client:
    # trust_env=False: an HTTP(S)_PROXY would resolve the name itself and bypass the address pinning.
    return httpx.Client(trust_env=False, follow_redirects=False)


def _reason(text: str) -> str:
    return "".join(c for c in text if c.isprintable())[:80]


class WebhookSender:
    """POSTs one body to one URL: SSRF-checked, pinned to the checked address, retried.

    Retried: connection errors, timeouts, 408, 429 and 5xx, with exponential backoff and full
    jitter (tenacity), or exactly ``Retry-After`` (capped) when a 429/503 gives one, within
    ``max_attempts`` and ``max_elapsed_s`` (no retry would start past it). Not retried:
    other 4xx, 3xx (redirects are never followed: a webhook must name its final URL), refused URLs.
    410 Gone disables the endpoint in the registry. ``sleep`` and ``clock`` are injectable so
    tests neither wait nor depend on wall time.
    """

    def __init__(
        self,
        *,
        local_mode: bool,
        allow_hosts: Sequence[str] = (),
        timeout_s: float = 10.0,
        max_attempts: int = 5,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        max_retry_after_s: float = 60.0,
        max_elapsed_s: float = 120.0,
        registry: EndpointRegistry | None = None,
        http_client_factory: Callable[[], httpx.Client] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.local_mode = local_mode
        self.allow_hosts = tuple(allow_hosts)
        self.timeout_s = timeout_s
        self.max_attempts = max(1, max_attempts)
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_retry_after_s = max_retry_after_s
        self.max_elapsed_s = max_elapsed_s
        self.registry = registry if registry is not None else MemoryEndpointRegistry()
        self.http_client_factory = http_client_factory or _default_client
        self.sleep = sleep
        self.clock = clock
        self._jitter = tenacity.wait_random_exponential(multiplier=backoff_s, max=max_backoff_s)

    def send(
        self,
        url: str,
        body: bytes,
        *,
        message_id: str,
        secrets: Sequence[str] = (),
        content_type: str = "application/json",
        extra_headers: Mapping[str, str] | None = None,
    ) -> Delivery:
        """Deliver ``body`` to ``url``; never raises for delivery problems, returns a Delivery."""
        target = redact(url)
        gone = self.registry.disabled(url)
        if gone is not None:
            return Delivery(
                target=target,
                ok=False,
                attempts=0,
                error=f"skipped: endpoint disabled since {gone.disabled_at:%Y-%m-%d %H:%M} UTC "
                f"({gone.reason})",
            )
        counter = itertools.count(1)

        def attempt(client: httpx.Client) -> _Outcome:
            return self._attempt(
                client,
                next(counter),
                url,
                body,
                message_id=message_id,
                secrets=secrets,
                content_type=content_type,
                extra_headers=extra_headers or {},
            )

        retrying = tenacity.Retrying(
            # Bounded in attempts and in time: the notifier runs inside a function invocation.
            stop=(
                tenacity.stop_after_attempt(self.max_attempts)
                | tenacity.stop_before_delay(self.max_elapsed_s)
            ),
            wait=self._wait,
            retry=tenacity.retry_if_result(lambda o: o.retry),
            sleep=self.sleep,
            retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
        )
        with self.http_client_factory() as client:
            outcome: _Outcome = retrying(attempt, client)

        if outcome.status_code == 410:
            self.registry.disable(url, reason="410 Gone")
        delivery = Delivery(
            target=target,
            ok=outcome.ok,
            attempts=outcome.attempt,
            status_code=outcome.status_code,
            error=_scrub(outcome.error, url),
        )
        if delivery.ok:
            log.info(
                "webhook delivered to %s (attempts=%d, status=%s)",
                target,
                delivery.attempts,
                delivery.status_code,
            )
        else:
            log.warning(
                "webhook to %s failed after %d attempt(s): %s", target, delivery.attempts, delivery.error
            )
        return delivery

    def _wait(self, state: tenacity.RetryCallState) -> float:
        outcome = state.outcome.result() if state.outcome and not state.outcome.failed else None
        if outcome is not None and outcome.retry_after_s is not None:
            return min(outcome.retry_after_s, self.max_retry_after_s)
        return float(self._jitter(state))

    def _attempt(  # noqa: C901 - one POST and each of its outcomes (2xx, redirect, 4xx, 429 / 5xx, timeout, network) in one place
        self,
        client: httpx.Client,
        n: int,
        url: str,
        body: bytes,
        *,
        message_id: str,
        secrets: Sequence[str],
        content_type: str,
        extra_headers: Mapping[str, str],
    ) -> _Outcome:
        try:
            # Checked on every attempt: DNS may legitimately move between retries, and the
            # connection below goes to exactly the addresses checked here.
            target = check_url(url, local_mode=self.local_mode, allow_hosts=self.allow_hosts)
        except UnsafeUrl as err:
            return _Outcome(ok=False, attempt=n, error=f"refused: {err.reason}")
        except ResolveError as err:
            return _Outcome(ok=False, attempt=n, retry=True, error=str(err))

        # Start each attempt at the next checked address; within an attempt, a connect failure
        # moves on to the following one (an unreachable IPv6 route, a receiver on 127.0.0.1 only).
        start = (n - 1) % len(target.addresses)
        order = target.addresses[start:] + target.addresses[:start]
        headers = {
            "Content-Type": content_type,
            "User-Agent": USER_AGENT,
            **extra_headers,
            **signature_headers(message_id, body, secrets, timestamp=int(self.clock())),
            "Host": target.host_header,
        }
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        for i, address in enumerate(order):
            request = client.build_request(
                "POST",
                pinned_url(target, address),
                content=body,
                headers=headers,
                extensions=extensions,
                timeout=self.timeout_s,
            )
            try:
                response = client.send(request, follow_redirects=False, stream=True)
                break
            except (httpx.ConnectError, httpx.ConnectTimeout) as err:
                text = f"{type(err).__name__}: {err}"
                if "CERTIFICATE_VERIFY_FAILED" in text:
                    return _Outcome(ok=False, attempt=n, error=text)
                if i + 1 == len(order):
                    return _Outcome(ok=False, attempt=n, retry=True, error=text)
            except httpx.TimeoutException as err:
                return _Outcome(ok=False, attempt=n, retry=True, error=f"timeout ({type(err).__name__})")
            except httpx.TransportError as err:
                return _Outcome(
                    ok=False,
                    attempt=n,
                    retry=not isinstance(err, httpx.UnsupportedProtocol),
                    error=f"{type(err).__name__}: {err}",
                )
        try:
            code = response.status_code
            phrase = _reason(response.reason_phrase)
            if 200 <= code < 300:
                return _Outcome(ok=True, attempt=n, status_code=code)
            if 300 <= code < 400:
                where = response.headers.get("location")
                to = f" to {redact(where)}" if where else ""
                return _Outcome(
                    ok=False,
                    attempt=n,
                    status_code=code,
                    error=f"HTTP {code} {phrase}: redirect{to} not followed; configure the final URL",
                )
            if code == 410:
                return _Outcome(
                    ok=False,
                    attempt=n,
                    status_code=code,
                    error="HTTP 410 Gone: endpoint disabled; later messages skip it",
                )
            retry_after = None
            if code in (429, 503):
                retry_after = parse_retry_after(response.headers.get("retry-after"), now=self.clock())
            retry = code in (408, 429) or code >= 500
            return _Outcome(
                ok=False,
                attempt=n,
                retry=retry,
                status_code=code,
                error=f"HTTP {code} {phrase}".rstrip(),
                retry_after_s=retry_after,
            )
        finally:
            response.close()


def _scrub(text: str | None, url: str) -> str | None:
    """Remove the query string and user info of ``url`` from a message, whatever produced it."""
    if text is None:
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return text
    return scrub(text, url, parts.query, parts.password, parts.username)
