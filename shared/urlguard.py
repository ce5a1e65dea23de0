"""Which URLs rlq may send to: the SSRF rules, the Teams URL rules, and the intake check.

A request comes from a queue anyone with send rights can write to, so the URLs it names are
untrusted: without these rules a request could make rlq POST to the cloud metadata service, a
private admin port, or a neighbour in the VNet.

* :func:`check_url` decides whether rlq may talk to a URL. Every address the name resolves to is
  checked; delivery (:mod:`shared.adapters.notify.webhooks`) then connects to exactly the checked
  address, so a DNS answer that changes between the check and the connect (DNS rebinding)
  cannot redirect it.
* :func:`check_teams_url` refuses Office 365 connector URLs (retired; they no longer deliver) and
  says what replaces them: a Teams Workflows webhook.
* :func:`check_request_urls` is the one check intake runs on a request's ``notify`` URLs: the
  static rules only (scheme, user info, IP literals, loopback names, the allow-list, retired
  connectors), no DNS, so intake never waits on a resolver. Delivery resolves and pins.
* :func:`redact` is how logs, errors and deliveries name a URL (no query, no user info): a
  Workflows URL carries its signature in the query.

Policy only: the core imports this module, never the delivery adapters.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from shared.contracts.request import TrainingRequest

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

__all__ = [
    "WORKFLOWS_HELP",
    "IPAddress",
    "ResolveError",
    "ResolvedTarget",
    "RetiredConnectorUrl",
    "UnsafeUrl",
    "address_problem",
    "check_request_urls",
    "check_teams_url",
    "check_url",
    "redact",
]


class UnsafeUrl(ValueError):
    """rlq will not send to this URL; ``reason`` says why (it never holds the query string)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ResolveError(OSError):
    """The host name did not resolve now; it may later (DNS is a transient dependency)."""


# --- the address rules -----------------------------------------------------------------------

_V4_RULES: tuple[tuple[ipaddress.IPv4Network, str], ...] = tuple(
    (ipaddress.IPv4Network(net), why)
    for net, why in (
        ("0.0.0.0/8", "an unspecified ('this network') address"),
        ("10.0.0.0/8", "a private address (10.0.0.0/8)"),
        ("100.64.0.0/10", "a carrier-grade NAT shared address (100.64.0.0/10)"),
        ("127.0.0.0/8", "a loopback address"),
        ("169.254.169.254/32", "the cloud instance metadata service (link-local 169.254.169.254)"),
        ("169.254.0.0/16", "a link-local address (169.254.0.0/16)"),
        ("172.16.0.0/12", "a private address (172.16.0.0/12)"),
        ("192.0.0.0/24", "an IETF protocol assignment address (192.0.0.0/24)"),
        ("192.0.2.0/24", "a documentation address (192.0.2.0/24)"),
        ("192.88.99.0/24", "a 6to4 relay anycast address (192.88.99.0/24)"),
        ("192.168.0.0/16", "a private address (192.168.0.0/16)"),
        ("198.18.0.0/15", "a benchmarking address (198.18.0.0/15)"),
        ("198.51.100.0/24", "a documentation address (198.51.100.0/24)"),
        ("203.0.113.0/24", "a documentation address (203.0.113.0/24)"),
        ("224.0.0.0/4", "a multicast address"),
        ("240.0.0.0/4", "a reserved address (240.0.0.0/4, incl. broadcast)"),
        # Azure's platform endpoint (WireServer, IMDS proxy, platform DNS): public-looking, not public.
        ("168.63.129.16/32", "the Azure platform endpoint 168.63.129.16"),
    )
)

