"""SQLite plumbing shared by the embedded broker and the run store."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from shared.errors import TransientError


class Connections:
    """One connection per thread (and per process, after a fork); one shared one for ``:memory:``.

    Transactions are explicit (``isolation_level=None``): ``tx()`` takes the write lock up front
    with ``BEGIN IMMEDIATE`` so a read-then-write never races another writer, and SQLite's
    ``busy_timeout`` makes the others wait for it rather than fail.
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
            # A forked child must not share its parent's connection.
            self._local.conn = self._open()
            self._local.pid = pid
        return self._local.conn

    def init(self, script: str) -> None:
        with self._lock():
            conn = self.conn()
            try:
                conn.executescript(script)
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
        """A consistent snapshot for multi-statement reads (WAL readers never block writers)."""
        with self._lock():
            conn = self.conn()
            try:
                conn.execute("BEGIN")
                yield conn
            except sqlite3.OperationalError as err:
                raise TransientError(f"SQLite database {self.path!r} failed a read: {err}") from err
            finally:
                if conn.in_transaction:
                    conn.rollback()

    def close(self) -> None:
        with self._guard:
            self._closed = True
            conns, self._all = self._all, []
        for conn in conns:
            try:
                conn.close()
            except sqlite3.Error:
                pass
