"""The run store on SQLite: one row per request, the record as JSON beside indexed columns.

The local host and the tests use it; Azure uses the Table store with the same contract
(``tests/contract/run_store_contract.py``). ``update`` is a compare-and-swap on ``version``, so two
pollers racing on one run never lose a write: the loser gets :class:`shared.errors.Conflict`,
re-reads and decides again.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from shared.errors import Conflict, NotFound, TransientError
from shared.models import RunRecord, RunState, utcnow

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    request_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    version INTEGER NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_state ON runs (state, created_at);
CREATE INDEX IF NOT EXISTS runs_by_created ON runs (created_at);
"""


class SqliteRunStore:
    """:class:`shared.ports.RunStore` on one SQLite file (or ``":memory:"`` for unit tests).

    Safe across threads (a connection each; one shared, serialised connection for ``:memory:``)
    and across processes (WAL mode, ``busy_timeout``, writes under ``BEGIN IMMEDIATE``).
    ``clock`` stamps ``updated_at`` on every update; it may return an aware datetime or epoch
    seconds.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        clock: Callable[[], datetime | float] = utcnow,
        busy_timeout_s: float = 30.0,
    ) -> None:
        self.path = str(path)
        self._clock = clock
        self._db = _Connections(self.path, busy_timeout_s=busy_timeout_s)
        self._db.init(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> SqliteRunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- RunStore -------------------------------------------------------------------------

    def insert_if_absent(self, record: RunRecord) -> tuple[RunRecord, bool]:
        with self._db.tx() as conn:
            cur = conn.execute(
                "INSERT OR IGNORE INTO runs (request_id, state, created_at, updated_at, version, record)"
                " VALUES (?,?,?,?,?,?)",
                (
                    record.request_id,
                    record.state.value,
                    _epoch(record.created_at),
                    _epoch(record.updated_at),
                    record.version,
                    record.model_dump_json(),
                ),
            )
            if cur.rowcount == 1:
                return record.model_copy(deep=True), True
            row = conn.execute("SELECT record FROM runs WHERE request_id=?", (record.request_id,)).fetchone()
        return RunRecord.model_validate_json(row[0]), False

    def get(self, request_id: str) -> RunRecord | None:
        with self._db.read() as conn:
            row = conn.execute("SELECT record FROM runs WHERE request_id=?", (request_id,)).fetchone()
        return None if row is None else RunRecord.model_validate_json(row[0])

    def update(self, record: RunRecord) -> RunRecord:
        now = self._now()
        stored = record.model_copy(update={"version": record.version + 1, "updated_at": now})
        with self._db.tx() as conn:
            cur = conn.execute(
                "UPDATE runs SET state=?, updated_at=?, version=?, record=? WHERE request_id=? AND version=?",
                (
                    stored.state.value,
                    _epoch(now),
                    stored.version,
                    stored.model_dump_json(),
                    record.request_id,
                    record.version,
                ),
            )
            if cur.rowcount == 1:
                return stored
            row = conn.execute("SELECT version FROM runs WHERE request_id=?", (record.request_id,)).fetchone()
        if row is None:
            raise NotFound(f"no run record for request_id {record.request_id!r}")
        raise Conflict(
            f"run record {record.request_id!r} is at version {row[0]}, not {record.version}:"
            " re-read and retry"
        )

    def list(self, *, states: Iterable[RunState] | None = None, limit: int = 100) -> list[RunRecord]:
        """Newest first (by ``created_at``, then by insertion)."""
        sql, params = "SELECT record FROM runs", []
        if states is not None:
            wanted = _state_values(states)
            if not wanted:
                return []
            sql += f" WHERE state IN ({','.join('?' * len(wanted))})"
            params = wanted
        sql += " ORDER BY created_at DESC, rowid DESC LIMIT ?"
        with self._db.read() as conn:
            rows = conn.execute(sql, (*params, int(limit))).fetchall()
        return [RunRecord.model_validate_json(r[0]) for r in rows]

    def count(self, states: Iterable[RunState]) -> int:
        wanted = _state_values(states)
        if not wanted:
            return 0
        with self._db.read() as conn:
            return int(
                conn.execute(
                    f"SELECT count(*) FROM runs WHERE state IN ({','.join('?' * len(wanted))})",
                    wanted,
                ).fetchone()[0]
            )

    def _now(self) -> datetime:
        value = self._clock()
        if isinstance(value, datetime):
            return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return datetime.fromtimestamp(float(value), UTC)


def _state_values(states: Iterable[RunState]) -> list[str]:
    return sorted({RunState(s).value for s in states})


def _epoch(value: datetime) -> float:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


class _Connections:
    """One connection per thread (and per process, after a fork); one shared one for ``:memory:``.

    Writes take the write lock up front (``BEGIN IMMEDIATE``) so a conditional update's
    read-after-miss sees the state that made it miss; ``busy_timeout`` makes other writers wait.
    """

    def __init__(self, path: str, *, busy_timeout_s: float) -> None:
        self.path = path
        self.memory = path == ":memory:" or path.startswith("file::memory:")
        self.busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._guard = threading.Lock()
        # ``:memory:`` is private to one connection, so every thread shares it, one at a time.
        self._serial = threading.RLock() if self.memory else None
        self._shared: sqlite3.Connection | None = None
        self._closed = False

    def _open(self) -> sqlite3.Connection:
        if not self.memory:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path, timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_s * 1000)}")
        if not self.memory:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
        with self._guard:
            self._all.append(conn)
        return conn

    def conn(self) -> sqlite3.Connection:
        if self._closed:
            raise RuntimeError(f"the SQLite database {self.path!r} was closed")
        if self.memory:
            if self._shared is None:
                self._shared = self._open()
            return self._shared
        pid = os.getpid()
        if getattr(self._local, "pid", None) != pid:
            self._local.conn = self._open()
            self._local.pid = pid
        return self._local.conn

    def init(self, script: str) -> None:
        with self._lock():
            try:
                self.conn().executescript(script)
            except sqlite3.OperationalError as err:
                raise TransientError(f"SQLite database {self.path!r} is busy or unavailable: {err}") from err

    @contextmanager
    def _lock(self) -> Iterator[None]:
        if self._serial is None:
            yield
        else:
            with self._serial:
                yield

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock():
            conn = self.conn()
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as err:
                raise TransientError(f"SQLite database {self.path!r} is busy: {err}") from err
            try:
                yield conn
                conn.commit()
            except sqlite3.OperationalError as err:
                conn.rollback()
                raise TransientError(f"SQLite database {self.path!r} failed a write: {err}") from err
            except BaseException:
                conn.rollback()
                raise

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        with self._lock():
            conn = self.conn()
            try:
                yield conn
            except sqlite3.OperationalError as err:
                raise TransientError(f"SQLite database {self.path!r} failed a read: {err}") from err

    def close(self) -> None:
        with self._guard:
            self._closed = True
            conns, self._all = self._all, []
        for conn in conns:
            try:
                conn.close()
            except sqlite3.Error:
                pass
