"""``RLQ_BACKEND=azureml_v1``: the retired Azure ML SDK v1 ``ReinforcementLearningEstimator``, refused.

The RL estimator's service is retired (https://aka.ms/rldeprecation) and Azure ML SDK v1 support
ended on 30 June 2026; its images also started Ray 0.8, not the trainer's Ray 2.60. The backend name
stays (the seed's setting, and a request's ``compute.backend``) so a deployment that still names it
gets one clear answer instead of an unknown-backend error: every request fails at once, before
any cluster is touched, with :data:`RETIRED`, which names the SDK v2 backend that replaced it
(``RLQ_BACKEND=azureml``, :mod:`shared.adapters.compute.azureml.v2`). Nothing here imports an Azure SDK.
"""

from __future__ import annotations

import logging
import threading

from shared.contracts.request import TrainingRequest
from shared.errors import PermanentError
from shared.ports import JobStatus
from shared.settings import Settings

log = logging.getLogger(__name__)

DEPRECATION_URL = "https://aka.ms/rldeprecation"
REASON = "AzureMLV1Retired"
RETIRED = (
    "RLQ_BACKEND=azureml_v1: the Azure ML SDK v1 ReinforcementLearningEstimator is retired "
    f"({DEPRECATION_URL}; SDK v1 support ended on 30 June 2026) and its images start Ray 0.8, not the "
    "trainer's Ray 2.60, so nothing is submitted. Use the SDK v2 backend: RLQ_BACKEND=azureml "
    "(azure-ai-ml command jobs on the same head and worker clusters; docs/azure.md)."
)

_warned = False
_warn_lock = threading.Lock()


def _warn_once() -> None:
    global _warned
    with _warn_lock:
        if _warned:
            return
        _warned = True
    log.warning("%s", RETIRED)


class RetiredV1Backend:
    """:class:`shared.ports.ComputeBackend` that refuses every run, saying why and what replaced it."""

    name = "azureml_v1"

    def __init__(self, *, settings: Settings | None = None) -> None:
        _warn_once()

    def ensure_compute(self, request: TrainingRequest) -> None:
        raise PermanentError(RETIRED, reason=REASON)

    def find(self, request_id: str, attempt: int = 1) -> str | None:
        return None  # nothing was ever submitted through this name by this deployment's rlq

    def submit(self, request: TrainingRequest, attempt: int = 1) -> str:
        raise PermanentError(RETIRED, reason=REASON)

    def status(self, run_id: str) -> JobStatus:
        raise PermanentError(RETIRED, reason=REASON)

    def cancel(self, run_id: str) -> None:
        return None  # it never started a job: nothing to stop

    def close(self) -> None:
        return None
