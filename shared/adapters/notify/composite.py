"""The notifier: one completion message to every webhook and Teams channel that should hear of it.

Targets are ``Settings.webhook_urls`` (every run), then the request's ``notify.webhooks`` (both
signed per Standard Webhooks), then the request's ``notify.teams`` (Adaptive Cards). Each target is
delivered on its own: a refused, slow or failing endpoint never stops the others, and each yields
one :class:`~shared.contracts.completion.Delivery` that the service records on the run.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import httpx

from shared.adapters.notify.teams import TeamsPayload, build_payload
from shared.adapters.notify.webhooks import (
    EndpointRegistry,
    SqliteEndpointRegistry,
    WebhookSender,
    check_secrets,
)
from shared.contracts.completion import CompletionMessage, Delivery
from shared.contracts.request import TrainingRequest
from shared.curves import load_metrics
from shared.settings import Settings
from shared.urlguard import UnsafeUrl, check_teams_url, redact

log = logging.getLogger(__name__)

__all__ = ["EVENT_TYPE", "CompositeNotifier", "event_body"]

EVENT_TYPE = "training.completed"
Kind = Literal["webhook", "teams"]


def event_body(message: CompletionMessage) -> bytes:
    """The signed body of a generic webhook: the Standard Webhooks ``{type, timestamp, data}`` envelope."""
    envelope = {
        "type": EVENT_TYPE,
        "timestamp": message.finished_at.isoformat().replace("+00:00", "Z"),
        "data": message.model_dump(mode="json"),
    }
    return json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class CompositeNotifier:
    """Implements :class:`shared.ports.Notifier` over generic webhooks and Teams Workflows."""

    def __init__(
        self,
        *,
        settings: Settings,
        registry: EndpointRegistry | None = None,
        http_client_factory: Callable[[], httpx.Client] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        curve_points: Callable[[CompletionMessage], list[dict[str, Any]] | None] | None = None,
        max_workers: int = 4,
    ) -> None:
        self.settings = settings
        self.secrets = [s.get_secret_value() for s in settings.webhook_secrets]
        check_secrets(self.secrets)
        self.registry = (
            registry
            if registry is not None
            else SqliteEndpointRegistry(settings.data_dir / "webhooks.sqlite3")
        )
        self.sender = WebhookSender(
            local_mode=settings.local_mode,
            allow_hosts=settings.webhook_allow_hosts,
            timeout_s=settings.webhook_timeout_s,
            max_attempts=settings.webhook_max_attempts,
            backoff_s=settings.webhook_backoff_s,
            registry=self.registry,
            http_client_factory=http_client_factory,
            sleep=sleep,
            clock=clock,
        )
        self.curve_points = curve_points or self._metrics_near_run
        self.max_workers = max(1, max_workers)

    # --- the port ---------------------------------------------------------------------------

    def targets(self, request: TrainingRequest | None) -> list[tuple[Kind, str]]:
        """Every target for a message, in order, each once."""
        found: list[tuple[Kind, str]] = [("webhook", u) for u in self.settings.webhook_urls]
        if request is not None:
            found += [("webhook", str(u)) for u in request.notify.webhooks]
            found += [("teams", str(u)) for u in request.notify.teams]
        unique: list[tuple[Kind, str]] = []
        for t in found:
            if t not in unique:
                unique.append(t)
        return unique

    def deliver(self, message: CompletionMessage, request: TrainingRequest | None) -> list[Delivery]:
        targets = self.targets(request)
        if not targets:
            return []
        body = event_body(message)
        teams: TeamsPayload | Exception | None = None
        if any(kind == "teams" for kind, _ in targets):
            try:
                teams = self._teams_payload(message, request)
            except Exception as err:  # a broken picture must not cost the webhooks their message
                log.exception("building the Teams card failed")
                teams = err

        def one(target: tuple[Kind, str]) -> Delivery:
            kind, url = target
            try:
                if kind == "webhook":
                    return self._webhook(url, body, message)
                return self._teams(url, teams, message)
            except Exception as err:
                log.exception("delivery to %s failed unexpectedly", redact(url))
                return Delivery(target=redact(url), ok=False, error=f"internal error: {type(err).__name__}")

        with ThreadPoolExecutor(
            max_workers=min(self.max_workers, len(targets)), thread_name_prefix="rlq-notify"
        ) as pool:
            return list(pool.map(one, targets))

    # --- per kind ---------------------------------------------------------------------------

    def _webhook(self, url: str, body: bytes, message: CompletionMessage) -> Delivery:
        if not self.secrets and not self.settings.local_mode:
            return Delivery(
                target=redact(url),
                ok=False,
                error="not sent: no webhook secret configured; set "
                "RLQ_WEBHOOK_SECRETS to a whsec_… secret so receivers can verify rlq",
            )
        return self.sender.send(url, body, message_id=message.message_id, secrets=self.secrets)

    def _teams(
        self, url: str, payload: TeamsPayload | Exception | None, message: CompletionMessage
    ) -> Delivery:
        try:
            check_teams_url(url)
        except UnsafeUrl as err:
            return Delivery(target=redact(url), ok=False, error=f"refused: {err.reason}")
        if not isinstance(payload, TeamsPayload):
            return Delivery(target=redact(url), ok=False, error=f"card not built: {type(payload).__name__}")
        # Workflows URLs are authenticated by their sig parameter; the message id still goes along
        # (webhook-id) so a flow can drop repeats.
        return self.sender.send(url, payload.body, message_id=message.message_id)

    def _teams_payload(self, message: CompletionMessage, request: TrainingRequest | None) -> TeamsPayload:
        target = request.stop.episode_reward_mean if request is not None else None
        try:
            points = self.curve_points(message)
        except Exception:  # the card is still worth sending without its picture
            log.warning(
                "reading the reward curve of %s failed; sending the card without it",
                message.request_id,
                exc_info=True,
            )
            points = None
        return build_payload(
            message, public_base_url=self.settings.public_base_url, points=points, target_reward=target
        )

    def _metrics_near_run(self, message: CompletionMessage) -> list[dict[str, Any]] | None:
        """The run's metrics.jsonl: beside a file:// checkpoint, or under ``runs_dir/<request_id>``."""
        candidates: list[Path] = []
        if message.checkpoint_path and message.checkpoint_path.startswith("file://"):
            path = Path(unquote(urlsplit(message.checkpoint_path).path))
            candidates += [parent / "metrics.jsonl" for parent in list(path.parents)[:3]]
        candidates.append(self.settings.runs_dir / message.request_id / "metrics.jsonl")
        for candidate in candidates:
            if candidate.is_file():
                return load_metrics(candidate)
        return None
