"""The fault hook: the step boundaries where a crash test may kill the process, and the hook itself.

``RLQ_FAULT_AT=<point>[,<point>…]`` makes :func:`env_faults` return a hook that SIGKILLs this
process when a listed point is reached (the crash-matrix tests); a real kill, not an exception,
so nothing gets to clean up.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Literal, get_args

FaultPoint = Literal["validated", "inserted", "ensured", "submitted", "recorded", "terminal", "published"]
FAULT_POINTS: tuple[FaultPoint, ...] = get_args(FaultPoint)
FaultHook = Callable[[str], None]


def env_faults() -> FaultHook | None:
    """The hook ``RLQ_FAULT_AT`` asks for, or None when it is unset; an unknown point is refused."""
    points = {p.strip() for p in os.environ.get("RLQ_FAULT_AT", "").split(",") if p.strip()}
    if not points:
        return None
    unknown = points - set(FAULT_POINTS)
    if unknown:
        raise ValueError(
            f"RLQ_FAULT_AT: unknown point(s) {sorted(unknown)}; allowed: {', '.join(FAULT_POINTS)}"
        )

    def hook(point: str) -> None:
        if point in points:
            os.kill(os.getpid(), signal.SIGKILL)

    return hook
