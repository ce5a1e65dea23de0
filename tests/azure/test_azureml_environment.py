"""Azure ML v2: the job environment carries the environment catalog's pinned packages, serialised
by azure-ai-ml's own Environment entity, and its version follows the catalog."""

from __future__ import annotations

import json

import pytest

from shared.adapters.compute.azureml.v2 import AzureMLV2Backend
from shared.contracts.parsing import parse_request
from tests.support.azureml import WORKSPACE, azureml_settings
from tests.support.azureml_twin import MLClientTwin

ACME = {"namespace": "acme", "module": "acme_sims.envs", "requirement": "acme-sims==1.4.2"}
ROBOT = {"namespace": "robot", "module": "robot_arm", "requirement": "robot-arm[sim]==0.3.0"}


@pytest.fixture
def backend_with():
    made = []

    def make(*packages: dict) -> AzureMLV2Backend:
        settings = azureml_settings(
            azureml_nsg_check="off", env_catalog=json.dumps({"packages": list(packages)})
        )
        twin = MLClientTwin(**WORKSPACE)
        made.append(AzureMLV2Backend(settings=settings, ml_client=twin, runs=twin.runs))
        return made[-1]

    yield make
    for b in made:
        b.close()


def sent(backend: AzureMLV2Backend) -> tuple[str, list[str]]:
    """The environment as the SDK serialises it for the service: its version and its pip list."""
    env = backend.builder.build_head_job(
        parse_request({"env": "acme/Warehouse-v1", "stop": {"training_iteration": 1}}, default_id="aml-env")
    ).environment
    conda = env._to_dict()["conda_file"]  # the SDK's own serialisation of the conda file it uploads
    assert env._to_rest_object().as_dict()["properties"]["condaFile"]  # and what the REST body carries
    return env.version, conda["dependencies"][-1]["pip"]


def test_the_catalogs_packages_join_the_image_and_its_version_follows_the_catalog(backend_with):
    plain_version, plain_pip = sent(backend_with())
    acme_version, acme_pip = sent(backend_with(ACME))
    both_version, both_pip = sent(backend_with(ACME, ROBOT))
    assert "ray[rllib]==2.60.0" in plain_pip and "acme-sims==1.4.2" not in plain_pip
    assert acme_pip == [*plain_pip, "acme-sims==1.4.2"]
    assert both_pip == [*plain_pip, "acme-sims==1.4.2", "robot-arm[sim]==0.3.0"]
    assert len({plain_version, acme_version, both_version}) == 3  # each catalog its own image
    assert sent(backend_with(ACME))[0] == acme_version  # the same catalog: the version Azure ML built


def test_the_head_job_names_the_catalogued_module_for_the_trainer(backend_with):
    job = backend_with(ACME).builder.build_head_job(
        parse_request({"env": "acme/Warehouse-v1", "env_config": {"aisles": 4}}, default_id="aml-env-2")
    )
    argv = json.loads(job.environment_variables["RLQ_TRAINER_ARGV"])
    assert argv[argv.index("--env-module") + 1] == "acme_sims.envs"
    assert json.loads(argv[argv.index("--env-config") + 1]) == {"aisles": 4}
