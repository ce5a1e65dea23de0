"""A notifier that records what it was asked to deliver and reports one failed delivery."""

from __future__ import annotations

from shared.models import CompletionMessage, Delivery, TrainingRequest


class RecordingNotifier:
    """:class:`shared.ports.Notifier` for service tests: every message kept, every delivery a 500."""

    def __init__(self) -> None:
        self.messages: list[CompletionMessage] = []

    def deliver(self, message: CompletionMessage, request: TrainingRequest | None) -> list[Delivery]:
        self.messages.append(message)
        return [
            Delivery(
                target="https://hooks.example.com/x",
                ok=False,
                attempts=3,
                status_code=500,
                error="HTTP 500 after 3 attempts",
            )
        ]
