"""The run record's optimistic update and reload, shared by intake, poller and outbox.

Every write is conditional on the version read (:meth:`shared.ports.RunStore.update`); each role
writes through :class:`Records`, so none of them imports another to reach the record.
"""

from __future__ import annotations

from typing import Any

from shared.contracts.run import RunRecord
from shared.core.context import Core
from shared.errors import Conflict, NotFound, TransientError

MAX_UPDATE_ATTEMPTS = 8


class Records:
    def __init__(self, core: Core) -> None:
        self.core = core

    def update(self, record: RunRecord, **changes: Any) -> RunRecord:
        """Conditional update. On a lost race: re-read; a state change decided on the old state is
        dropped (the other writer saw newer facts), a plain field update is re-applied."""
        # Any: the changes are RunRecord fields, checked by pydantic when the copy is stored
        for _ in range(MAX_UPDATE_ATTEMPTS):
            try:
                return self.core.store.update(
                    record.model_copy(update={**changes, "updated_at": self.core.clock()})
                )
            except Conflict:
                fresh = self.load(record.request_id)
                if "state" in changes and fresh.state is not record.state:
                    return fresh
                record = fresh
        raise TransientError(f"request {record.request_id}: the run record kept changing under us")

    def load(self, request_id: str) -> RunRecord:
        """The stored record; :class:`NotFound` when there is none."""
        fresh = self.core.store.get(request_id)
        if fresh is None:
            raise NotFound(f"no training request {request_id!r}")
        return fresh
