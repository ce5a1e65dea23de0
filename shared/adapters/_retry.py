"""The Azure adapters' one retry policy: bounded in attempts and in total time.

Used where the SDK itself does not retry (Service Bus: its clients are built with
``retry_total=0``; Table storage: its pipeline does not retry a 401/403). A role assignment made by
the deploy can take minutes to reach a data plane
(https://learn.microsoft.com/azure/role-based-access-control/troubleshooting), so the adapters
retry the service's authentication and authorization refusals within this budget and then raise
:class:`shared.errors.TransientError` naming the role to check (with :data:`ROLE_PROPAGATION_HINT`):
the queue redelivers, the poller tries on its next tick, nothing is given up for good.
"""

from __future__ import annotations

from collections.abc import Callable

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter
from tenacity.stop import stop_base

MIN_ATTEMPT_S = 1.0  # an attempt is not started with less time than this left in the budget
MAX_ATTEMPTS = 5
MAX_RETRY_S = 30.0
BACKOFF_S = 0.5
MAX_BACKOFF_S = 8.0

ROLE_PROPAGATION_HINT = (
    "; a role assigned by the deploy can take up to 10 minutes to propagate "
    "(https://learn.microsoft.com/azure/role-based-access-control/troubleshooting)"
)


class Deadline(stop_base):
    """Stop when the next attempt would start with less than ``MIN_ATTEMPT_S`` of ``budget_s`` left.

    The wait before it (``retry_state.upcoming_sleep``, set before tenacity asks to stop) counts.
    """

    def __init__(self, clock: Callable[[], float], budget_s: float) -> None:
        self._clock, self._budget_s = clock, budget_s
        self._start = clock()

    def remaining(self) -> float:
        return self._budget_s - (self._clock() - self._start)

    def __call__(self, retry_state: RetryCallState) -> bool:
        left = self.remaining()
        return left <= MIN_ATTEMPT_S or left - (retry_state.upcoming_sleep or 0.0) < MIN_ATTEMPT_S


def bounded_retrying(
    *,
    retry: Callable[[BaseException], bool],
    sleep: Callable[[float], None],
    monotonic: Callable[[], float],
    max_attempts: int = MAX_ATTEMPTS,
    max_retry_s: float = MAX_RETRY_S,
    backoff_s: float = BACKOFF_S,
    before_sleep: Callable[[RetryCallState], None] | None = None,
) -> tuple[Retrying, Deadline]:
    """A tenacity loop retrying what ``retry`` accepts, with jittered exponential waits, stopping
    after ``max_attempts`` or when ``max_retry_s`` would be exceeded (each wait is cut to what is
    left), re-raising the last error; and its :class:`Deadline`, so that each attempt's own
    timeout can be cut to the time left as well."""
    deadline = Deadline(monotonic, max_retry_s)
    backoff = wait_exponential_jitter(initial=backoff_s, max=MAX_BACKOFF_S, jitter=backoff_s)
    retrying = Retrying(
        retry=retry_if_exception(retry),
        stop=stop_after_attempt(max_attempts) | deadline,
        wait=lambda state: min(backoff(state), max(0.0, deadline.remaining() - MIN_ATTEMPT_S)),
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
    return retrying, deadline
