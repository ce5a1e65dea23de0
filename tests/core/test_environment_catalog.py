"""The environment catalog at intake: built-in and catalogued ids pass on both ways in, an id in no
catalogued namespace is refused naming ``env``; ``env_config`` is bounded and refused naming it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.contracts.environments import BUILTIN_ENVS, EnvironmentCatalog
from shared.contracts.run import RunState
from shared.errors import InvalidRequest
from shared.settings import EXAMPLE_ENV_CATALOG, Settings

CATALOG = {"packages": [{"namespace": "acme", "module": "acme_sims.envs", "requirement": "acme-sims==1.4.2"}]}


def body(env: str, **extra) -> bytes:
    return json.dumps({"env": env, "stop": {"training_iteration": 2}, **extra}).encode()


@pytest.fixture
def catalogued(wired):
    wired.settings.env_catalog = json.dumps(CATALOG)
    wired.settings._environment_catalog = EnvironmentCatalog.load(wired.settings.env_catalog)
    return wired


@pytest.mark.parametrize(
    "env", ["acme/Warehouse-v1", "FrozenLake-v1", "Taxi-v3", "MountainCarContinuous-v0", "HalfCheetah-v5"]
)
def test_built_in_and_catalogued_ids_are_accepted(catalogued, env):
    record = catalogued.service.intake(body(env), message_id="ok-" + env.replace("/", "-"))
    assert record is not None and record.state is not RunState.rejected, record.error


@pytest.mark.parametrize("env", ["other/Warehouse-v1", "acmex/Warehouse-v1"])
def test_an_id_in_no_catalogued_namespace_is_refused_naming_env_on_both_ways_in(catalogued, env):
    with pytest.raises(InvalidRequest) as err:
        catalogued.service.enqueue(body(env))
    assert err.value.errors[0]["field"] == "env"
    assert "in no catalogued namespace" in err.value.errors[0]["message"]
    assert "acme/" in err.value.errors[0]["message"]  # the allowed namespaces are named
    assert catalogued.broker.counts(catalogued.settings.queue_name)["active"] == 0
    record = catalogued.service.intake(body(env), message_id="nope-1")
    assert record is not None and record.state is RunState.rejected and "env" in record.error


@pytest.mark.parametrize("env", ["acme/Warehouse", "ACME/Warehouse-v1", "pip install x", "../../etc/passwd"])
def test_an_id_of_no_allowed_family_is_refused_naming_them(catalogued, env):
    with pytest.raises(InvalidRequest) as err:
        catalogued.service.enqueue(body(env))
    message = err.value.errors[0]["message"]
    assert err.value.errors[0]["field"] == "env"
    assert "classic control" in message and "toy text" in message and "Atari" in message
    assert "MuJoCo (Ant-v5, HalfCheetah-v5," in message


@pytest.mark.parametrize(
    "env_config, says",
    [
        ({"lead time": 1}, "key 'lead time' is not allowed"),
        ({"render_mode": "human"}, "gymnasium.make's own"),
        ({"a": {"b": {"c": {"d": 1}}}}, "nested deeper than 4"),
        ({"a": "x" * 300}, "at most 256"),
        ({f"k{i}": i for i in range(65)}, "65 keys"),
        ({"a": list(range(65))}, "65 items"),
        ({f"k{i}": "x" * 200 for i in range(30)}, "larger than 4096 bytes"),
        ("lead_time=2", "dictionary"),
    ],
)
def test_a_malformed_env_config_is_refused_naming_the_field(wired, env_config, says):
    with pytest.raises(InvalidRequest) as err:
        wired.service.enqueue(body("CartPole-v1", env_config=env_config))
    assert err.value.errors[0]["field"].startswith("env_config")
    assert says in err.value.errors[0]["message"]


def test_a_bounded_env_config_is_accepted_and_kept(wired):
    config = {"lead_time": 3, "demand": {"mean": 4.5, "spread": [0.1, 0.2]}, "name": "shop-1"}
    record = wired.service.intake(body("CartPole-v1", env_config=config), message_id="cfg-1")
    assert record is not None and record.state is not RunState.rejected
    assert record.request.env_config == config


def test_local_mode_catalogues_the_example_package_and_a_bad_catalog_stops_start_up(tmp_path: Path):
    local = Settings(data_dir=tmp_path, env_catalog=None, local_mode=True)
    entry = local.environment_catalog.entry_for("rlq_examples/Inventory-v0")
    assert entry is not None and entry.module == "rlq_inventory"
    assert entry.path == str(EXAMPLE_ENV_CATALOG.parent / "inventory")  # relative to the catalog file
    assert Settings(data_dir=tmp_path, env_catalog=None, local_mode=False).environment_catalog.packages == ()
    for bad, says in [
        (
            {"packages": [{"namespace": "acme", "module": "m", "requirement": "acme-sims>=1.4"}]},
            "requirement",
        ),
        ({"packages": [{"namespace": "acme", "module": "m"}]}, "exactly one of requirement"),
        (
            {"packages": [{"namespace": "acme", "module": "m", "requirement": "a==1", "index_url": "x"}]},
            "index_url",
        ),
        (
            {
                "packages": [
                    {"namespace": "a", "module": "m", "path": "p"},
                    {"namespace": "a", "module": "n", "path": "q"},
                ]
            },
            "catalogued twice",
        ),
    ]:
        with pytest.raises(ValueError, match=says):
            Settings(data_dir=tmp_path, env_catalog=json.dumps(bad))
    assert len(BUILTIN_ENVS) == 22  # 6 classic control, 5 toy text, 11 MuJoCo
