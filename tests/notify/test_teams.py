"""The Teams card: schema-valid for the version it declares, under the size limit, correct URLs."""

from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path

import jsonschema
import pytest
from PIL import Image

from shared.adapters.notify.teams import TEAMS_MAX_PAYLOAD_BYTES, build_card, build_payload
from shared.contracts.completion import CompletionMessage
from shared.urlguard import RetiredConnectorUrl, check_teams_url

from .test_plots import cartpole_points

SCHEMAS = Path(__file__).parent / "schemas"


def validator_for(card: dict) -> jsonschema.Draft6Validator:
    """The validator of the Adaptive Card schema version the card declares (1.5 -> 1.5.0)."""
    path = SCHEMAS / f"adaptive-card-{card['version']}.0.json"
    assert path.is_file(), f"no schema committed for card version {card['version']}"
    schema = json.loads(path.read_text(encoding="utf-8"))
    jsonschema.Draft6Validator.check_schema(schema)
    return jsonschema.Draft6Validator(schema)


def message(**kw) -> CompletionMessage:
    base = {
        "message_id": "cp-1:completed",
        "request_id": "cp-1",
        "run_id": "rlq-cp-1",
        "status": "Completed",
        "stop_reason": "reward_reached",
        "experiment": "cartpole",
        "algorithm": "IMPALA",
        "env": "CartPole-v1",
        "final_reward": 462.3,
        "best_reward": 481.0,
        "iterations": 61,
        "timesteps": 244_000,
        "duration_s": 95.4,
        "checkpoint_path": "file:///data/runs/cp-1/checkpoints/checkpoint_000061",
    }
    return CompletionMessage(**(base | kw))


def facts(card: dict) -> dict[str, str]:
    [fs] = [b for b in card["body"] if b["type"] == "FactSet"]
    return {f["title"]: f["value"] for f in fs["facts"]}


