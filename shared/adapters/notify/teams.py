"""Microsoft Teams: an Adaptive Card for a completion message, posted to a Teams Workflows webhook.

Teams' Office 365 connectors ("Incoming Webhook", ``*.webhook.office.com/webhookb2/...``) are
retired; a channel now receives cards through a Power Automate / Teams *Workflows* flow whose
trigger is "When a Teams webhook request is received" (:func:`shared.urlguard.check_teams_url`
refuses connector URLs at intake and at delivery). Its URL looks like
``https://prod-NN.<region>.logic.azure.com/workflows/<id>/triggers/manual/paths/invoke?...&sig=...``
or ``https://<env>.environment.api.powerplatform.com/powerautomate/automations/direct/workflows/...``;
the ``sig`` query parameter is the only credential, so the URL is a secret and only its redacted
form is ever shown. Delivery reuses :class:`shared.adapters.notify.webhooks.WebhookSender` (same SSRF
guard, retries, no redirects).

Teams drops messages over about 28 KB, so the reward curve is embedded as a small palette PNG
data URI only when it fits; otherwise the card links to the API's ``reward.png``.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from shared.contracts.completion import CompletionMessage
from shared.plots import reward_curve_png
from shared.verdicts import evaluation_text, verdict

__all__ = [
    "CARD_VERSION",
    "TEAMS_MAX_PAYLOAD_BYTES",
    "TeamsPayload",
    "build_card",
    "build_payload",
    "reward_png_url",
    "run_url",
    "wrap_card",
]

TEAMS_MAX_PAYLOAD_BYTES = 28_000
CARD_VERSION = "1.5"
CARD_SCHEMA = "http://adaptivecards.io/schemas/adaptive-card.json"
# Image sizes tried in turn (compact PNG) until the whole payload fits.
IMAGE_LADDER = ((640, 320), (560, 280), (480, 240), (400, 200), (320, 160))
MAX_ERROR_CHARS = 1500

_HEADLINE = {
    "Completed": ("✅ Training completed", "Good"),
    "Failed": ("❌ Training failed", "Attention"),
    "Canceled": ("⏹️ Training canceled", "Warning"),
    "TimedOut": ("⏱️ Training timed out", "Warning"),
}


def run_url(public_base_url: str, request_id: str) -> str:
    return f"{public_base_url.rstrip('/')}/api/trainings/{quote(request_id, safe='')}"


def reward_png_url(public_base_url: str, request_id: str) -> str:
    return run_url(public_base_url, request_id) + "/reward.png"


def _reward(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value:,.2f}"


def _duration(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return "—"
    h, rem = divmod(round(seconds), 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h {m:02d}m {sec:02d}s" if h else (f"{m}m {sec:02d}s" if m else f"{sec}s")


def _middle(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit // 2 - 1] + "…" + text[-(limit // 2) :]


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def build_card(
    message: CompletionMessage,
    *,
    public_base_url: str,
    image_url: str | None,
    target_reward: float | None = None,
    error_chars: int = MAX_ERROR_CHARS,
    version: str = CARD_VERSION,
) -> dict[str, Any]:
    """The Adaptive Card (``version`` 1.5 by default) for one completion message."""
    headline, color = _HEADLINE.get(message.status, (f"Training {message.status}", "Default"))
    status = message.status + (f" ({message.stop_reason.replace('_', ' ')})" if message.stop_reason else "")
    facts = [
        ("Status", status),
        ("Experiment", message.experiment),
        ("Environment", message.env or "—"),
        ("Algorithm", message.algorithm or "—"),
        ("Final reward", _reward(message.final_reward)),
        ("Best reward", _reward(message.best_reward)),
    ]
    if target_reward is not None:
        facts.append(("Target reward", _reward(target_reward)))
    if message.eval_reward is not None:
        facts.append(("Evaluation reward", _reward(message.eval_reward)))
    if message.iterations is not None or message.timesteps is not None:
        its = f"{message.iterations:,}" if message.iterations is not None else "—"
        steps = f"{message.timesteps:,}" if message.timesteps is not None else "—"
        facts.append(("Iterations / steps", f"{its} / {steps}"))
    section = message.model
    if section is not None:
        # the champion decision: "promoted" / "kept the champion" and both evaluations (shared/verdicts.py)
        facts.append(("Model", f"{section.name} v{section.version}"))
        facts.append(("Candidate", evaluation_text(section.candidate)))
        if section.champion_version_before is not None:
            facts.append((f"Champion v{section.champion_version_before}", evaluation_text(section.champion)))
        facts.append(("Decision", section.reason))
    facts += [
        ("Duration", _duration(message.duration_s)),
        ("Checkpoint", _middle(message.checkpoint_path, 240) if message.checkpoint_path else "—"),
        ("Request", message.request_id),
    ]
    if message.run_id:
        facts.append(("Run", _middle(message.run_id, 120)))

    what = " on ".join(x for x in (message.algorithm, message.env) if x)
    subtitle = " · ".join(x for x in (what, f"experiment {message.experiment}") if x)
    body: list[dict[str, Any]] = [
        {
            "type": "TextBlock",
            "text": headline,
            "size": "Large",
            "weight": "Bolder",
            "color": color,
            "wrap": True,
            "style": "heading",
        },
        {"type": "TextBlock", "text": subtitle, "isSubtle": True, "spacing": "None", "wrap": True},
    ]
    if section is not None:
        body.append(
            {
                "type": "TextBlock",
                "text": _capital(verdict(section)),
                "weight": "Bolder",
                "color": "Good" if section.promoted else "Default",
                "wrap": True,
            }
        )
    body.append({"type": "FactSet", "facts": [{"title": t, "value": v} for t, v in facts]})
    if message.error:
        body.append(
            {
                "type": "TextBlock",
                "text": _middle(message.error, error_chars),
                "color": "Attention",
                "wrap": True,
                "fontType": "Monospace",
                "size": "Small",
            }
        )
    if image_url:
        body.append(
            {
                "type": "Image",
                "url": image_url,
                "size": "Stretch",
                "altText": "Reward curve: mean episode reward per training iteration",
            }
        )

    actions = [
        {"type": "Action.OpenUrl", "title": "Open run", "url": run_url(public_base_url, message.request_id)}
    ]
    if message.portal_url:
        actions.append({"type": "Action.OpenUrl", "title": "Open in portal", "url": message.portal_url})
    actions.append(
        {
            "type": "Action.OpenUrl",
            "title": "Reward curve",
            "url": message.reward_curve_url or reward_png_url(public_base_url, message.request_id),
        }
    )
    return {
        "type": "AdaptiveCard",
        "$schema": CARD_SCHEMA,
        "version": version,
        "fallbackText": f"rlq: training {message.request_id} {message.status}, final reward "
        f"{_reward(message.final_reward)}" + (f"; {verdict(section)}" if section is not None else ""),
        "body": body,
        "actions": actions,
    }


def wrap_card(card: dict[str, Any]) -> dict[str, Any]:
    """The message envelope a Workflows "webhook request received" trigger expects."""
    return {
        "type": "message",
        "attachments": [
            {"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None, "content": card}
        ],
    }


@dataclass(frozen=True)
class TeamsPayload:
    body: bytes
    card: dict[str, Any]
    image: str  # "inline WxH", "link" or "none": how the curve is shown


def _encode(card: dict[str, Any]) -> bytes:
    return json.dumps(wrap_card(card), separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def build_payload(
    message: CompletionMessage,
    *,
    public_base_url: str,
    points: list[dict[str, Any]] | None,
    target_reward: float | None = None,
    max_bytes: int = TEAMS_MAX_PAYLOAD_BYTES,
) -> TeamsPayload:
    """The JSON body to post, under ``max_bytes``: the curve inline when it fits, else a link."""
    common: dict[str, Any] = {"public_base_url": public_base_url, "target_reward": target_reward}
    title = f"{message.experiment}: {message.algorithm or ''} {message.env or ''}".strip()
    if points:
        for width, height in IMAGE_LADDER:
            png = reward_curve_png(
                points, title=title, target=target_reward, width_px=width, height_px=height, compact=True
            )
            uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
            card = build_card(message, image_url=uri, **common)
            body = _encode(card)
            if len(body) <= max_bytes:
                return TeamsPayload(body, card, f"inline {width}x{height}")
    link = message.reward_curve_url or reward_png_url(public_base_url, message.request_id)
    image_url: str | None = link
    image_mode = "link"
    if not link.startswith("https://"):
        # Teams fetches linked images itself: a loopback / plain-http link would show a broken image.
        image_url, image_mode = None, "none"
    error_chars = MAX_ERROR_CHARS
    while True:
        card = build_card(message, image_url=image_url, error_chars=error_chars, **common)
        body = _encode(card)
        if len(body) <= max_bytes or error_chars <= 100:
            break
        error_chars //= 2
    if len(body) > max_bytes:
        raise ValueError(
            f"Teams card is {len(body)} bytes even without the picture; the limit is {max_bytes}"
        )
    return TeamsPayload(body, card, image_mode)
