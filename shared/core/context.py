"""What every role of the core works with: the settings, the ports, the clock and the fault hook.

One :class:`Core` per service, shared by its roles (intake, poller, outbox), which read a port
from it at each call: a port swapped on it (a test's outage) is the one every role uses next.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from shared.contracts.run import RunRecord
from shared.core.faults import FaultHook, FaultPoint
from shared.ports import ComputeBackend, Notifier, Publisher, Rejecter, RequestSender, RunStore
from shared.settings import Settings


@dataclass
class Core:
    settings: Settings
    store: RunStore
    compute: dict[str, ComputeBackend]
    publisher: Publisher
    clock: Callable[[], datetime]
    sender: RequestSender | None = None
    notifier: Notifier | None = None
    rejecter: Rejecter | None = None
    # Saves what a finished run leaves beside its outputs (the reward curve); None: nothing to save.
    artifacts: Callable[[RunRecord], object] | None = None
    faults: FaultHook | None = None

    def backend(self, record: RunRecord) -> ComputeBackend:
        """The compute backend the run was (or will be) submitted to."""
        return self.compute[record.backend or self.settings.backend]

    def fault(self, point: FaultPoint) -> None:
        """A step boundary: the crash tests' hook may kill the process here."""
        if self.faults is not None:
            self.faults(point)
