"""Runs the real function_app.py under the local host until a request is notified (or time runs out).

A separate process so a test can SIGKILL it at a fault point (``RLQ_FAULT_AT``) and start it again.
Settings come from the environment (``RLQ_*``), as they do for ``rlq serve``.
Usage: python -m tests.e2e.host_driver REQUEST_ID TIMEOUT_S
"""

from __future__ import annotations

import sys
import time

from shared.composition import build
from shared.contracts.run import RunState
from shared.localhost import LocalHost


def main(request_id: str, timeout_s: float) -> int:
    w = build()
    host = LocalHost.for_wiring(w)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        host.drain()
        w.service.poll_once()
        host.drain()  # the notifier: completion messages on the topic
        rec = w.store.get(request_id)
        if rec is not None and rec.state is RunState.notified and rec.notified_at is not None:
            return 0
        time.sleep(0.5)
    return 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], float(sys.argv[2])))
