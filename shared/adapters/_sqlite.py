"""SQLite plumbing shared by the embedded broker and the run store."""

from __future__ import annotations

import errno
import os
import sqlite3
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from shared.errors import RlqError, TransientError

_DAMAGED = {11, 26}  # SQLITE_CORRUPT ("database disk image is malformed"), SQLITE_NOTADB
_READONLY = {8}  # SQLITE_READONLY ("attempt to write a readonly database")
_NOT_UTF8 = "Could not decode to UTF-8"  # Python's sqlite3 reading a TEXT value from garbage pages
_MAX_WHY = 120
WAL_AUTOCHECKPOINT_PAGES = 200  # about 800 KB of 4 KB pages (SQLite's default: 1000)
WAL_SIZE_LIMIT_BYTES = 1 << 20  # the WAL file is cut back to this after a checkpoint (default: never)


def _why(err: BaseException | str) -> str:
    """What went wrong, in a few printable words: never the stored bytes a damaged page holds
    (Python's decode error quotes them)."""
    text = str(err)
    if text.startswith(_NOT_UTF8):
        return "a stored text is not valid UTF-8"
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return text if len(text) <= _MAX_WHY else text[: _MAX_WHY - 1] + "…"


class DamagedDatabase(RlqError):
    """An SQLite file rlq keeps is not a database or is corrupted: retrying cannot help, a person
    must move it aside or recover it. The message is one line naming the file and both ways out."""

    def __init__(self, path: str, err: BaseException | str) -> None:
        self.path = path
        super().__init__(
            f"{path} is damaged ({_why(err)}); with rlq stopped, move it aside to start empty "
            f"(mv {path} {path}.damaged) or recover it (sqlite3 {path} .recover | sqlite3 {path}.recovered) "
            "(permanent: retrying will not help)"
        )


class ReadOnlyDatabase(RlqError):
    """An SQLite file rlq keeps, or its directory, cannot be written: retrying cannot help until a
    person changes the permissions or points rlq at another data directory."""

    def __init__(self, path: str, err: BaseException | str) -> None:
        self.path = path
        super().__init__(
            f"{path} is read-only ({_why(err)}): rlq writes its queue and run store there; make "
            f"{Path(path).parent} and its files writable, or pick another data directory "
            "(--data-dir / RLQ_DATA_DIR) (permanent: retrying will not help)"
        )


def _read_only(path: str) -> bool:
    """Whether the file (or, before it exists, its directory) cannot be written by this process."""
    p = Path(path)
    target = p if p.exists() else p.parent
    return target.exists() and not os.access(target, os.W_OK)


class _Held:
    """A thread's connection, kept in that thread's local storage: when the thread ends its local
    storage is dropped with it, and the finalizer closes the connection (and its WAL files)."""

    __slots__ = ("__weakref__", "conn", "pid")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.pid = os.getpid()


def _close_quietly(conn: sqlite3.Connection) -> None:
    try:
        conn.close()
    except sqlite3.Error:
        pass


