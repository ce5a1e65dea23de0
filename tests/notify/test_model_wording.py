"""What a run did to its model, said where people read it: "promoted" or "kept the champion" with
both evaluations (shared/verdicts.py), on the Teams card and in the webhook's completion message."""

from __future__ import annotations

import json

from shared.adapters.notify.composite import event_body
from shared.adapters.notify.teams import build_payload
from shared.contracts.completion import CompletionMessage
from shared.contracts.models import Evaluation, ModelSection
from shared.verdicts import evaluation_text, verdict

from .test_teams import facts, message, validator_for

CANDIDATE = Evaluation(episodes=20, mean=187.3, std=12.1, min=150.0, max=200.0, seeds=list(range(20)))
CHAMPION = Evaluation(episodes=20, mean=150.2, std=20.0, min=101.0, max=190.0, seeds=list(range(20)))

PROMOTED = ModelSection(
    name="cartpole",
    version=4,
    candidate=CANDIDATE,
    champion=CHAMPION,
    champion_version_before=3,
    promoted=True,
    reason="promoted: 187.3 beats v3's 150.2 by 37.1 (at least 0 needed)",
    champion_version=4,
    champion_checkpoint="file:///data/runs/cp-4/checkpoints/final",
    event_id="model-promoted:cartpole:4",
)
KEPT = ModelSection(
    name="cartpole",
    version=4,
    candidate=CHAMPION,
    champion=CANDIDATE,
    champion_version_before=3,
    promoted=False,
    reason="kept the champion v3: 150.2 against its 187.3 (a mean above it by at least 0 was needed)",
    champion_version=3,
    champion_checkpoint="file:///data/runs/cp-3/checkpoints/final",
)


def test_the_verdict_says_promoted_or_kept_with_both_means_and_spreads() -> None:
    assert evaluation_text(CANDIDATE) == "187.30 ± 12.10"
    assert evaluation_text(None) == "no evaluation"
    assert verdict(PROMOTED) == (
        "promoted v4 of cartpole: 187.30 ± 12.10 against the champion v3's 150.20 ± 20.00 over 20 episodes"
    )
    assert verdict(KEPT) == (
        "kept the champion v3 of cartpole: v4 scored 150.20 ± 20.00 against v3's 187.30 ± 12.10 over 20 episodes"
    )
    first = PROMOTED.model_copy(
        update={"version": 1, "champion": None, "champion_version_before": None, "champion_version": 1}
    )
    assert verdict(first) == "promoted v1 of cartpole: its first champion, 187.30 ± 12.10 over 20 episodes"
    never = first.model_copy(
        update={
            "promoted": False,
            "champion_version": None,
            "reason": "promote is 'never': registered, not promoted",
        }
    )
    assert verdict(never) == (
        "registered v1 of cartpole, not promoted: v1 scored 187.30 ± 12.10 over 20 episodes "
        "(promote is 'never': registered, not promoted)"
    )


def _card(section: ModelSection | None) -> dict:
    card = build_payload(message(model=section), public_base_url="https://rlq.example.com", points=None).card
    validator_for(card).validate(card)
    return card


def test_the_teams_card_says_promoted_with_both_numbers() -> None:
    card = _card(PROMOTED)
    texts = [b["text"] for b in card["body"] if b["type"] == "TextBlock"]
    assert (
        "Promoted v4 of cartpole: 187.30 ± 12.10 against the champion v3's 150.20 ± 20.00 over 20 episodes"
        in texts
    )
    f = facts(card)
    assert (f["Model"], f["Candidate"], f["Champion v3"]) == (
        "cartpole v4",
        "187.30 ± 12.10",
        "150.20 ± 20.00",
    )
    assert f["Decision"] == PROMOTED.reason
    assert "promoted v4 of cartpole" in card["fallbackText"]


def test_the_teams_card_says_kept_the_champion_with_both_numbers() -> None:
    card = _card(KEPT)
    texts = [b["text"] for b in card["body"] if b["type"] == "TextBlock"]
    assert any(
        t.startswith("Kept the champion v3 of cartpole: v4 scored 150.20 ± 20.00 against v3's 187.30")
        for t in texts
    )
    f = facts(card)
    assert (f["Candidate"], f["Champion v3"]) == ("150.20 ± 20.00", "187.30 ± 12.10")
    assert "kept the champion v3" in card["fallbackText"]


def test_a_run_without_a_model_section_says_nothing_of_champions() -> None:
    card = _card(None)
    assert "Model" not in facts(card)
    assert not any("champion" in b.get("text", "").lower() for b in card["body"])


def test_the_webhook_carries_the_decision_and_both_evaluations_in_its_completion_message() -> None:
    event = json.loads(event_body(message(model=KEPT)))
    section = event["data"]["model"]
    assert section["promoted"] is False
    assert section["reason"].startswith("kept the champion v3")
    assert (section["candidate"]["mean"], section["candidate"]["std"]) == (150.2, 20.0)
    assert (section["champion"]["mean"], section["champion"]["std"]) == (187.3, 12.1)
    assert section["champion_checkpoint"] == "file:///data/runs/cp-3/checkpoints/final"
    # the receiver reads it back as the contract it is
    assert CompletionMessage.model_validate(event["data"]).model == KEPT
