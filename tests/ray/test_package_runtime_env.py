"""What a Ray job's runtime environment adds for a catalogued environment package: Ray's own
``pip`` for a pinned requirement, ``py_modules`` for a local project's package or wheel."""

from __future__ import annotations

from pathlib import Path

from shared.adapters.compute.ray_jobs import package_runtime_env
from shared.contracts.environments import CatalogEntry
from shared.settings import EXAMPLE_ENV_CATALOG


def entry(**source: str) -> CatalogEntry:
    return CatalogEntry(namespace="acme", module="acme_sims.envs", **source)


def test_a_pinned_requirement_goes_to_pip_and_nothing_else():
    assert package_runtime_env(entry(requirement="acme-sims==1.4.2")) == {"pip": ["acme-sims==1.4.2"]}
    assert package_runtime_env(None) == {}  # a built-in or Atari environment adds nothing


def test_a_local_project_ships_its_top_level_package_flat_or_src_layout(tmp_path: Path):
    flat, src = tmp_path / "flat", tmp_path / "src-layout"
    (flat / "acme_sims").mkdir(parents=True)
    (src / "src" / "acme_sims").mkdir(parents=True)
    wheel = tmp_path / "acme_sims-1.4.2-py3-none-any.whl"
    wheel.write_bytes(b"PK")
    assert package_runtime_env(entry(path=str(flat))) == {"py_modules": [str(flat / "acme_sims")]}
    assert package_runtime_env(entry(path=str(src))) == {"py_modules": [str(src / "src" / "acme_sims")]}
    assert package_runtime_env(entry(path=str(wheel))) == {"py_modules": [str(wheel)]}
    example = EXAMPLE_ENV_CATALOG.parent / "inventory"
    inventory = CatalogEntry(namespace="rlq_examples", module="rlq_inventory", path=str(example))
    assert package_runtime_env(inventory) == {"py_modules": [str(example / "rlq_inventory")]}
