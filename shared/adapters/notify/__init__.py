"""Notification: every target of a completion message (:mod:`.composite`), signed webhooks
(:mod:`.webhooks`) and Teams cards (:mod:`.teams`)."""
