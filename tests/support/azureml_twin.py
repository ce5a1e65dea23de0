"""An in-package Azure ML workspace for :class:`shared.adapters.compute.azureml.v2.AzureMLV2Backend`.

``MLClientTwin`` answers the slice of ``azure.ai.ml.MLClient`` the backend calls —
``workspaces.get`` (the readiness check), ``compute.get`` / ``compute.begin_create_or_update``,
``jobs.get`` / ``jobs.create_or_update`` / ``jobs.begin_cancel``, ``models.create_or_update`` /
``models.get`` / ``models.list`` — with Azure's semantics, and keeps the real SDK entities it was handed:

* clusters are created asynchronously: ``begin_create_or_update`` returns a poller at once and the
  cluster reports ``Creating`` until :meth:`MLClientTwin.provision` (``Succeeded`` or ``Failed``
  with Azure's error);
* job names are unique in the workspace: creating a job under a taken name raises the SDK's
  ``HttpResponseError`` with Azure's message ("A job with this name already exists"); an unknown
  name is ``ResourceNotFoundError``;
* the job state machine: ``NotStarted → Starting → Preparing → Queued → Running → Finalizing →
  Completed`` (:meth:`step`), ``Failed``, and cancel as ``CancelRequested`` → ``Canceled`` on the
  next step; a terminal job ignores a cancel;
* the model registry keeps what goes on the wire — each version as the REST body
  ``Model._to_rest_object()`` makes — and answers with ``Model._from_rest_object`` of it, so a
  registration round-trips through the SDK's own serialisation. A version is immutable but for its
  description and tags (Learn, "Work with models in Azure Machine Learning": only ``description``
  and ``tags`` can be updated): re-sending it with another path or type is refused (409, the wording
  is the twin's); no version given takes the container's next (``"1"`` first); a path
  ``azureml://jobs/<job>/outputs/<output>/...`` must name a job of the workspace and one of its
  outputs (``artifacts`` is the reserved default one); ``get`` takes a version or the one managed
  label, ``latest`` (the most recently created), never both; ``list(name)`` lists that model's
  versions, ``list()`` its containers;
* the MLflow side (:class:`~shared.adapters.compute.azureml.runs.RunReader`): latest metrics with their step,
  run tags (the head's address), the trainer's ``summary.json`` artifact.

With ``path`` the workspace lives in a file (pickled, locked), so a process killed mid-call and its
successor see one workspace — the crash tests count jobs across SIGKILLs with it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pickle
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.adapters.compute.azureml.runs import RunView

PROGRESSION = ("NotStarted", "Starting", "Preparing", "Queued", "Running", "Finalizing", "Completed")
TERMINAL = frozenset({"Completed", "Failed", "Canceled"})


def _copy(entity: Any) -> Any:
    """An independent copy of an SDK entity (what a REST round trip gives the caller)."""
    return pickle.loads(pickle.dumps(entity))


def _http_error(message: str, status: int) -> Exception:
    from azure.core.exceptions import HttpResponseError

    err = HttpResponseError(message=message)
    err.status_code = status
    return err


def _not_found(message: str) -> Exception:
    from azure.core.exceptions import ResourceNotFoundError

    err = ResourceNotFoundError(message=message)
    err.status_code = 404
    return err


class _DonePoller:
    """What ``begin_*`` returns: an LRO poller the backend never waits on."""

    def __init__(self, result: Any = None) -> None:
        self._result = result

    def done(self) -> bool:
        return False

    def result(self, timeout: float | None = None) -> Any:
        return self._result


@dataclass
class _State:
    computes: dict[str, Any] = field(default_factory=dict)
    jobs: dict[str, Any] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    steps: dict[str, int] = field(default_factory=dict)
    tags: dict[str, dict[str, str]] = field(default_factory=dict)
    summaries: dict[str, dict[str, Any]] = field(default_factory=dict)
    cancels: dict[str, int] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    fail_next: dict[str, Exception] = field(default_factory=dict)
    workspace_deleted: bool = False
    # model name -> version -> the REST body (``Model._to_rest_object().as_dict()``) Azure keeps
    models: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    model_order: list[tuple[str, str]] = field(default_factory=list)  # creation order (``@latest``)


class MLClientTwin:
    """The workspace: ``.compute``, ``.jobs`` like ``MLClient``; driving methods for tests."""

    def __init__(
        self,
        *,
        subscription_id: str = "00000000-0000-0000-0000-000000000000",
        resource_group: str = "rlq-rg",
        workspace: str = "rlq-ws",
        path: Path | str | None = None,
    ) -> None:
        self.subscription_id = subscription_id
        self.resource_group_name = resource_group
        self.workspace_name = workspace
        self._path = Path(path) if path is not None else None
        self._mem = _State()
        self._lock = threading.RLock()
        self.compute = _ComputeOps(self)
        self.jobs = _JobOps(self)
        self.workspaces = _WorkspaceOps(self)
        self.runs = _Runs(self)
        self.models = _ModelOps(self)
        self.before_create: Any = None  # hook(job) called before a job is stored
        self.on_create: Any = None  # hook(job) called after a job is stored, before create returns

    # --- state -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def state(self, *, write: bool = False) -> Iterator[_State]:
        with self._lock:
            if self._path is None:
                yield self._mem
                return
            self._path.parent.mkdir(parents=True, exist_ok=True)
            with open(str(self._path) + ".lock", "a+") as lockf:
                fcntl.flock(lockf, fcntl.LOCK_EX)
                try:
                    st = pickle.loads(self._path.read_bytes()) if self._path.exists() else _State()
                    yield st
                    if write:
                        tmp = self._path.with_suffix(".tmp")
                        tmp.write_bytes(pickle.dumps(st))
                        os.replace(tmp, self._path)
                finally:
                    fcntl.flock(lockf, fcntl.LOCK_UN)

    def _call(self, st: _State, method: str, target: str) -> None:
        st.calls.append((method, target))
        err = st.fail_next.pop(method, None)
        if err is not None:
            raise err

    # --- driving (tests) -----------------------------------------------------------------------

    def provision(self, name: str, state: str = "Succeeded", error: str | None = None) -> None:
        with self.state(write=True) as st:
            c = st.computes[name]
            c._provisioning_state = state
            c._provisioning_errors = error

    def add_compute(self, entity: Any, state: str = "Succeeded") -> None:
        with self.state(write=True) as st:
            entity = _copy(entity)
            entity._provisioning_state = state
            st.computes[entity.name] = entity

    def step(self, name: str) -> str:
        """Advance a job one state (CancelRequested → Canceled)."""
        with self.state(write=True) as st:
            job = st.jobs[name]
            status = job._status
            if status in TERMINAL:
                return status
            if status == "CancelRequested":
                job._status = "Canceled"
            else:
                job._status = (
                    PROGRESSION[PROGRESSION.index(status) + 1] if status in PROGRESSION else "Running"
                )
            return job._status

    def run_to(self, name: str, status: str) -> None:
        with self.state(write=True) as st:
            st.jobs[name]._status = status

    def fail(self, name: str, *, message: str) -> None:
        with self.state(write=True) as st:
            st.jobs[name]._status = "Failed"
            st.summaries.setdefault(name, {})["error"] = message

    def preempt(self, name: str) -> None:
        """Azure reclaims the job's low-priority node (or loses it): the job ends ``Failed`` with no
        trainer summary, the trainer never reaching its own exit (docs/azure.md)."""
        with self.state(write=True) as st:
            st.jobs[name]._status = "Failed"

    def log_metrics(self, name: str, step: int, **metrics: float) -> None:
        with self.state(write=True) as st:
            st.metrics.setdefault(name, {}).update(metrics)
            st.steps[name] = max(step, st.steps.get(name, 0))

    def set_tag(self, name: str, key: str, value: str) -> None:
        with self.state(write=True) as st:
            st.tags.setdefault(name, {})[key] = value

    def write_summary(self, name: str, summary: Mapping[str, Any]) -> None:
        with self.state(write=True) as st:
            st.summaries.setdefault(name, {}).update(summary)

    def delete_workspace(self) -> None:
        """The workspace is gone (deleted, or the settings name another): ``workspaces.get`` is a 404."""
        with self.state(write=True) as st:
            st.workspace_deleted = True

    def fail_next(self, method: str, error: Exception) -> None:
        with self.state(write=True) as st:
            st.fail_next[method] = error

    def job(self, name: str) -> Any:
        with self.state() as st:
            return st.jobs[name]

    def job_names(self) -> list[str]:
        with self.state() as st:
            return list(st.order)

    def compute_entity(self, name: str) -> Any:
        with self.state() as st:
            return st.computes[name]

    def calls(self) -> list[tuple[str, str]]:
        with self.state() as st:
            return list(st.calls)

    def cancel_count(self, name: str) -> int:
        with self.state() as st:
            return st.cancels.get(name, 0)

    def jobs_per_request(self) -> dict[str, int]:
        from shared.adapters.compute.azureml.jobs import ROLE_TAG, RUN_TAG

        out: dict[str, int] = {}
        with self.state() as st:
            for job in st.jobs.values():
                key = f"{job.tags.get(RUN_TAG)}/{job.tags.get(ROLE_TAG)}"
                out[key] = out.get(key, 0) + 1
        return out


class _WorkspaceOps:
    """``workspaces.get``: this workspace, or Azure's 404 for another name or once deleted."""

    def __init__(self, twin: MLClientTwin) -> None:
        self._t = twin

    def get(self, name: str | None = None, **kwargs: Any) -> Any:
        from azure.ai.ml.entities import Workspace

        wanted = name or self._t.workspace_name
        with self._t.state(write=True) as st:
            self._t._call(st, "workspaces.get", wanted)
            if wanted != self._t.workspace_name or st.workspace_deleted:
                raise _not_found(
                    f"(ResourceNotFound) The Resource 'Microsoft.MachineLearningServices/workspaces/{wanted}' "
                    f"under resource group '{self._t.resource_group_name}' was not found."
                )
        return Workspace(name=wanted, resource_group=self._t.resource_group_name)