def test_card_validates_against_the_schema_of_its_version_and_shows_the_run() -> None:
    p = build_payload(
        message(), public_base_url="https://rlq.example.com/", points=cartpole_points(), target_reward=450
    )
    envelope = json.loads(p.body)
    assert envelope["type"] == "message"
    [att] = envelope["attachments"]
    assert att["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = att["content"]
    assert card["version"] in ("1.4", "1.5")
    validator_for(card).validate(card)

    f = facts(card)
    assert f["Status"] == "Completed (reward reached)"
    assert (f["Experiment"], f["Environment"], f["Algorithm"]) == ("cartpole", "CartPole-v1", "IMPALA")
    assert (f["Final reward"], f["Best reward"], f["Target reward"]) == ("462.30", "481.00", "450.00")
    assert f["Duration"] == "1m 35s"
    assert f["Checkpoint"] == "file:///data/runs/cp-1/checkpoints/checkpoint_000061"
    urls = {a["title"]: a["url"] for a in card["actions"]}
    assert urls["Open run"] == "https://rlq.example.com/api/trainings/cp-1"
    assert urls["Reward curve"] == "https://rlq.example.com/api/trainings/cp-1/reward.png"

    [image] = [b for b in card["body"] if b["type"] == "Image"]
    assert p.image.startswith("inline ")
    prefix = "data:image/png;base64,"
    assert image["url"].startswith(prefix)
    img = Image.open(io.BytesIO(base64.b64decode(image["url"][len(prefix) :])))
    img.load()
    assert f"{img.size[0]}x{img.size[1]}" == p.image.removeprefix("inline ")


def test_the_schema_check_is_not_vacuous() -> None:
    card = build_card(message(), public_base_url="https://x.example", image_url=None)
    v = validator_for(card)
    bad = json.loads(json.dumps(card))
    bad["body"][2]["facts"][0].pop("value")  # a Fact needs a value
    assert not v.is_valid(bad)
    bad = json.loads(json.dumps(card))
    bad["msteams"] = {"width": "Full"}  # host extensions are outside the schema
    assert not v.is_valid(bad)


@pytest.mark.parametrize("status", ["Failed", "Canceled", "TimedOut"])
def test_other_outcomes_validate_and_carry_the_error(status: str) -> None:
    m = message(
        status=status,
        stop_reason="error" if status == "Failed" else None,
        final_reward=None,
        best_reward=None,
        error="RuntimeError: env worker died\n" * 20,
        portal_url="https://ml.azure.com/runs/rlq-cp-1",
    )
    card = build_payload(m, public_base_url="https://rlq.example.com", points=None).card
    validator_for(card).validate(card)
    texts = [b.get("text", "") for b in card["body"] if b["type"] == "TextBlock"]
    assert any("env worker died" in t for t in texts)
    assert facts(card)["Final reward"] == "—"
    assert {a["title"] for a in card["actions"]} >= {"Open run", "Open in portal"}


def test_huge_curve_still_fits_the_teams_limit() -> None:
    noisy = [
        {
            "iteration": i,
            "timesteps": i * 400,
            "episode_reward_mean": 250 + 240 * math.sin(i * 1.7),
            "episode_reward_min": 0.0,
            "episode_reward_max": 500.0,
        }
        for i in range(1, 100_001)
    ]
    huge_error = "Traceback line that goes on and on\n" * 2000
    p = build_payload(
        message(status="Failed", error=huge_error),
        public_base_url="https://rlq.example.com",
        points=noisy,
        target_reward=450,
    )
    assert len(p.body) <= TEAMS_MAX_PAYLOAD_BYTES
    card = json.loads(p.body)["attachments"][0]["content"]
    validator_for(card).validate(card)


def test_when_the_image_cannot_fit_the_card_links_to_the_api_picture() -> None:
    p = build_payload(
        message(), public_base_url="https://rlq.example.com", points=cartpole_points(), max_bytes=4_000
    )
    assert p.image == "link" and len(p.body) <= 4_000
    [image] = [b for b in p.card["body"] if b["type"] == "Image"]
    assert image["url"] == "https://rlq.example.com/api/trainings/cp-1/reward.png"
    # a loopback base URL is unreachable for Teams: no broken image, the action link stays
    p = build_payload(message(), public_base_url="http://127.0.0.1:7071", points=None)
    assert p.image == "none" and not [b for b in p.card["body"] if b["type"] == "Image"]


def test_request_ids_are_escaped_in_links() -> None:
    card = build_card(message(request_id="a:b.c"), public_base_url="https://x.example", image_url=None)
    assert card["actions"][0]["url"] == "https://x.example/api/trainings/a%3Ab.c"


@pytest.mark.parametrize(
    "url",
    [
        "https://contoso.webhook.office.com/webhookb2/1234@5678/IncomingWebhook/abcd/ef01",
        "https://outlook.office.com/webhook/1234@5678/IncomingWebhook/abcd/ef01",
    ],
)
def test_office_365_connector_urls_are_rejected_with_the_workflows_hint(url: str) -> None:
    with pytest.raises(RetiredConnectorUrl) as err:
        check_teams_url(url)
    assert "retired" in err.value.reason and "Workflows" in err.value.reason
    # the connector's path is its credential: only the host and the kind of URL are shown
    assert err.value.reason.startswith(url.split("/1234@")[0] + "/…: ")
    assert "1234@5678" not in err.value.reason and "IncomingWebhook" not in err.value.reason


@pytest.mark.parametrize(
    "url",
    [
        (
            "https://prod-12.westus.logic.azure.com:443/workflows/abc/triggers/manual/paths/invoke"
            "?api-version=2016-06-01&sig=x"
        ),
        (
            "https://default1234.56.environment.api.powerplatform.com:443/powerautomate/automations/direct/workflows/abc"
            "/triggers/manual/paths/invoke?api-version=1&sig=x"
        ),
    ],
)
def test_workflows_urls_are_accepted(url: str) -> None:
    check_teams_url(url)
