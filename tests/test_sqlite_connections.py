"""SQLite connections are held per thread and closed when their thread ends, so short-lived threads
(an HTTP server's, a lock renewer started per burst) never pile up open files."""

from __future__ import annotations

import gc
import threading
from pathlib import Path

import pytest

from shared.adapters._sqlite import Connections, DamagedDatabase
from shared.adapters.broker.sqlite_broker import SqliteBroker
from shared.adapters.store.sqlite_store import SqliteRunStore
from shared.contracts.request import TrainingRequest
from shared.contracts.run import RunRecord, RunState
from shared.errors import TransientError
from tests.support.descriptors import open_fds


def in_threads(n: int, work) -> None:
    """``work(i)`` on ``n`` threads, one after another, each ending before the next starts."""
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            work(i)
        except BaseException as err:  # noqa: BLE001 - re-raised on the test's thread below
            errors.append(err)

    for i in range(n):
        t = threading.Thread(target=run, args=(i,))
        t.start()
        t.join()
    if errors:
        raise errors[0]


def test_a_threads_connection_is_closed_when_the_thread_ends(tmp_path: Path) -> None:
    db = Connections(str(tmp_path / "x.sqlite3"), busy_timeout_s=5)
    db.init("CREATE TABLE IF NOT EXISTS t (n INTEGER)")
    base = open_fds()

    def write(i: int) -> None:
        with db.tx() as conn:
            conn.execute("INSERT INTO t VALUES (?)", (i,))

    in_threads(200, write)
    gc.collect()
    assert open_fds() - base <= 3  # each thread held ~2-3 (db, WAL, shm): 200 threads would be ~500
    with db.read() as conn:
        assert conn.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 200
    db.close()


def test_close_still_closes_the_connections_of_live_threads(tmp_path: Path) -> None:
    db = Connections(str(tmp_path / "x.sqlite3"), busy_timeout_s=5)
    db.init("CREATE TABLE IF NOT EXISTS t (n INTEGER)")
    base = open_fds()
    ready, done = threading.Barrier(9), threading.Event()

    def hold() -> None:
        with db.read() as conn:
            conn.execute("SELECT COUNT(*) FROM t").fetchone()
        ready.wait()
        done.wait(10)

    threads = [threading.Thread(target=hold) for _ in range(8)]
    for t in threads:
        t.start()
    ready.wait()
    assert open_fds() > base  # eight live threads, each with its connection
    db.close()
    assert open_fds() <= base - 1  # every connection closed, the main thread's (from init) too
    done.set()
    for t in threads:
        t.join()
    with pytest.raises(RuntimeError, match="closed"):
        db.conn()


def test_the_run_store_and_the_queue_open_no_file_per_thread(tmp_path: Path) -> None:
    store = SqliteRunStore(tmp_path / "runs.sqlite3")
    broker = SqliteBroker(tmp_path / "queue.sqlite3")
    broker.create_queue("q")
    base = open_fds()

    def one_request(i: int) -> None:  # what an HTTP request thread does for POST /api/trainings
        request = TrainingRequest.model_validate({"env": "CartPole-v1", "request_id": f"r{i}"})
        broker.send("q", request.model_dump_json().encode(), message_id=request.request_id)
        store.insert_if_absent(
            RunRecord(request_id=request.request_id, request=request, state=RunState.received)
        )
        assert store.get(request.request_id) is not None

    in_threads(300, one_request)
    gc.collect()
    assert open_fds() - base <= 6
    assert len(broker.peek("q", limit=1000)) == 300
    store.close()
    broker.close()


# --- a damaged file: one error naming it and how to recover ----------------------------------------


def fill_store(path: Path, n: int = 200) -> None:
    with SqliteRunStore(path) as store:
        for i in range(n):
            store.insert_if_absent(RunRecord(request_id=f"r{i:04d}", error="x" * 500))
    # closing the last connection checkpoints the WAL into the file


def test_a_file_that_is_not_a_database_is_named_with_the_way_out(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite3"
    fill_store(path)
    with path.open("r+b") as f:
        f.write(b"\x13" * 4096)  # the header and first page overwritten
    with pytest.raises(DamagedDatabase) as caught:
        SqliteRunStore(path)
    text = str(caught.value)
    assert "\n" not in text and str(path) in text
    assert (
        f"mv {path} {path}.damaged" in text and f"sqlite3 {path} .recover | sqlite3 {path}.recovered" in text
    )


def test_a_corrupted_page_is_a_damaged_database_not_a_transient_error(tmp_path: Path) -> None:
    path = tmp_path / "queue.sqlite3"
    broker = SqliteBroker(path)
    broker.create_queue("q")
    for i in range(300):
        broker.send("q", b"y" * 1000, message_id=f"m{i}")
    broker.close()
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    data[3 * page : len(data) - page] = b"\xa5" * (len(data) - 4 * page)  # pages 4.. garbled
    path.write_bytes(bytes(data))
    with pytest.raises(DamagedDatabase, match=r"malformed|not a database") as caught:
        reopened = SqliteBroker(path)
        reopened.create_queue("q")
        reopened.peek("q", limit=1000)
    assert str(path) in str(caught.value)


def test_a_full_or_locked_database_is_still_transient(tmp_path: Path) -> None:
    """Only damage is DamagedDatabase: a lock held past the busy timeout stays TransientError."""
    path = tmp_path / "runs.sqlite3"
    store = SqliteRunStore(path, busy_timeout_s=0.2)
    other = Connections(str(path), busy_timeout_s=0.2)
    with other.tx(), pytest.raises(TransientError, match="busy"):
        store.insert_if_absent(RunRecord(request_id="r1"))
    other.close()
    store.close()


def test_the_wal_stays_small_and_a_health_check_truncates_it(tmp_path: Path) -> None:
    """SQLite's defaults let the WAL reach 4 MB (1000 pages) and never shrink the file."""
    path = tmp_path / "runs.sqlite3"
    wal = tmp_path / "runs.sqlite3-wal"
    with SqliteRunStore(path) as store:
        biggest = 0
        for i in range(600):  # about 2.5 MB of records
            store.insert_if_absent(RunRecord(request_id=f"r-{i}", error="x" * 4000))
            biggest = max(biggest, wal.stat().st_size)
        assert biggest <= 1.5 * (1 << 20), f"the WAL grew to {biggest} bytes"
        assert store.check().endswith("writable")
        assert wal.stat().st_size == 0  # truncated by the health check's checkpoint
        assert store.get("r-599") is not None


def test_a_store_that_ran_out_of_disk_writes_again_once_space_is_freed(tmp_path: Path) -> None:
    """A small tmpfs filled up: writes fail as temporary, then succeed once space is freed, and
    the health check's checkpoint brings the WAL back to zero."""
    import subprocess

    mnt = tmp_path / "small"
    mnt.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=700k", "tmpfs", str(mnt)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("needs a small tmpfs (root, or a machine that allows the mount)")
    try:
        filler = mnt / "filler"
        filler.write_bytes(b"x" * 300_000)
        with SqliteRunStore(mnt / "runs.sqlite3") as store:
            with pytest.raises(TransientError, match="disk is full"):
                for i in range(1000):
                    store.insert_if_absent(RunRecord(request_id=f"r-{i}", error="y" * 2000))
            with pytest.raises(TransientError):
                store.check()
            filler.unlink()
            store.insert_if_absent(RunRecord(request_id="after", error="y" * 2000))
            assert store.check().endswith("writable")
            assert (mnt / "runs.sqlite3-wal").stat().st_size == 0
            assert store.get("after") is not None
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
