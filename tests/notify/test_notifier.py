"""CompositeNotifier: every target, independently, one Delivery each, over real HTTP."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from pydantic import SecretStr

from shared.adapters.notify.composite import EVENT_TYPE, CompositeNotifier, event_body
from shared.adapters.notify.webhooks import MemoryEndpointRegistry
from shared.contracts.completion import CompletionMessage
from shared.contracts.request import TrainingRequest
from shared.ports import Notifier
from shared.settings import Settings
from shared.webhook_verify import verify

from .conftest import SECRET, Receiver, Sleeps
from .test_plots import cartpole_points

NOW = 1_767_225_600.0


def settings(tmp_path, **kw) -> Settings:
    kw.setdefault("local_mode", True)
    kw.setdefault("webhook_secrets", [SecretStr(SECRET)])
    return Settings(_env_file=None, data_dir=tmp_path, webhook_max_attempts=3, **kw)


def request(**notify) -> TrainingRequest:
    return TrainingRequest(
        request_id="cp-7",
        experiment="cartpole",
        algorithm="IMPALA",
        env="CartPole-v1",
        stop={"episode_reward_mean": 450, "time_total_s": 600},
        notify=notify,
    )


def completion(**kw) -> CompletionMessage:
    base = {
        "message_id": "cp-7:completed",
        "request_id": "cp-7",
        "run_id": "rlq-cp-7",
        "status": "Completed",
        "stop_reason": "reward_reached",
        "experiment": "cartpole",
        "algorithm": "IMPALA",
        "env": "CartPole-v1",
        "final_reward": 455.0,
        "best_reward": 470.5,
        "iterations": 40,
        "timesteps": 160_000,
        "duration_s": 61.0,
    }
    return CompletionMessage(**(base | kw))


def notifier(tmp_path, sleeps: Sleeps, **kw) -> CompositeNotifier:
    s = kw.pop("settings", None) or settings(tmp_path)
    return CompositeNotifier(settings=s, sleep=sleeps, clock=lambda: NOW, **kw)


def test_implements_the_notifier_port(tmp_path, sleeps: Sleeps) -> None:
    assert isinstance(notifier(tmp_path, sleeps), Notifier)


def test_each_target_is_delivered_independently(
    tmp_path, sleeps: Sleeps, receivers: Callable[..., Receiver]
) -> None:
    glob, ok, flaky, teams = receivers(), receivers(), receivers(), receivers()
    flaky.respond(500, 500, 500)  # fails every attempt
    s = settings(tmp_path, webhook_urls=[glob.url("/global")])
    req = request(
        webhooks=["https://10.0.0.1/internal", flaky.url("/flaky"), ok.url("/ok")],
        teams=[
            teams.url("/workflow?sig=abc"),
            "https://contoso.webhook.office.com/webhookb2/a@b/IncomingWebhook/c/d",
        ],
    )
    points = cartpole_points()
    n = notifier(tmp_path, sleeps, settings=s, curve_points=lambda m: points)
    deliveries = n.deliver(completion(), req)

    assert [d.target for d in deliveries] == [
        glob.url("/global"),
        "https://10.0.0.1/internal",
        flaky.url("/flaky"),
        ok.url("/ok"),
        teams.url("/workflow"),
        "https://contoso.webhook.office.com/webhookb2/a@b/IncomingWebhook/c/d",
    ]
    by = {d.target: d for d in deliveries}
    assert by[glob.url("/global")].ok and by[ok.url("/ok")].ok and by[teams.url("/workflow")].ok
    assert not by["https://10.0.0.1/internal"].ok and "private" in by["https://10.0.0.1/internal"].error
    assert (by[flaky.url("/flaky")].ok, by[flaky.url("/flaky")].attempts) == (False, 3)
    retired = by["https://contoso.webhook.office.com/webhookb2/a@b/IncomingWebhook/c/d"]
    assert not retired.ok and "Workflows" in retired.error and retired.attempts == 0

    # generic webhooks: the signed envelope, verifiable with the shipped verifier
    for r in (glob, ok):
        [seen] = r.requests
        event = verify(seen.body, seen.headers, [SECRET], now=NOW)
        assert event["type"] == EVENT_TYPE
        assert event["data"]["request_id"] == "cp-7" and event["data"]["final_reward"] == 455.0
        assert seen.headers["webhook-id"] == "cp-7:completed"
    # Teams: the Workflows envelope with the card, the query (its credential) reached the flow
    [card_post] = teams.requests
    assert card_post.path == "/workflow?sig=abc"
    envelope = json.loads(card_post.body)
    card = envelope["attachments"][0]["content"]
    assert card["type"] == "AdaptiveCard"
    assert any(b["type"] == "Image" and b["url"].startswith("data:image/png;base64,") for b in card["body"])
    assert "webhook-signature" not in card_post.headers  # Workflows URLs authenticate by their sig


def test_duplicate_targets_are_delivered_once(tmp_path, sleeps: Sleeps, receiver: Receiver) -> None:
    s = settings(tmp_path, webhook_urls=[receiver.url()])
    req = request(webhooks=[receiver.url()])
    deliveries = notifier(tmp_path, sleeps, settings=s).deliver(completion(), req)
    assert len(deliveries) == 1 and len(receiver.requests) == 1


def test_no_request_means_global_endpoints_only(tmp_path, sleeps: Sleeps, receiver: Receiver) -> None:
    s = settings(tmp_path, webhook_urls=[receiver.url()])
    assert [d.ok for d in notifier(tmp_path, sleeps, settings=s).deliver(completion(), None)] == [True]
    assert notifier(tmp_path, sleeps).deliver(completion(), None) == []


def test_cloud_mode_without_a_secret_sends_nothing_unsigned(tmp_path, sleeps: Sleeps, dns) -> None:
    dns.set("hooks.example.com", ["93.184.216.34"])
    s = settings(tmp_path, local_mode=False, webhook_secrets=[])
    [d] = notifier(tmp_path, sleeps, settings=s).deliver(
        completion(), request(webhooks=["https://hooks.example.com/x"])
    )
    assert not d.ok and d.attempts == 0 and "RLQ_WEBHOOK_SECRETS" in d.error
    assert dns.asked == []  # nothing was even looked up


def test_a_bad_secret_fails_loudly_naming_the_setting(tmp_path, sleeps: Sleeps) -> None:
    s = settings(tmp_path, webhook_secrets=[SecretStr(SECRET), SecretStr("whsec_!!notbase64!!")])
    with pytest.raises(ValueError, match="RLQ_WEBHOOK_SECRETS entry 2") as err:
        notifier(tmp_path, sleeps, settings=s)
    assert "notbase64" not in str(err.value)


def test_410_recorded_in_the_data_dir_registry(tmp_path, sleeps: Sleeps, receiver: Receiver) -> None:
    receiver.respond(410)
    req = request(webhooks=[receiver.url()])
    assert notifier(tmp_path, sleeps).deliver(completion(), req)[0].status_code == 410
    [again] = notifier(tmp_path, sleeps).deliver(completion(message_id="cp-8:completed"), req)
    assert again.attempts == 0 and "skipped" in again.error
    assert (tmp_path / "webhooks.sqlite3").is_file() and len(receiver.requests) == 1


def test_reward_curve_read_from_the_run_directory(tmp_path, sleeps: Sleeps, receiver: Receiver) -> None:
    run_dir = tmp_path / "runs" / "cp-7"
    (run_dir / "checkpoints" / "checkpoint_000040").mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("\n".join(json.dumps(p) for p in cartpole_points()) + "\n{torn")
    msg = completion(checkpoint_path=(run_dir / "checkpoints" / "checkpoint_000040").as_uri())
    n = notifier(tmp_path, sleeps, registry=MemoryEndpointRegistry())
    [d] = n.deliver(msg, request(teams=[receiver.url("/wf")]))
    assert d.ok
    card = json.loads(receiver.requests[0].body)["attachments"][0]["content"]
    assert any(b["type"] == "Image" for b in card["body"])


def test_a_broken_curve_source_does_not_stop_the_card(tmp_path, sleeps: Sleeps, receiver: Receiver) -> None:
    def broken(_m: CompletionMessage) -> list[dict]:
        raise OSError("disk gone")

    n = notifier(tmp_path, sleeps, curve_points=broken)
    [d] = n.deliver(completion(), request(teams=[receiver.url()]))
    assert d.ok and len(receiver.requests) == 1


def test_event_body_is_the_standard_webhooks_envelope() -> None:
    event = json.loads(event_body(completion()))
    assert set(event) == {"type", "timestamp", "data"}
    assert event["timestamp"].endswith("Z")
    assert CompletionMessage.model_validate(event["data"]).request_id == "cp-7"