_V6_RULES: tuple[tuple[ipaddress.IPv6Network, str], ...] = tuple(
    (ipaddress.IPv6Network(net), why)
    for net, why in (
        ("::/128", "the unspecified address ::"),
        ("::1/128", "a loopback address"),
        ("::/96", "an IPv4-compatible IPv6 address (deprecated)"),
        ("64:ff9b:1::/48", "a local-use NAT64 address (64:ff9b:1::/48)"),
        ("100::/64", "a discard-only address (100::/64)"),
        ("2001::/32", "a Teredo tunnel address (2001::/32)"),
        ("2001:db8::/32", "a documentation address (2001:db8::/32)"),
        ("fc00::/7", "a unique-local address (fc00::/7)"),
        ("fe80::/10", "a link-local address (fe80::/10)"),
        ("fec0::/10", "a site-local address (fec0::/10, deprecated)"),
        ("ff00::/8", "a multicast address"),
    )
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def address_problem(ip: IPAddress, *, local_mode: bool) -> str | None:
    """Why rlq must not connect to ``ip``, or None when it may.

    Loopback is allowed only in local mode (the one-machine demo posts to a receiver on
    127.0.0.1). Addresses that embed an IPv4 address (NAT64, 6to4) are judged by the embedded one;
    IPv4-mapped IPv6 addresses are always refused, as no public DNS name should answer with one.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            return "an IPv6 address with a zone index"
        if ip.ipv4_mapped is not None:
            return f"an IPv4-mapped IPv6 address (of {ip.ipv4_mapped})"
        if ip in _NAT64:
            inner = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
            why = address_problem(inner, local_mode=False)
            return f"a NAT64 address of {inner}, {why}" if why else None
        if ip.sixtofour is not None:
            why = address_problem(ip.sixtofour, local_mode=False)
            return f"a 6to4 address of {ip.sixtofour}, {why}" if why else None
        for net, why in _V6_RULES:
            if ip in net:
                return None if (local_mode and ip.is_loopback) else why
    else:
        for net4, why in _V4_RULES:
            if ip in net4:
                return None if (local_mode and ip.is_loopback) else why
    if not ip.is_global:
        return "not a globally routable address"
    return None


# --- URL checks ------------------------------------------------------------------------------


def redact(url: str) -> str:
    """``scheme://host[:port]/path`` of ``url``: what logs, errors and deliveries may show."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        return "(unparsable URL)"
    try:
        port: int | str | None = parts.port
    except ValueError:
        port = "(invalid port)"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port is not None else host
    return f"{parts.scheme}://{netloc}{parts.path}"


@dataclass(frozen=True)
class ResolvedTarget:
    """A URL that passed :func:`check_url`, with the addresses that were checked."""

    url: str
    scheme: str
    host: str  # ASCII (IDNA) host as written, lower case, without a trailing dot
    port: int
    addresses: tuple[IPAddress, ...]
    target: str  # the redacted URL (see :func:`redact`)

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


def _legacy_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """The address an inet_aton-style spelling (``2130706433``, ``0x7f000001``, ``0177.0.0.1``,
    ``127.1``) stands for, or None for names and canonical dotted quads."""
    try:
        ipaddress.IPv4Address(host)
        return None  # canonical dotted-decimal
    except ValueError:
        pass
    if not host or not all(c in "0123456789abcdefx." for c in host.lower()):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


_PLAIN_HTTP = "plain http is not allowed; use https (http only to loopback in local mode)"


def _idna(host: str) -> str:
    try:
        return host.encode("idna").decode("ascii").lower()
    except UnicodeError:
        return host.lower()


def _host_allowed(host: str, allow_hosts: Iterable[str]) -> bool:
    for pattern in allow_hosts:
        pat = pattern.strip().lower().rstrip(".")
        if pat.startswith("*."):
            if host.endswith(pat[1:]) and len(host) > len(pat) - 1:
                return True
        elif host == pat:
            return True
    return False


def _resolve(host: str, port: int) -> tuple[IPAddress, ...]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except socket.gaierror as err:
        raise ResolveError(f"cannot resolve {host!r}: {err.strerror or err}") from None
    except UnicodeError:
        raise ResolveError(f"cannot resolve {host!r}: not a valid host name") from None
    out: list[IPAddress] = []
    for family, _type, _proto, _canon, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        addr = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if family == socket.AF_INET6 and len(sockaddr) >= 4 and sockaddr[3]:
            addr = ipaddress.IPv6Address(f"{addr}%{sockaddr[3]}")
        if addr not in out:
            out.append(addr)
    if not out:
        raise ResolveError(f"{host!r} has no IPv4 or IPv6 address")
    return tuple(out)


def check_url(  # noqa: C901 - each way a webhook URL can be unsafe, checked in order with its own message
    url: str, *, local_mode: bool, allow_hosts: Sequence[str] = (), resolve: bool = True
) -> ResolvedTarget:
    """Decide whether rlq may POST to ``url``; return the target with its checked addresses.

    Rules: https only (plain http only to loopback, in local mode); no user info in the URL; when
    ``allow_hosts`` is non-empty, the host must equal one entry or match a ``*.suffix`` entry; the
    host is resolved and EVERY address must pass :func:`address_problem`. IP literals in legacy
    spellings (decimal, hex, octal, shortened) are refused. With ``resolve=False`` only the static
    rules run (for validating a request at intake without touching DNS).

    Raises :class:`UnsafeUrl` (never retry) or :class:`ResolveError` (retry later).
    """
    shown = redact(url)
    try:
        raw = urlsplit(url)
        raw_host = (raw.hostname or "").rstrip(".")
    except ValueError:
        raise UnsafeUrl(f"{shown}: not a valid URL") from None
    legacy = _legacy_ipv4(raw_host)
    if legacy is not None:
        why = address_problem(legacy, local_mode=False) or "a public address"
        raise UnsafeUrl(
            f"{shown}: host {raw_host!r} is a non-canonical spelling of IP address "
            f"{legacy} ({why}); write addresses in dotted-decimal form"
        )
    # The URL as the delivery client parses it: where the two parsers disagree on the host, the
    # URL is refused below. Imported here, not with the module: importing the core loads no HTTP
    # client; only a request that names a URL does.
    import httpx

    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError) as err:
        raise UnsafeUrl(f"{shown}: not a valid URL ({str(err).split(':')[0]})") from None

    scheme = parsed.scheme
    if scheme not in ("https", "http"):
        raise UnsafeUrl(f"{shown}: scheme {scheme!r} is not allowed; use https")
    if parsed.userinfo:
        raise UnsafeUrl(
            f"{shown}: credentials in the URL are not allowed (they would end up in logs); "
            "webhooks are authenticated by their signature"
        )
    host = parsed.raw_host.decode("ascii").lower().rstrip(".")
    if not host:
        raise UnsafeUrl(f"{shown}: no host")
    if host not in (raw_host.lower(), _idna(raw_host)):
        raise UnsafeUrl(f"{shown}: ambiguous URL (parsers disagree on the host)")
    port = parsed.port if parsed.port is not None else (443 if scheme == "https" else 80)
    if not 0 < port < 65536:
        raise UnsafeUrl(f"{shown}: port {port} is out of range")

    if allow_hosts and not _host_allowed(host, allow_hosts):
        raise UnsafeUrl(
            f"{shown}: host {host!r} is not in the webhook allow-list "
            f"(RLQ_WEBHOOK_ALLOW_HOSTS: {', '.join(allow_hosts)})"
        )

    literal: IPAddress | None
    try:
        literal = ipaddress.ip_address(host.replace("%25", "%"))
    except ValueError:
        literal = None
    if literal is not None:
        addresses: tuple[IPAddress, ...] = (literal,)
    elif host == "localhost" or host.endswith(".localhost"):
        # RFC 6761: always loopback, whatever a resolver says.
        if not local_mode:
            raise UnsafeUrl(f"{shown}: {host!r} is a loopback name; webhooks must go to public addresses")
        addresses = _resolve(host, port) if resolve else (ipaddress.IPv4Address("127.0.0.1"),)
    elif scheme == "http" and not local_mode:
        raise UnsafeUrl(f"{shown}: {_PLAIN_HTTP}")
    elif resolve:
        addresses = _resolve(host, port)
    else:
        addresses = ()

    for addr in addresses:
        problem = address_problem(addr, local_mode=local_mode)
        if problem:
            named = f"{host!r} resolves to {addr}, " if literal is None else f"{addr} is "
            raise UnsafeUrl(f"{shown}: {named}{problem}; webhooks must go to public addresses")

    # Without resolution (intake checks) a name's addresses are unknown: send time decides.
    if scheme == "http" and (not local_mode or not all(a.is_loopback for a in addresses)):
        raise UnsafeUrl(f"{shown}: {_PLAIN_HTTP}")
    return ResolvedTarget(url=url, scheme=scheme, host=host, port=port, addresses=addresses, target=shown)


