"""The ModelRegistry contract on both run stores: SQLite (a file, and across processes) and Azure
Table storage (Azurite; it fails loudly, never skips, when Azurite cannot start)."""

from __future__ import annotations

import multiprocessing
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.adapters.store.sqlite_store import SqliteRunStore
from shared.adapters.store.table_store import TableRunStore
from shared.core.models import Champions
from tests.support.azurite import Azurite

from .model_registry_contract import T0, ModelRegistryContract, Silent, completed_run


class TestSqliteModelRegistry(ModelRegistryContract):
    @pytest.fixture
    def registry(self, tmp_path: Path) -> Iterator[SqliteRunStore]:
        s = SqliteRunStore(tmp_path / "runs.db")
        yield s
        s.close()


@pytest.mark.azurite
class TestTableModelRegistry(ModelRegistryContract):
    racers = 4  # each registration is several HTTP calls; four racers conflict plenty

    @pytest.fixture
    def registry(self, azurite: Azurite) -> Iterator[TableRunStore]:
        s = TableRunStore(connection_string=azurite.connection_string, table_name="m" + uuid.uuid4().hex[:20])
        yield s
        s.close()


@pytest.mark.azurite
def test_model_rows_stay_out_of_the_run_queries(azurite: Azurite) -> None:
    with TableRunStore(
        connection_string=azurite.connection_string, table_name="m" + uuid.uuid4().hex[:20]
    ) as s:
        Champions(s, Silent, lambda: T0).register(*completed_run("r1", "cart"))
        assert s.list() == [] and s.count([]) == 0
        assert s.get_model("cart").champion_version == 1


def _register(path: str, i: int, start) -> None:  # in a child process
    start.wait(timeout=60)
    with SqliteRunStore(path) as store:
        Champions(store, Silent, lambda: T0).register(*completed_run(f"proc-{i}", "procs"))


def test_processes_completing_at_once_crown_one_champion(tmp_path: Path) -> None:
    path = str(tmp_path / "runs.db")
    SqliteRunStore(path).close()  # the schema, before the racers open it
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(4)
    procs = [ctx.Process(target=_register, args=(path, i, start)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    with SqliteRunStore(path) as store:
        model = store.get_model("procs")
        versions = store.list_versions("procs")
    assert sorted(v.version for v in versions) == [1, 2, 3, 4]
    assert sum(v.promoted for v in versions) == 1
    assert len(model.history) == 1 and model.champion_version == next(
        v.version for v in versions if v.promoted
    )