class _ComputeOps:
    def __init__(self, twin: MLClientTwin) -> None:
        self._t = twin

    def get(self, name: str) -> Any:
        with self._t.state(write=True) as st:
            self._t._call(st, "compute.get", name)
            if name not in st.computes:
                raise _not_found(f"(ResourceNotFound) Compute {name} not found in workspace")
            return _copy(st.computes[name])

    def begin_create_or_update(self, compute: Any) -> _DonePoller:
        with self._t.state(write=True) as st:
            self._t._call(st, "compute.begin_create_or_update", compute.name)
            entity = _copy(compute)
            entity._provisioning_state = "Creating"
            st.computes[compute.name] = entity
            return _DonePoller(_copy(entity))


class _JobOps:
    def __init__(self, twin: MLClientTwin) -> None:
        self._t = twin

    def get(self, name: str) -> Any:
        with self._t.state(write=True) as st:
            self._t._call(st, "jobs.get", name)
            if name not in st.jobs:
                raise _not_found(f"(UserError) Job {name} not found")
            return _copy(st.jobs[name])

    def create_or_update(self, job: Any, **kwargs: Any) -> Any:
        if self._t.before_create is not None:
            self._t.before_create(job)
        with self._t.state(write=True) as st:
            self._t._call(st, "jobs.create_or_update", job.name)
            if job.name in st.jobs:
                raise _http_error(
                    "(UserError) A job with this name already exists. If you are trying to create a new job, "
                    "use a different name.",
                    400,
                )
            # as the SDK does before sending: a command() builder node becomes its CommandJob
            stored = _copy(job._to_job() if hasattr(job, "_to_job") else job)
            stored._status = "NotStarted"
            from azure.ai.ml.entities import JobService

            t = self._t
            studio = (
                f"https://ml.azure.com/runs/{job.name}?wsid=/subscriptions/{t.subscription_id}/resourcegroups/"
                f"{t.resource_group_name}/workspaces/{t.workspace_name}"
            )
            stored.services = {**(stored.services or {}), "Studio": JobService(endpoint=studio)}
            st.jobs[job.name] = stored
            st.order.append(job.name)
            out = _copy(stored)
        if self._t.on_create is not None:
            self._t.on_create(out)
        return out

    def begin_cancel(self, name: str, **kwargs: Any) -> _DonePoller:
        with self._t.state(write=True) as st:
            self._t._call(st, "jobs.begin_cancel", name)
            if name not in st.jobs:
                raise _not_found(f"(UserError) Job {name} not found")
            job = st.jobs[name]
            st.cancels[name] = st.cancels.get(name, 0) + 1
            if job._status not in TERMINAL:
                job._status = "CancelRequested"
            return _DonePoller()


