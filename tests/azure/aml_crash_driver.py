"""One processing process on the SDK v2 backend that a crash test can SIGKILL and restart.

``python -m tests.azure.aml_crash_driver DATA_DIR ACTION`` builds the production wiring on
``DATA_DIR`` (SQLite queue and run store) with the Azure ML SDK v2 backend over a workspace twin
that lives in a file (``DATA_DIR/aml.pickle``), so the next process sees what the killed one left.

ACTION: ``intake`` (deliver the seed request, as the queue would redeliver it) or ``poll`` (one
poller tick). ``RLQ_TEST_KILL=<before|after>:<head|workers>`` SIGKILLs the process right before a
job is stored in the workspace, or right after it is stored and before the call returns;
``RLQ_FAULT_AT`` works as everywhere (the service's own fault points).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from shared.adapters.compute.azureml.jobs import ROLE_TAG
from shared.adapters.compute.azureml.v2 import AzureMLV2Backend
from shared.composition import build
from shared.core.faults import env_faults
from tests.support.azureml import PONG_REQUEST, WORKSPACE, azureml_settings
from tests.support.azureml_twin import MLClientTwin

SEED = {"request_id": "pong-crash-1", **PONG_REQUEST}


def workspace(data_dir: Path) -> MLClientTwin:
    return MLClientTwin(**WORKSPACE, path=data_dir / "aml.pickle")


def main(data_dir: Path, action: str) -> int:
    settings = azureml_settings(data_dir=data_dir, azureml_nsg_check="off", lock_duration_s=1)
    twin = workspace(data_dir)
    kill = os.environ.get("RLQ_TEST_KILL", "")
    if kill:
        when, role = kill.split(":")

        def hook(job) -> None:
            if job.tags.get(ROLE_TAG) == role:
                os.kill(os.getpid(), signal.SIGKILL)

        if when == "before":
            twin.before_create = hook
        else:
            twin.on_create = hook
    backend = AzureMLV2Backend(settings=settings, ml_client=twin, runs=twin.runs, detail_every=1)
    w = build(settings, compute={"azureml": backend}, faults=env_faults())
    if action == "intake":
        rec = w.service.intake(json.dumps(SEED).encode(), message_id="m-crash-1")
        print(rec.state.value if rec else "none")
    else:
        print(json.dumps(w.service.poll_once().transitions))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), sys.argv[2]))
