"""The SSRF guard: which URLs rlq refuses to POST to, and why."""

from __future__ import annotations

import ipaddress

import pytest

from shared.adapters.notify.webhooks import pinned_url
from shared.contracts.request import TrainingRequest
from shared.urlguard import (
    ResolveError,
    UnsafeUrl,
    address_problem,
    check_request_urls,
    check_url,
    redact,
)

from .conftest import FakeDNS


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://10.0.0.1/hook", "private address (10.0.0.0/8)"),
        ("https://172.16.5.4/hook", "private address (172.16.0.0/12)"),
        ("https://192.168.1.1/hook", "private address (192.168.0.0/16)"),
        ("https://127.0.0.1/hook", "loopback"),
        ("https://[::1]/hook", "loopback"),
        ("https://[::ffff:127.0.0.1]/hook", "IPv4-mapped IPv6 address (of 127.0.0.1)"),
        ("https://169.254.169.254/latest/meta-data/", "metadata"),
        ("https://169.254.10.10/", "link-local"),
        ("https://[fe80::1]/", "link-local"),
        ("https://[fd00::1]/hook", "unique-local"),
        ("https://0.0.0.0/hook", "unspecified"),
        ("https://[::]/hook", "unspecified"),
        ("https://100.64.0.1/", "carrier-grade NAT"),
        ("https://224.0.0.1/", "multicast"),
        ("https://[ff02::1]/", "multicast"),
        ("https://240.0.0.1/", "reserved"),
        ("https://168.63.129.16/", "Azure platform endpoint"),
        ("https://[64:ff9b::a9fe:a9fe]/", "NAT64 address of 169.254.169.254"),
        ("https://[2002:7f00:1::]/", "6to4 address of 127.0.0.1"),
        ("https://[fe80::1%25eth0]/", "zone index"),
        ("http://2130706433/", "non-canonical spelling of IP address 127.0.0.1"),
        ("http://0x7f000001/", "non-canonical spelling of IP address 127.0.0.1"),
        ("http://0177.0.0.1/", "non-canonical spelling of IP address 127.0.0.1"),
        ("http://127.1/", "non-canonical spelling of IP address 127.0.0.1"),
        ("https://0xa9.0xfe.0xa9.0xfe/", "non-canonical spelling of IP address 169.254.169.254"),
        ("https://localhost/hook", "loopback name"),
        ("https://api.localhost/hook", "loopback name"),
        ("http://hooks.example.com/hook", "plain http is not allowed"),
        ("ftp://hooks.example.com/hook", "scheme 'ftp' is not allowed"),
        ("https://user:pass@hooks.example.com/hook", "credentials in the URL"),
        ("https://hooks.example.com:0/hook", "port 0 is out of range"),
    ],
)
def test_refused_in_cloud_mode_with_a_reason(url: str, reason: str, dns: FakeDNS) -> None:
    dns.set("hooks.example.com", ["93.184.216.34"])
    with pytest.raises(UnsafeUrl) as err:
        check_url(url, local_mode=False)
    assert reason in err.value.reason
    assert "pass" not in err.value.reason  # user info never echoed


def test_a_name_resolving_to_loopback_is_refused_in_cloud_mode(dns: FakeDNS) -> None:
    dns.set("internal.example.com", ["127.0.0.1"])
    with pytest.raises(UnsafeUrl, match=r"'internal.example.com' resolves to 127.0.0.1, a loopback address"):
        check_url("https://internal.example.com/hook", local_mode=False)


def test_every_resolved_address_is_checked(dns: FakeDNS) -> None:
    # One public and one private answer: a client could pick either, so the name is refused.
    dns.set("split.example.com", ["93.184.216.34", "10.1.2.3"])
    with pytest.raises(UnsafeUrl, match=r"resolves to 10\.1\.2\.3, a private address"):
        check_url("https://split.example.com/", local_mode=False)
    dns.set("v6.example.com", ["2606:4700::1111", "fd12::5"])
    with pytest.raises(UnsafeUrl, match="resolves to fd12::5, a unique-local"):
        check_url("https://v6.example.com/", local_mode=False)