class _Runs:
    """The MLflow side of the workspace (:class:`~shared.adapters.compute.azureml.runs.RunReader`)."""

    def __init__(self, twin: MLClientTwin) -> None:
        self._t = twin

    def get_run(self, run_id: str) -> RunView | None:
        with self._t.state(write=True) as st:
            self._t._call(st, "mlflow.get_run", run_id)
            if run_id not in st.jobs:
                return None
            job = st.jobs[run_id]
            tags = {**dict(job.tags or {}), **st.tags.get(run_id, {})}
            return RunView(metrics=dict(st.metrics.get(run_id, {})), step=st.steps.get(run_id, 0), tags=tags)

    def summary(self, run_id: str) -> dict[str, Any] | None:
        with self._t.state(write=True) as st:
            self._t._call(st, "mlflow.download_artifacts", run_id)
            data = st.summaries.get(run_id)
            return dict(data) if data else None


_JOB_OUTPUT = re.compile(r"^azureml://jobs/(?P<job>[^/]+)/outputs/(?P<output>[^/]+)(?:/paths/.*)?$")
_MUTABLE = frozenset({"description", "tags"})  # all a model version lets change (Learn, "Work with models")


def _validation(message: str) -> Exception:
    from azure.ai.ml.exceptions import ErrorCategory, ErrorTarget, ValidationException

    return ValidationException(
        message=message,
        no_personal_data_message=message,
        target=ErrorTarget.MODEL,
        error_category=ErrorCategory.USER_ERROR,
    )