# --- Teams ---------------------------------------------------------------------------------

WORKFLOWS_HELP = (
    "create a Teams Workflows webhook instead: in the channel choose Workflows > "
    "'Post to a channel when a webhook request is received' (trigger 'When a Teams webhook request "
    "is received') and use the URL it gives"
)


class RetiredConnectorUrl(UnsafeUrl):
    """An Office 365 connector URL: the service behind it is retired."""


def check_teams_url(url: str) -> None:
    """Refuse Office 365 connector URLs with a message saying what to use instead."""
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower().rstrip(".")
    except ValueError:
        return  # the SSRF guard reports unparsable URLs
    path = parts.path.lower()
    if (host.endswith(".webhook.office.com") and path.startswith("/webhookb2/")) or (
        host in ("outlook.office.com", "outlook.office365.com") and path.startswith("/webhook/")
    ):
        # A connector URL's path is its credential: name the host and the kind of URL only.
        shown = f"{parts.scheme}://{host}/{path.split('/')[1]}/…"
        raise RetiredConnectorUrl(
            f"{shown}: Office 365 connector webhooks are retired and no longer deliver; " + WORKFLOWS_HELP
        )


# --- intake ------------------------------------------------------------------------------------


def check_request_urls(
    request: TrainingRequest, *, local_mode: bool, allow_hosts: Sequence[str] = ()
) -> list[dict[str, str]]:
    """Every ``notify`` URL of ``request`` that can never be delivered to, as ``[{field, message}]``.

    Static rules only (no DNS): a private or metadata IP literal, a loopback name outside local
    mode, plain http to a public host, a host outside ``allow_hosts``, a retired Office 365
    connector URL. Intake refuses such a request naming the field, instead of discovering the
    problem when the run ends. The messages never hold a URL's query (its credential).
    """
    problems = []
    for kind, urls in (("webhooks", request.notify.webhooks), ("teams", request.notify.teams)):
        for i, url in enumerate(urls):
            try:
                check_teams_url(str(url))
                check_url(str(url), local_mode=local_mode, allow_hosts=allow_hosts, resolve=False)
            except UnsafeUrl as err:
                problems.append({"field": f"notify.{kind}.{i}", "message": err.reason})
    return problems