class Connections:
    """One connection per thread (and per process, after a fork), closed when its thread ends; one
    shared one for ``:memory:``.

    Threads come and go (an HTTP server's, a lock renewer started per burst of messages): a
    connection outliving its thread would hold three descriptors (the database, its WAL and shared
    memory) for good, and a process serving requests would run out of them.

    Transactions are explicit (``isolation_level=None``): ``tx()`` takes the write lock up front
    with ``BEGIN IMMEDIATE`` so a read-then-write never races another writer, and SQLite's
    ``busy_timeout`` makes the others wait for it rather than fail.
    """

    def __init__(self, path: str, *, busy_timeout_s: float) -> None:
        self.path = path
        self.memory = path == ":memory:" or path.startswith("file::memory:")
        self.busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._closers: dict[int, weakref.finalize] = {}  # id(connection) -> its closer, while open
        self._guard = threading.Lock()
        # ``:memory:`` is private to one connection, so every thread shares it, one at a time.
        self._serial = threading.RLock() if self.memory else None
        self._shared: _Held | None = None
        self._closed = False

    def _open(self) -> sqlite3.Connection:
        if not self.memory:
            try:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                    raise ReadOnlyDatabase(self.path, err.strerror or err) from err
                raise
        conn = sqlite3.connect(
            self.path, timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_s * 1000)}")
            if not self.memory:
                conn.execute("PRAGMA journal_mode=WAL")  # the first read of the file: fails if damaged
                conn.execute("PRAGMA synchronous=NORMAL")
                # Keep the WAL small (SQLite's defaults let it reach 4 MB and never shrink it): a
                # checkpoint every WAL_AUTOCHECKPOINT_PAGES pages, and the WAL file cut back to
                # WAL_SIZE_LIMIT_BYTES each time it restarts; check_writable() also truncates it.
                conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
                conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT_BYTES}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _hold(self, conn: sqlite3.Connection) -> _Held:
        held = _Held(conn)
        key = id(conn)

        def close() -> None:
            with self._guard:
                self._closers.pop(key, None)
            _close_quietly(conn)

        with self._guard:
            if self._closed:
                _close_quietly(conn)
                raise RuntimeError(f"the SQLite database {self.path!r} was closed")
            self._closers[key] = weakref.finalize(held, close)
        return held

    def conn(self) -> sqlite3.Connection:
        if self._closed:
            raise RuntimeError(f"the SQLite database {self.path!r} was closed")
        if self.memory:
            if self._shared is None:
                self._shared = self._hold(self._open())
            return self._shared.conn
        held: _Held | None = getattr(self._local, "held", None)
        if held is None or held.pid != os.getpid():
            # A forked child must not share its parent's connection (nor close it: the finalizer
            # of the parent's is detached in the child, below).
            if held is not None:
                detach = self._closers.pop(id(held.conn), None)
                if detach is not None:
                    detach.detach()
            held = self._local.held = self._hold(self._open())
        return held.conn

    def init(self, script: str) -> None:
        with self._lock():
            try:
                self.conn().executescript(script)
            except sqlite3.DatabaseError as err:
                raise self._failure(err, "is busy or unavailable") from err

    def _failure(self, err: sqlite3.DatabaseError, doing: str) -> Exception:
        """What an SQLite error means to the caller: a damaged file (a person must act), a busy or
        unavailable one (try again), or the error itself (a constraint, a programming error)."""
        code = (getattr(err, "sqlite_errorcode", 0) or 0) & 0xFF
        if code in _DAMAGED or str(err).startswith(_NOT_UTF8):
            return DamagedDatabase(self.path, err)
        if not self.memory and (code in _READONLY or _read_only(self.path)):
            return ReadOnlyDatabase(self.path, err)
        if isinstance(err, sqlite3.OperationalError):
            return TransientError(f"SQLite database {self.path!r} {doing}: {err}")
        return err

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
            try:
                conn = self.conn()
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.DatabaseError as err:
                raise self._failure(err, "is busy") from err
            try:
                yield conn
                conn.commit()
            except sqlite3.DatabaseError as err:
                conn.rollback()
                failure = self._failure(err, "failed a write")
                if failure is err:
                    raise
                raise failure from err
            except BaseException:
                conn.rollback()
                raise

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot for multi-statement reads (WAL readers never block writers)."""
        with self._lock():
            try:
                conn = self.conn()
            except sqlite3.DatabaseError as err:
                raise self._failure(err, "failed a read") from err
            try:
                conn.execute("BEGIN")
                yield conn
            except sqlite3.DatabaseError as err:
                failure = self._failure(err, "failed a read")
                if failure is err:
                    raise
                raise failure from err
            finally:
                if conn.in_transaction:
                    conn.rollback()

    def check_writable(self) -> None:
        """Write to the file (its header's user_version, rewritten as it is) and commit, then check
        its pages (``PRAGMA quick_check``): raises TransientError when the file cannot be written
        now (disk full, descriptors out), ReadOnlyDatabase when it never can, DamagedDatabase when
        it is damaged (a valid header over garbage pages writes its header fine)."""
        with self.tx() as conn:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            conn.execute(f"PRAGMA user_version={version}")
        with self.read() as conn:
            found = [str(r[0]) for r in conn.execute("PRAGMA quick_check(3)").fetchall()]
        if found != ["ok"]:
            raise DamagedDatabase(self.path, "; ".join(found))
        self.checkpoint()

    def checkpoint(self) -> None:
        """Copy the WAL into the database and truncate it to zero bytes, when no reader holds an
        older snapshot (then it is left for the next time: readers never wait for it)."""
        if self.memory:
            return
        with self._lock():
            try:
                self.conn().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            except sqlite3.DatabaseError as err:
                failure = self._failure(err, "failed a checkpoint")
                if failure is err:
                    raise
                raise failure from err

    def close(self) -> None:
        """Close every connection still open, whichever thread holds it."""
        with self._guard:
            self._closed = True
            closers = list(self._closers.values())
        for closer in closers:
            closer()
