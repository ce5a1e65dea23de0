"""The RunStore contract against SQLite files, plus what only SQLite promises (processes, :memory:)."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from shared.adapters.store.sqlite_store import SqliteRunStore
from shared.contracts.run import RunRecord, RunState

from .run_store_contract import RunStoreContract, read_modify_write, record


class TestSqliteRunStore(RunStoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path):
        s = SqliteRunStore(tmp_path / "runs.db")
        yield s
        s.close()


class TestSqliteRunStoreInMemory(RunStoreContract):
    race_rounds = 10

    @pytest.fixture
    def store(self):
        s = SqliteRunStore(":memory:")
        yield s
        s.close()


def test_records_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    with SqliteRunStore(path) as s:
        s.insert_if_absent(record("keep", state=RunState.running))
        s.update(s.get("keep").model_copy(update={"run_id": "run-7"}))
    with SqliteRunStore(path) as s:
        got = s.get("keep")
    assert (got.run_id, got.version, got.state) == ("run-7", 1, RunState.running)


def _bump_in_process(path: str, n: int) -> None:
    store = SqliteRunStore(path)
    for _ in range(n):
        read_modify_write(
            store, "shared", lambda r: r.model_copy(update={"poll_failures": r.poll_failures + 1})
        )
    store.close()


def test_processes_share_one_file_without_lost_updates(tmp_path: Path) -> None:
    path = str(tmp_path / "runs.db")
    with SqliteRunStore(path) as s:
        s.insert_if_absent(RunRecord(request_id="shared"))
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_bump_in_process, args=(path, 40)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    with SqliteRunStore(path) as s:
        final = s.get("shared")
    assert (final.poll_failures, final.version) == (80, 80)


def test_clock_stamps_updated_at(tmp_path: Path) -> None:
    with SqliteRunStore(tmp_path / "runs.db", clock=lambda: 1_800_000_000.0) as s:
        s.insert_if_absent(record("t"))
        updated = s.update(s.get("t"))
        assert updated.updated_at.timestamp() == 1_800_000_000.0
        assert s.get("t").updated_at == updated.updated_at
