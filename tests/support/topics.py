"""Reading what the service published on the completion topic of a local (SQLite) wiring."""

from __future__ import annotations

from shared.composition import Wiring
from shared.contracts.completion import CompletionMessage


def drain_topic(w: Wiring) -> list[CompletionMessage]:
    """Receive and complete every message on the notifier's subscription (they are gone after)."""
    assert w.broker is not None, "needs the local SQLite broker"
    s, out = w.settings, []
    while batch := w.broker.receive(s.topic_name, subscription=s.subscription_name, max_messages=50):
        for m in batch:
            out.append(CompletionMessage.model_validate_json(m.body))
            w.broker.complete(m)
    return out


def peek_topic(w: Wiring, subscription: str) -> list[CompletionMessage]:
    """Every message on ``subscription`` of the topic, left in place (a watcher beside the notifier)."""
    assert w.broker is not None, "needs the local SQLite broker"
    return [
        CompletionMessage.model_validate_json(m.body)
        for m in w.broker.peek(w.settings.topic_name, subscription=subscription, limit=1000)
    ]
