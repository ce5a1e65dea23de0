"""Reading what the service published on the completion topic of a local (SQLite) wiring.

The topic carries completion messages and ``model-promoted`` events (docs/models.md): these
helpers answer the completion messages; :func:`promotions` the events.
"""

from __future__ import annotations

from shared.composition import Wiring
from shared.contracts.completion import CompletionMessage
from shared.contracts.models import MODEL_PROMOTED, PromotionEvent


def is_event(message: object) -> bool:
    """A ``model-promoted`` event (by its application property), not a completion message."""
    return (getattr(message, "application_properties", None) or {}).get("event") == MODEL_PROMOTED


def completions(messages: list) -> list[CompletionMessage]:
    """The completion messages among broker messages, in order (events left out)."""
    return [CompletionMessage.model_validate_json(m.body) for m in messages if not is_event(m)]


def promotions(w: Wiring, subscription: str | None = None) -> list[PromotionEvent]:
    """Every ``model-promoted`` event on ``subscription`` (the notifier's by default), left in place."""
    assert w.broker is not None, "needs the local SQLite broker"
    sub = subscription or w.settings.subscription_name
    return [
        PromotionEvent.model_validate_json(m.body)
        for m in w.broker.peek(w.settings.topic_name, subscription=sub, limit=1000)
        if is_event(m)
    ]


def drain_topic(w: Wiring) -> list[CompletionMessage]:
    """Receive and complete every message on the notifier's subscription (they are gone after)."""
    assert w.broker is not None, "needs the local SQLite broker"
    s, out = w.settings, []
    while batch := w.broker.receive(s.topic_name, subscription=s.subscription_name, max_messages=50):
        for m in batch:
            out += completions([m])
            w.broker.complete(m)
    return out


def peek_topic(w: Wiring, subscription: str) -> list[CompletionMessage]:
    """Every message on ``subscription`` of the topic, left in place (a watcher beside the notifier)."""
    assert w.broker is not None, "needs the local SQLite broker"
    return completions(w.broker.peek(w.settings.topic_name, subscription=subscription, limit=1000))