class _ModelOps:
    """``models.create_or_update`` / ``get`` / ``list``: the workspace's model registry."""

    def __init__(self, twin: MLClientTwin) -> None:
        self._t = twin

    def _arm_id(self, name: str, version: str | None = None) -> str:
        t = self._t
        base = (
            f"/subscriptions/{t.subscription_id}/resourceGroups/{t.resource_group_name}/providers/"
            f"Microsoft.MachineLearningServices/workspaces/{t.workspace_name}/models/{name}"
        )
        return base + (f"/versions/{version}" if version is not None else "")

    def _entity(self, name: str, version: str, wire: dict[str, Any]) -> Any:
        """What Azure answers for one version, read back by the SDK (``Model._from_rest_object``)."""
        from azure.ai.ml._restclient.arm_ml_service.models import ModelVersion
        from azure.ai.ml.entities import Model

        body = {
            "id": self._arm_id(name, version),
            "name": version,
            "type": "Microsoft.MachineLearningServices/workspaces/models/versions",
            "properties": {"flavors": {}, **wire["properties"]},
            "systemData": wire["systemData"],
        }
        return Model._from_rest_object(ModelVersion(body))

    def create_or_update(self, model: Any) -> Any:
        from azure.ai.ml.entities import Model

        if not isinstance(model, Model) or not model.name:
            raise _validation("the twin registers named Model entities only")
        with self._t.state(write=True) as st:
            self._t._call(st, "models.create_or_update", model.name)
            versions = st.models.get(model.name, {})
            version = model.version or str(max((int(v) for v in versions if v.isdigit()), default=0) + 1)
            wire = model._to_rest_object().as_dict()  # what the SDK puts on the wire
            props = wire["properties"]
            path = str(props.get("modelUri") or "")
            m = _JOB_OUTPUT.match(path)
            if m is not None:
                job = st.jobs.get(m["job"])
                if job is None:
                    raise _not_found(f"(UserError) Job {m['job']} not found (model path {path})")
                outputs = set((job.outputs or {}).keys()) | {"artifacts"}
                if m["output"] not in outputs:
                    raise _http_error(
                        f"(UserError) Job {m['job']} has no output named {m['output']!r} "
                        f"(outputs: {', '.join(sorted(outputs))})",
                        400,
                    )
            old = versions.get(version)
            if old is not None:
                before = {k: v for k, v in old["properties"].items() if k not in _MUTABLE}
                after = {k: v for k, v in props.items() if k not in _MUTABLE}
                changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
                if changed:
                    raise _http_error(
                        f"(UserError) Conflict: model {model.name} version {version} exists; only its description "
                        f"and tags can be updated, not {', '.join(changed)}",
                        409,
                    )
                old["properties"].update({k: props.get(k) for k in _MUTABLE})
            else:
                from shared.contracts.base import utcnow

                stamp = utcnow().isoformat().replace("+00:00", "Z")
                versions = st.models.setdefault(model.name, versions)
                versions[version] = {
                    "properties": props,
                    "systemData": {"createdAt": stamp, "createdBy": "rlq", "createdByType": "Application"},
                }
                st.model_order.append((model.name, version))
            return self._entity(model.name, version, versions[version])

    def get(self, name: str, version: str | None = None, label: str | None = None) -> Any:
        # the SDK's own checks, before any call (ModelOperations.get / _resolve_label_to_asset)
        if version and label:
            raise _validation("Cannot specify both version and label.")
        if label and label != "latest":
            raise _validation(f"Asset {name} with version label {label} does not exist in workspace.")
        if not version and not label:
            raise _validation("Must provide either version or label")
        with self._t.state(write=True) as st:
            self._t._call(st, "models.get", f"{name}@{label}" if label else f"{name}:{version}")
            versions = st.models.get(name, {})
            if label == "latest":
                created = [v for n, v in st.model_order if n == name]
                version = created[-1] if created else None
            if version is None or version not in versions:
                raise _not_found(
                    f"(UserError) Model container or version {name}:{version or label} not found in workspace "
                    f"{self._t.workspace_name}"
                )
            return self._entity(name, version, versions[version])

    def list(self, name: str | None = None, stage: str | None = None, **kwargs: Any) -> list[Any]:
        from azure.ai.ml.entities import Model

        with self._t.state(write=True) as st:
            self._t._call(st, "models.list", name or "*")
            if name is not None:
                out = [self._entity(name, v, wire) for v, wire in st.models.get(name, {}).items()]
                return [m for m in out if stage is None or m.stage == stage]
            containers = []
            for model_name in st.models:
                created = [v for n, v in st.model_order if n == model_name]
                c = Model(name=model_name, version="1", id=self._arm_id(model_name))
                c.version = None  # as Model._from_container_rest_object leaves it
                c.latest_version = created[-1] if created else None
                containers.append(c)
            return containers

    # --- reading (tests) -------------------------------------------------------------------------

    def wire(self, name: str, version: str) -> dict[str, Any]:
        """The REST body Azure holds for one version (what ``_to_rest_object`` sent, tags updated)."""
        with self._t.state() as st:
            return pickle.loads(pickle.dumps(st.models[name][version]))
