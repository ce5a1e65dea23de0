"""The run store on SQLite: one row per request, the record as JSON beside indexed columns; and
the model registry (:class:`shared.ports.ModelRegistry`): one row per model, one per version.

The local host and the tests use it; Azure uses the Table store with the same contract
(``tests/contract/run_store_contract.py``). ``update`` is a compare-and-swap on ``version``, so two
pollers racing on one run never lose a write: the loser gets :class:`shared.errors.Conflict`,
re-reads and decides again. ``save_model`` is the same compare-and-swap on the model's ``etag``,
with its new version inserted in the same transaction (a version number or run taken twice rolls
both back).
"""

from __future__ import annotations

import builtins
import sqlite3
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from shared.adapters._sqlite import Connections, DamagedDatabase
from shared.contracts.base import utcnow
from shared.contracts.models import Model, ModelVersion
from shared.contracts.run import IN_FLIGHT, RunRecord, RunState
from shared.errors import Conflict, NotFound

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
CREATE INDEX IF NOT EXISTS runs_waiting ON runs (created_at)
    WHERE state = 'received' AND json_extract(record, '$.deferrals') > 0;
CREATE INDEX IF NOT EXISTS runs_by_team ON runs (json_extract(record, '$.request.team'), updated_at);
CREATE TABLE IF NOT EXISTS models (
    name TEXT PRIMARY KEY,
    etag INTEGER NOT NULL,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS model_versions (
    model TEXT NOT NULL,
    version INTEGER NOT NULL,
    request_id TEXT NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (model, version),
    UNIQUE (model, request_id)
);
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
        self._db = Connections(self.path, busy_timeout_s=busy_timeout_s)
        self._db.init(_SCHEMA)

    def check(self) -> str:
        """:class:`shared.ports.ReadinessProbe`: the store's file takes a write, its pages pass
        ``PRAGMA quick_check`` and the newest records (what ``list`` shows first) read back."""
        self._db.check_writable()
        self.list(limit=100)
        return f"{self.path} writable"

    def _record(self, text: str) -> RunRecord:
        """A stored record; one that no longer parses is a damaged file, not a bad request."""
        try:
            return RunRecord.model_validate_json(text)
        except ValidationError as err:
            raise DamagedDatabase(
                self.path, f"a stored run record does not parse: {err.error_count()} errors"
            ) from None

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
        return self._record(row[0]), False

    def get(self, request_id: str) -> RunRecord | None:
        with self._db.read() as conn:
            row = conn.execute("SELECT record FROM runs WHERE request_id=?", (request_id,)).fetchone()
        return None if row is None else self._record(row[0])

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
        return [self._record(r[0]) for r in rows]

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

    # --- ModelRegistry -------------------------------------------------------------------------

    def get_model(self, name: str) -> Model | None:
        with self._db.read() as conn:
            row = conn.execute("SELECT record FROM models WHERE name=?", (name,)).fetchone()
        return None if row is None else Model.model_validate_json(row[0])

    def list_models(self, *, limit: int = 100) -> builtins.list[Model]:
        with self._db.read() as conn:
            rows = conn.execute("SELECT record FROM models ORDER BY name LIMIT ?", (int(limit),)).fetchall()
        return [Model.model_validate_json(r[0]) for r in rows]

    def save_model(self, model: Model, *, new_version: ModelVersion | None = None) -> Model:
        stored = model.model_copy(update={"etag": model.etag + 1})
        with self._db.tx() as conn:
            if model.etag == 0:
                cur = conn.execute(
                    "INSERT OR IGNORE INTO models (name, etag, record) VALUES (?,?,?)",
                    (model.name, stored.etag, stored.model_dump_json()),
                )
            else:
                cur = conn.execute(
                    "UPDATE models SET etag=?, record=? WHERE name=? AND etag=?",
                    (stored.etag, stored.model_dump_json(), model.name, model.etag),
                )
            if cur.rowcount != 1:
                raise Conflict(f"model {model.name!r} changed since etag {model.etag}: re-read and retry")
            if new_version is not None:
                try:
                    conn.execute(
                        "INSERT INTO model_versions (model, version, request_id, record) VALUES (?,?,?,?)",
                        (
                            new_version.model,
                            new_version.version,
                            new_version.request_id,
                            new_version.model_dump_json(),
                        ),
                    )
                except sqlite3.IntegrityError:
                    # raised inside the transaction: the model row written above is rolled back too
                    raise Conflict(
                        f"model {model.name!r}: version {new_version.version} or run "
                        f"{new_version.request_id!r} is registered already"
                    ) from None
        return stored

    def get_version(self, name: str, version: int) -> ModelVersion | None:
        return self._version("model=? AND version=?", (name, int(version)))

    def find_version(self, name: str, request_id: str) -> ModelVersion | None:
        return self._version("model=? AND request_id=?", (name, request_id))

    def list_versions(self, name: str, *, limit: int = 100) -> builtins.list[ModelVersion]:
        with self._db.read() as conn:
            rows = conn.execute(
                "SELECT record FROM model_versions WHERE model=? ORDER BY version DESC LIMIT ?",
                (name, int(limit)),
            ).fetchall()
        return [ModelVersion.model_validate_json(r[0]) for r in rows]

    def _version(self, where: str, params: tuple[object, ...]) -> ModelVersion | None:
        with self._db.read() as conn:
            row = conn.execute(f"SELECT record FROM model_versions WHERE {where}", params).fetchone()
        return None if row is None else ModelVersion.model_validate_json(row[0])

    # builtins.list: inside this class ``list`` is the RunStore method above
    def waiting(self, *, limit: int = 1000) -> builtins.list[RunRecord]:
        """Oldest first (by ``created_at``, then by insertion); the ``runs_waiting`` index holds them."""
        with self._db.read() as conn:
            rows = conn.execute(
                "SELECT record FROM runs INDEXED BY runs_waiting"  # only the waiting rows, not every received one
                " WHERE state = 'received' AND json_extract(record, '$.deferrals') > 0"
                " ORDER BY created_at, rowid LIMIT ?",
                (int(limit),),
            ).fetchall()
        return [self._record(r[0]) for r in rows]

    def team_runs(self, team: str, *, since: datetime) -> builtins.list[RunRecord]:
        flying = _state_values(IN_FLIGHT)
        with self._db.read() as conn:
            rows = conn.execute(
                "SELECT record FROM runs WHERE json_extract(record, '$.request.team') = ?"
                f" AND (state IN ({','.join('?' * len(flying))}) OR updated_at >= ?)",
                (team, *flying, _epoch(since)),
            ).fetchall()
        return [self._record(r[0]) for r in rows]

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
