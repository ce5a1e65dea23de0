"""One error tree for the service.

Adapters translate SDK errors at their boundary (``raise TransientError(...) from err``) so the
core only ever decides between two things: try again later, or give up with a reason.
"""

from __future__ import annotations

from dataclasses import dataclass


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


# --- how HTTP answers each error ---------------------------------------------------------------


@dataclass(frozen=True)
class HttpAnswer:
    """How an error of the tree is answered over HTTP, by the JSON API and the dashboard alike."""

    status: int
    title: str  # the heading of the dashboard's error page
    field: str  # the field the JSON API's error names (an InvalidRequest names its own fields)
    retry_after_s: int | None = None  # Retry-After: when asking again may help


# The one error tree → HTTP table: the first class an error is an instance of answers it.
HTTP_ANSWERS: tuple[tuple[type[RlqError], HttpAnswer], ...] = (
    (NotFound, HttpAnswer(404, "Not found", "request_id")),
    (PermanentError, HttpAnswer(400, "Refused", "(request)")),  # InvalidRequest, Forbidden, ...
    (TransientError, HttpAnswer(503, "Try again shortly", "(service)", retry_after_s=5)),
    # any other RlqError (a damaged or read-only store): unavailable until a person acts
    (RlqError, HttpAnswer(503, "The service cannot answer", "(service)", retry_after_s=60)),
)


def http_answer(err: RlqError) -> HttpAnswer:
    """The row of :data:`HTTP_ANSWERS` that answers ``err``."""
    return next(answer for kind, answer in HTTP_ANSWERS if isinstance(err, kind))
