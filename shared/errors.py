"""One error tree for the service.

Adapters translate SDK errors at their boundary (``raise TransientError(...) from err``) so the
core only ever decides between two things: try again later, or give up with a reason.
"""

from __future__ import annotations


class RlqError(Exception):
    """Base of every error rlq raises on purpose."""


class TransientError(RlqError):
    """May succeed if tried again: throttling, 5xx, a connection reset, a busy broker.

    The queue redelivers the message (abandon) once bounded retries are spent.
    """


class PermanentError(RlqError):
    """Can never succeed as it is: the message is dead-lettered at once, the run fails.

    ``reason`` is a short machine-readable code (Service Bus dead-letter reason), the message
    text is the description a person acts on.
    """

    reason: str = "Permanent"

    def __init__(self, description: str, *, reason: str | None = None) -> None:
        super().__init__(description)
        if reason is not None:
            self.reason = reason

    @property
    def description(self) -> str:
        return str(self)


class InvalidRequest(PermanentError):
    """The request body is not a valid training request. ``errors`` lists field → problem."""

    reason = "InvalidRequest"

    def __init__(self, errors: list[dict[str, str]]) -> None:
        self.errors = errors
        text = "; ".join(f"{e['field']}: {e['message']}" for e in errors) or "invalid request"
        super().__init__(text)


class Forbidden(PermanentError):
    """Valid JSON and schema, but over a cap or outside what this deployment allows."""

    reason = "Forbidden"


class ComputeError(PermanentError):
    """The compute can never take this job as configured (a failed cluster, a wrong VNet, an NSG)."""

    reason = "ComputeUnavailable"


class Conflict(RlqError):
    """An optimistic-concurrency write lost the race: re-read and decide again."""


class NotFound(RlqError):
    """No such request or run."""