def test_https_to_a_public_name_is_allowed_with_the_checked_addresses(dns: FakeDNS) -> None:
    dns.set("hooks.example.com", ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"])
    target = check_url("https://Hooks.Example.com./hook?sig=s3cret", local_mode=False)
    assert target.host == "hooks.example.com"
    assert target.port == 443 and target.host_header == "hooks.example.com"
    assert [str(a) for a in target.addresses] == ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"]
    assert target.target == "https://hooks.example.com./hook"  # as written, less the query
    pinned = pinned_url(target, target.addresses[1])
    assert pinned.host == "2606:2800:220:1:248:1893:25c8:1946" and pinned.query == b"sig=s3cret"
    with pytest.raises(ValueError):
        pinned_url(target, ipaddress.ip_address("10.0.0.1"))
    assert dns.asked == ["hooks.example.com"]


def test_nat64_of_a_public_address_is_allowed() -> None:
    assert address_problem(ipaddress.ip_address("64:ff9b::5db8:d822"), local_mode=False) is None


def test_local_mode_allows_loopback_only_and_http_only_to_loopback(dns: FakeDNS) -> None:
    for url in (
        "http://127.0.0.1:8080/hook",
        "http://[::1]:8080/hook",
        "http://localhost:8080/hook",
        "https://127.0.0.1/hook",
    ):
        assert check_url(url, local_mode=True).addresses
    dns.set("receiver.test", ["127.0.0.1"])
    assert str(check_url("http://receiver.test:9000/", local_mode=True).addresses[0]) == "127.0.0.1"
    for url, reason in (
        ("http://10.0.0.1/hook", "private"),
        ("https://[::ffff:127.0.0.1]/", "IPv4-mapped"),
        ("http://0x7f000001/", "non-canonical"),
        ("https://169.254.169.254/", "metadata"),
    ):
        with pytest.raises(UnsafeUrl, match=reason):
            check_url(url, local_mode=True)
    dns.set("public.example.com", ["93.184.216.34"])
    with pytest.raises(UnsafeUrl, match="plain http is not allowed"):
        check_url("http://public.example.com/", local_mode=True)


def test_allow_list_exact_and_suffix(dns: FakeDNS) -> None:
    dns.set("hooks.example.com", ["93.184.216.34"])
    dns.set("a.b.example.org", ["93.184.216.35"])
    dns.set("example.org", ["93.184.216.36"])
    dns.set("evil-example.org", ["93.184.216.37"])
    allow = ["hooks.example.com", "*.example.org"]
    assert check_url("https://hooks.example.com/x", local_mode=False, allow_hosts=allow)
    assert check_url("https://a.b.example.org/x", local_mode=False, allow_hosts=allow)
    for url in ("https://example.org/", "https://evil-example.org/", "https://other.example.com/"):
        with pytest.raises(UnsafeUrl, match="not in the webhook allow-list"):
            check_url(url, local_mode=False, allow_hosts=allow)
    # the allow-list narrows; it never lets a private address through
    dns.set("db.example.org", ["10.0.0.5"])
    with pytest.raises(UnsafeUrl, match="private"):
        check_url("https://db.example.org/", local_mode=False, allow_hosts=allow)
    # refused before any DNS lookup
    assert "other.example.com" not in dns.asked


def test_unresolvable_name_is_a_retryable_resolve_error(dns: FakeDNS) -> None:
    dns.set("gone.example.com", [])
    with pytest.raises(ResolveError):
        check_url("https://gone.example.com/", local_mode=False)


def test_static_check_without_dns(dns: FakeDNS) -> None:
    target = check_url("https://not-looked-up.example/", local_mode=False, resolve=False)
    assert target.addresses == () and dns.asked == []
    with pytest.raises(UnsafeUrl, match="private"):
        check_url("https://10.0.0.1/", local_mode=False, resolve=False)


def test_request_model_normalised_spellings_are_still_refused() -> None:
    # pydantic normalises 0x7f000001 to 127.0.0.1 before we see it; the guard refuses either form.
    from shared.contracts.request import Notify

    url = str(Notify(webhooks=["https://0x7f000001/hook"]).webhooks[0])
    with pytest.raises(UnsafeUrl, match=r"loopback|non-canonical"):
        check_url(url, local_mode=False)


def test_redact_drops_query_fragment_and_user_info() -> None:
    assert redact("https://u:p@h.example.com:8443/a/b?sig=SECRET#frag") == "https://h.example.com:8443/a/b"
    assert redact("https://[::1]:99999/x?sig=SECRET") == "https://[::1]:(invalid port)/x"


def _request(**notify) -> TrainingRequest:
    return TrainingRequest(request_id="u-1", env="CartPole-v1", stop={"training_iteration": 1}, notify=notify)


def test_the_intake_check_names_each_bad_field_and_never_resolves(dns: FakeDNS) -> None:
    problems = check_request_urls(
        _request(
            webhooks=["https://hooks.example.com/ok", "https://other.org/x", "http://a.example.com/"],
            teams=[
                "https://outlook.office.com/webhook/a/IncomingWebhook/b",
                "https://contoso.webhook.office.com/webhookb2/a@b/IncomingWebhook/c/d?sig=s3cret",
            ],
        ),
        local_mode=False,
        allow_hosts=["*.example.com", "outlook.office.com", "*.webhook.office.com"],
    )
    assert [p["field"] for p in problems] == [
        "notify.webhooks.1",
        "notify.webhooks.2",
        "notify.teams.0",
        "notify.teams.1",
    ]
    assert "allow-list" in problems[0]["message"] and "plain http" in problems[1]["message"]
    for p in problems[2:]:
        assert "retired" in p["message"] and "Teams Workflows webhook" in p["message"]
    assert problems[3]["message"].startswith("https://contoso.webhook.office.com/webhookb2/…: ")
    # a connector URL's path is its credential, a Workflows URL's query is: neither is shown
    assert all("s3cret" not in p["message"] and "IncomingWebhook" not in p["message"] for p in problems)
    assert dns.asked == []  # static rules only: intake never waits on a resolver


def test_a_retired_connector_url_is_refused_in_either_field() -> None:
    url = "https://contoso.webhook.office.com/webhookb2/x/IncomingWebhook/y/z"
    for field in ("webhooks", "teams"):
        [problem] = check_request_urls(_request(**{field: [url]}), local_mode=False)
        assert problem["field"] == f"notify.{field}.0"
        assert "Office 365 connector webhooks are retired" in problem["message"]


def test_a_workflows_url_passes_the_intake_check() -> None:
    url = "https://prod-01.westeurope.logic.azure.com/workflows/abc/triggers/manual/paths/invoke?sig=x"
    assert check_request_urls(_request(teams=[url]), local_mode=False) == []
