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
from shared.core.models import Champions
from shared.ports import (
    ComputeBackend,
    ModelRegistry,
    Notifier,
    Publisher,
    Rejecter,
    RequestSender,
    RunStore,
)
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
    # Named models and their champions (docs/models.md); None: runs register no model versions.
    models: ModelRegistry | None = None

    def backend(self, record: RunRecord) -> ComputeBackend:
        """The compute backend the run was (or will be) submitted to."""
        return self.compute[record.backend or self.settings.backend]

    def champions(self) -> Champions | None:
        """The model registry's writes by the rule, on this core's registry, publisher and clock."""
        if self.models is None:
            return None
        return Champions(self.models, lambda: self.publisher, self.clock)

    def fault(self, point: FaultPoint) -> None:
        """A step boundary: the crash tests' hook may kill the process here."""
        if self.faults is not None:
            self.faults(point)
