"""A notifier that records what it was asked to deliver and reports one failed delivery."""

from __future__ import annotations

from shared.contracts.completion import CompletionMessage, Delivery
from shared.contracts.request import TrainingRequest


class RecordingNotifier:
    """:class:`shared.ports.Notifier` for service tests: every message kept, every delivery a 500
    from ``target`` with ``error`` (as a receiver answering 500 three times would)."""

    def __init__(
        self, *, target: str = "https://hooks.example.com/x", error: str = "HTTP 500 after 3 attempts"
    ) -> None:
        self.messages: list[CompletionMessage] = []
        self.target, self.error = target, error

    def deliver(self, message: CompletionMessage, request: TrainingRequest | None) -> list[Delivery]:
        self.messages.append(message)
        return [Delivery(target=self.target, ok=False, attempts=3, status_code=500, error=self.error)]
