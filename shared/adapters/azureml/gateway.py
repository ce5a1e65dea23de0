"""The Azure ML SDK v1 calls of the legacy backend, behind a Protocol (the real SDK, or the twin)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol

from shared.adapters.azureml.clusters import ComputeInfo, workspace_coordinates
from shared.adapters.azureml.errors import sdk_errors
from shared.settings import Settings

# --- what the backend needs from Azure ML (the SDK, or the twin) ------------------------------


class RunLike(Protocol):
    """The slice of ``azureml.core.Run`` the backend uses (the twin's runs have it too)."""

    id: str

    def get_status(self) -> str: ...
    def get_metrics(self, name: str | None = None, recursive: bool = False) -> dict[str, Any]: ...
    def get_details(self) -> dict[str, Any]: ...
    def get_portal_url(self) -> str: ...
    def get_children(self) -> Iterable[RunLike]: ...
    def get_file_names(self) -> list[str]: ...
    def download_file(self, name: str, output_file_path: str | None = None) -> None: ...
    def cancel(self) -> None: ...


class AmlGateway(Protocol):
    """Every Azure ML call the backend makes. :class:`SdkGateway` is the real one."""

    def get_compute(self, name: str) -> ComputeInfo | None: ...
    def create_compute(self, name: str, provisioning_configuration: Any) -> None: ...
    def find_runs(self, experiment: str, tags: Mapping[str, str]) -> list[RunLike]: ...
    def submit(self, experiment: str, estimator: Any, tags: Mapping[str, str]) -> RunLike: ...
    def get_run(self, run_id: str) -> RunLike: ...
    def workspace_ids(self) -> tuple[str, str, str]: ...


def token_auth(credential: Any = None) -> Any:
    """``azureml`` auth from azure-identity: managed identity in Functions, ``az login`` locally."""
    from azureml.core.authentication import TokenAuthentication

    if credential is None:
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential()

    def get_token_for_audience(resource: str) -> str:
        scope = resource if resource.endswith("/.default") else resource.rstrip("/") + "/.default"
        return credential.get_token(scope).token

    return TokenAuthentication(get_token_for_audience)


def workspace_from_settings(settings: Settings) -> Any:
    from azureml.core import Workspace

    sub, rg, name = workspace_coordinates(settings)
    with sdk_errors("open workspace"):
        return Workspace(sub, rg, name, auth=token_auth())


class SdkGateway:
    """:class:`AmlGateway` on the real ``azureml-core`` classes; the workspace is opened lazily."""

    def __init__(self, workspace_factory: Callable[[], Any]) -> None:
        self._factory = workspace_factory
        self._ws: Any = None
        self._lock = threading.Lock()

    @property
    def workspace(self) -> Any:
        with self._lock:
            if self._ws is None:
                self._ws = self._factory()
            return self._ws

    def get_compute(self, name: str) -> ComputeInfo | None:
        from azureml.core.compute import ComputeTarget
        from azureml.exceptions import ComputeTargetException

        try:
            target = ComputeTarget(workspace=self.workspace, name=name)
        except ComputeTargetException as err:
            if "notfound" in str(err).replace(" ", "").lower():
                return None
            raise
        scale = getattr(target, "scale_settings", None)
        errors = getattr(target, "provisioning_errors", None)
        return ComputeInfo(
            name=target.name,
            compute_type=str(getattr(target, "type", "") or ""),
            provisioning_state=str(getattr(target, "provisioning_state", "") or ""),
            vm_size=getattr(target, "vm_size", None),
            vnet_name=getattr(target, "vnet_name", None),
            subnet_name=getattr(target, "subnet_name", None),
            vnet_resource_group=getattr(target, "vnet_resourcegroup_name", None),
            max_nodes=getattr(scale, "maximum_node_count", None) if scale is not None else None,
            errors=json.dumps(errors)[:1000] if errors else None,
        )

    def create_compute(self, name: str, provisioning_configuration: Any) -> None:
        from azureml.core.compute import ComputeTarget

        # No wait_for_completion: Azure ML queues the run until the nodes are up.
        ComputeTarget.create(self.workspace, name, provisioning_configuration)

    def find_runs(self, experiment: str, tags: Mapping[str, str]) -> list[RunLike]:
        from azureml.core import Experiment

        runs = Experiment(self.workspace, experiment).get_runs(tags=dict(tags))
        return list(_take(runs, 20))

    def submit(self, experiment: str, estimator: Any, tags: Mapping[str, str]) -> RunLike:
        from azureml.core import Experiment

        return Experiment(self.workspace, experiment).submit(config=estimator, tags=dict(tags))

    def get_run(self, run_id: str) -> RunLike:
        from azureml.core import Run

        return Run.get(self.workspace, run_id)

    def workspace_ids(self) -> tuple[str, str, str]:
        ws = self.workspace
        return ws.subscription_id, ws.resource_group, ws.name


def _take(items: Iterable[Any], n: int) -> Iterator[Any]:
    for i, item in enumerate(items):
        if i >= n:
            return
        yield item
