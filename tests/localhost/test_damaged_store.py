"""A damaged run store or queue file: ``rlq`` says which file and how to recover, in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.adapters.sqlite_broker import SqliteBroker
from shared.adapters.sqlite_store import SqliteRunStore
from shared.models import RunRecord

pytestmark = pytest.mark.usefixtures("cli_env")


def damage(path: Path) -> None:
    with path.open("r+b") as f:
        f.write(b"\x13" * 4096)  # the header and the first page overwritten


@pytest.fixture
def stores(data_dir: Path) -> Path:
    data_dir.mkdir(parents=True)
    with SqliteRunStore(data_dir / "runs.sqlite3") as store:
        store.insert_if_absent(RunRecord(request_id="kept"))
    with SqliteBroker(data_dir / "queue.sqlite3") as broker:
        broker.create_queue("training-requests")
    return data_dir


@pytest.mark.parametrize("file", ["runs.sqlite3", "queue.sqlite3"])
@pytest.mark.parametrize("command", [["list"], ["serve", "--port", "0"]])
def test_a_damaged_file_is_one_line_naming_it_and_the_way_out(run, stores, file, command):
    path = stores / file
    damage(path)
    result = run(*command)
    assert result.exit_code == 1
    text = " ".join(result.output.split())  # the console may wrap the line at its width
    assert "Traceback" not in result.output
    assert f"{path} is damaged (file is not a database)" in text
    assert f"mv {path} {path}.damaged" in text and f"sqlite3 {path} .recover" in text


def test_with_the_damaged_file_moved_aside_rlq_starts_empty(run, stores):
    damage(stores / "runs.sqlite3")
    assert run("list").exit_code == 1
    (stores / "runs.sqlite3").rename(stores / "runs.sqlite3.damaged")
    for side in ("-wal", "-shm"):
        (stores / f"runs.sqlite3{side}").unlink(missing_ok=True)
    result = run("list")
    assert result.exit_code == 0, result.output
