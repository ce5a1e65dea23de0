"""The run store on Azure Table storage: the same contract as the SQLite store.

Layout, and why:

* ``PartitionKey = "run"``, ``RowKey = request_id``. Every operation the contract needs is on one
  entity (insert-if-absent, read, compare-and-swap), which Table storage makes atomic per entity
  in any partition; one partition keeps the state queries single-partition scans and is far
  below the ~2,000 entities/s a partition serves (a run lives for hours). Hash buckets would only
  turn every ``list`` / ``count`` into a fan-out over buckets. Ids with characters a RowKey may
  not hold (``/ \\ # ?``, control characters) are stored base64-encoded, prefixed ``~b64.``.
* The record is JSON in ``Record``; past 30,000 UTF-16 units (a string property holds 64 KiB)
  it is zlib-compressed into binary ``RecordZ0..n`` chunks of at most 64,000 bytes (entities
  hold 1 MiB). ``State``, ``CreatedAt`` (epoch seconds), ``Seq`` (insertion order) and
  ``Version`` sit beside it for filters and sorting; ``Team``, ``Deferrals`` and ``UpdatedAt``
  for the team and waiting-line queries (an entity written before they existed gets them on its
  next update).
* ``update`` is a compare-and-swap twice over: the stored ``Version`` must equal the caller's,
  and the write is ``update_entity(mode=REPLACE, etag=…, match_condition=IfNotModified)``, so a
  writer that slips in between the read and the write turns the 412 into :class:`Conflict`.
* Table queries do not sort: ``list`` reads the matching keys (``RowKey``, ``CreatedAt``,
  ``Seq``) with the state filter, sorts newest first here, and reads the top ``limit`` records.

The SDK's own pipeline retries transient HTTP faults (bounded: ``retry_total``); it does not retry
a 401/403. Those are retried here with the adapters' one policy (:mod:`shared.adapters._retry`, as
the Service Bus adapter does with its authentication and authorization errors): right after a deploy
the run table answers 403 until the identity's role assignment has propagated, which takes minutes.
One that outlasts the budget is a :class:`~shared.errors.TransientError` naming the role (the queue
redelivers, the poller tries again on its next tick); no credential at all (azure-identity could not
get a token: no response from the service) stays permanent. What is left is translated here into
:mod:`shared.errors`.

The model registry (:class:`shared.ports.ModelRegistry`) shares the table, one partition per
model (``model:<name>``; model names are RowKey-safe): the model's row (``RowKey = "model"``, its
``Etag`` counter beside its JSON), a row per version (``v<000000001>``) and a row per registered
run (``run:<request_id>``, holding its version number). ``save_model`` is one entity-group
transaction in that partition: the model row replaced on its service ETag (or created), the
version and run rows created, so a stale etag or a version or run registered twice fails all of
it (:class:`Conflict`). Run queries filter on ``PartitionKey eq 'run'`` and never see these rows.

Readiness (:meth:`TableRunStore.check`, ``/api/health``): one upsert of a probe entity in its own
partition (``health`` / ``probe``, never in ``run``), without either retry layer, each call bounded
by ``probe_timeout_s``: the same question the SQLite store answers with its header write, whether
the store takes a write now.
"""

from __future__ import annotations

import base64
import builtins
import logging
import re
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Self

from shared.adapters import _retry
from shared.adapters._redact import scrub
from shared.adapters._retry import ROLE_PROPAGATION_HINT, bounded_retrying
from shared.contracts.base import utcnow
from shared.contracts.models import Model, ModelVersion
from shared.contracts.run import IN_FLIGHT, RunRecord, RunState
from shared.errors import Conflict, NotFound, PermanentError, TransientError
from shared.settings import Settings

if TYPE_CHECKING:
    from azure.data.tables import TableClient

log = logging.getLogger(__name__)

PARTITION = "run"
MODEL_PARTITION = "model:"  # + the model's name: one partition per model (its row, versions, runs)
MODEL_ROW = "model"
PROBE_PARTITION = "health"  # the readiness probe's one entity: never in the run partition
PROBE_ROW = "probe"
PROBE_TIMEOUT_S = 3.0
MAX_INLINE_UNITS = 30_000  # UTF-16 code units kept as a plain string property
CHUNK_BYTES = 64_000  # binary property limit is 64 KiB
MAX_CHUNKS = 14  # 14 x 64,000 B + the other properties stays under the 1 MiB entity limit
_SAFE_KEY = re.compile(r"^[A-Za-z0-9._:-]{1,512}$")
_KEY_COLUMNS = ["RowKey", "CreatedAt", "Seq", "State"]


def row_key(request_id: str) -> str:
    """The RowKey for ``request_id``: itself when Table storage allows it, else base64."""
    if _SAFE_KEY.match(request_id):
        return request_id
    return "~b64." + base64.urlsafe_b64encode(request_id.encode("utf-8")).decode("ascii")


def encode_record(record: RunRecord) -> dict[str, Any]:
    """The record's JSON as one string property, or compressed binary chunks when too long."""
    text = record.model_dump_json()
    if len(text.encode("utf-16-le")) // 2 <= MAX_INLINE_UNITS:
        return {"Record": text}
    packed = zlib.compress(text.encode("utf-8"), 6)
    chunks = [packed[i : i + CHUNK_BYTES] for i in range(0, len(packed), CHUNK_BYTES)]
    if len(chunks) > MAX_CHUNKS:
        raise PermanentError(
            f"run record {record.request_id!r} is {len(packed)} bytes compressed; Table storage holds "
            f"at most {MAX_CHUNKS * CHUNK_BYTES} per entity",
            reason="RecordTooLarge",
        )
    props: dict[str, Any] = {f"RecordZ{i}": chunk for i, chunk in enumerate(chunks)}
    props["RecordChunks"] = len(chunks)
    return props


def decode_record(entity: dict[str, Any]) -> RunRecord:
    if entity.get("Record") is not None:
        return RunRecord.model_validate_json(entity["Record"])
    n = int(entity["RecordChunks"])
    packed = b"".join(_as_bytes(entity[f"RecordZ{i}"]) for i in range(n))
    return RunRecord.model_validate_json(zlib.decompress(packed))


def _as_bytes(value: Any) -> bytes:
    raw = getattr(value, "value", value)  # an EntityProperty or bytes
    return bytes(raw)


def _epoch(value: datetime) -> float:
    return (value if value.tzinfo is not None else value.replace(tzinfo=UTC)).timestamp()


def _state_values(states: Iterable[RunState]) -> list[str]:
    return sorted({RunState(s).value for s in states})


class TableRunStore:
    """:class:`shared.ports.RunStore` on one Azure table (Azurite in tests).

    Pass ``connection_string`` (Azurite, or a key when shared keys are allowed) or ``account_url``
    + ``credential`` (managed identity in Azure), or ``table_client`` directly.
    """

    def __init__(
        self,
        *,
        table_name: str = "rlqruns",
        connection_string: str | None = None,
        account_url: str | None = None,
        credential: Any = None,
        table_client: TableClient | None = None,
        clock: Callable[[], datetime | float] = utcnow,
        retry_total: int = 3,
        timeout_s: float = 20.0,
        max_auth_attempts: int = _retry.MAX_ATTEMPTS,
        max_auth_retry_s: float = _retry.MAX_RETRY_S,
        auth_backoff_s: float = _retry.BACKOFF_S,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        probe_timeout_s: float = PROBE_TIMEOUT_S,
    ) -> None:
        from azure.data.tables import TableClient

        options: dict[str, Any] = {
            "retry_total": retry_total,
            "connection_timeout": timeout_s,
            "read_timeout": timeout_s,
        }
        if table_client is not None:
            self._table = table_client
        elif connection_string:
            try:
                self._table = TableClient.from_connection_string(connection_string, table_name, **options)
            except (ValueError, KeyError):
                raise PermanentError(
                    "RLQ_TABLE_CONNECTION is not a storage connection string", reason="TableConfiguration"
                ) from None
        elif account_url:
            if credential is None:
                from azure.identity import DefaultAzureCredential

                credential = DefaultAzureCredential()
            self._table = TableClient(
                endpoint=account_url, table_name=table_name, credential=credential, **options
            )
        else:
            raise PermanentError(
                "RLQ_STORE=table needs RLQ_TABLE_ACCOUNT_URL (managed identity) or RLQ_TABLE_CONNECTION",
                reason="TableConfiguration",
            )
        self.table_name = table_name
        self.probe_timeout_s = probe_timeout_s
        key = re.search(r"AccountKey=([^;]+)", connection_string or "")
        self._secrets = (connection_string, key.group(1) if key else None)
        self._clock = clock
        self.max_auth_attempts = max_auth_attempts
        self.max_auth_retry_s = max_auth_retry_s
        self.auth_backoff_s = auth_backoff_s
        self._sleep = sleep
        self._monotonic = monotonic
        self._ready = False
        self._ready_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, **options: Any) -> TableRunStore:
        conn = settings.table_connection.get_secret_value() if settings.table_connection else None
        return cls(
            table_name=settings.table_name,
            connection_string=conn,
            account_url=settings.table_account_url,
            **options,
        )

    def close(self) -> None:
        self._table.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- RunStore -------------------------------------------------------------------------

    def insert_if_absent(self, record: RunRecord) -> tuple[RunRecord, bool]:
        from azure.core.exceptions import ResourceExistsError

        entity = self._entity(record, seq=f"{time.time_ns():020d}")
        try:
            self._call("insert", lambda: self._table.create_entity(entity))
            return record.model_copy(deep=True), True
        except ResourceExistsError:
            pass
        existing = self.get(record.request_id)
        if existing is None:  # deleted between the two calls: nothing sane to return but a retry
            raise TransientError(f"run record {record.request_id!r} vanished during insert; try again")
        return existing, False

    def get(self, request_id: str) -> RunRecord | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            entity = self._call("read", lambda: self._table.get_entity(PARTITION, row_key(request_id)))
        except ResourceNotFoundError:
            return None
        return decode_record(entity)

    def update(self, record: RunRecord) -> RunRecord:
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
        from azure.data.tables import UpdateMode

        key = row_key(record.request_id)
        try:
            current = self._call(
                "read", lambda: self._table.get_entity(PARTITION, key, select=["Version", "Seq"])
            )
        except ResourceNotFoundError:
            raise NotFound(f"no run record for request_id {record.request_id!r}") from None
        stored_version = int(current["Version"])
        if stored_version != record.version:
            raise Conflict(
                f"run record {record.request_id!r} is at version {stored_version}, not "
                f"{record.version}: re-read and retry"
            )
        now = self._now()
        stored = record.model_copy(update={"version": record.version + 1, "updated_at": now})
        entity = self._entity(stored, seq=current.get("Seq") or f"{time.time_ns():020d}")
        try:
            self._call(
                "update",
                lambda: self._table.update_entity(
                    entity,
                    mode=UpdateMode.REPLACE,
                    etag=current.metadata["etag"],
                    match_condition=MatchConditions.IfNotModified,
                ),
            )
        except ResourceModifiedError:
            raise Conflict(
                f"run record {record.request_id!r} changed under us (ETag): re-read and retry"
            ) from None
        except ResourceNotFoundError:
            raise NotFound(f"no run record for request_id {record.request_id!r}") from None
        return stored

    def list(self, *, states: Iterable[RunState] | None = None, limit: int = 100) -> list[RunRecord]:
        """Newest first by ``created_at`` (then insertion order); sorted here, the table cannot."""
        wanted = None if states is None else set(_state_values(states))
        if wanted is not None and not wanted:
            return []
        keys = self._query(self._filter(wanted), select=_KEY_COLUMNS)
        keys.sort(key=lambda e: (float(e["CreatedAt"]), str(e.get("Seq") or ""), e["RowKey"]), reverse=True)
        out: list[RunRecord] = []
        for entity in keys:
            if len(out) >= limit:
                break
            rec = self._get_by_key(entity["RowKey"])
            # the state may have moved between the key query and this read: keep the filter true
            if rec is not None and (wanted is None or rec.state.value in wanted):
                out.append(rec)
        return out

    def count(self, states: Iterable[RunState]) -> int:
        wanted = set(_state_values(states))
        if not wanted:
            return 0
        return len(self._query(self._filter(wanted), select=["RowKey"]))

    # --- ModelRegistry -------------------------------------------------------------------------

    def get_model(self, name: str) -> Model | None:
        entity = self._model_entity(name)
        return None if entity is None else Model.model_validate_json(entity["Record"])

    def list_models(self, *, limit: int = 100) -> builtins.list[Model]:
        # model names are [A-Za-z0-9_-]: the partitions "model:" up to "model;" (':' + 1) hold them all
        flt = f"PartitionKey ge '{MODEL_PARTITION}' and PartitionKey lt 'model;' and RowKey eq '{MODEL_ROW}'"
        rows = self._query(flt, select=["Record"])
        models = sorted((Model.model_validate_json(e["Record"]) for e in rows), key=lambda m: m.name)
        return models[:limit]

    def save_model(self, model: Model, *, new_version: ModelVersion | None = None) -> Model:
        from azure.core import MatchConditions
        from azure.data.tables import TableTransactionError, UpdateMode

        current = self._model_entity(model.name) if model.etag else None
        if model.etag and (current is None or int(current["Etag"]) != model.etag):
            raise Conflict(f"model {model.name!r} changed since etag {model.etag}: re-read and retry")
        stored = model.model_copy(update={"etag": model.etag + 1})
        partition = MODEL_PARTITION + model.name
        row = {
            "PartitionKey": partition,
            "RowKey": MODEL_ROW,
            "Etag": stored.etag,
            "Record": stored.model_dump_json(),
        }
        operations: builtins.list[Any] = [
            ("create", row)
            if current is None
            else (
                "update",
                row,
                {
                    "mode": UpdateMode.REPLACE,
                    "etag": current.metadata["etag"],
                    "match_condition": MatchConditions.IfNotModified,
                },
            )
        ]
        if new_version is not None:
            operations += [
                (
                    "create",
                    {
                        "PartitionKey": partition,
                        "RowKey": _version_key(new_version.version),
                        "Record": new_version.model_dump_json(),
                    },
                ),
                (
                    "create",
                    {
                        "PartitionKey": partition,
                        "RowKey": _run_key(new_version.request_id),
                        "Version": new_version.version,
                    },
                ),
            ]

        def submit() -> bool:
            try:
                self._table.submit_transaction(operations)
            except TableTransactionError as err:  # the whole group was refused: nothing written
                if err.status_code in (409, 412):  # EntityAlreadyExists / UpdateConditionNotSatisfied
                    return False
                raise
            return True

        if not self._call("save model", submit):
            raise Conflict(
                f"model {model.name!r} changed since etag {model.etag}, or the version is taken: re-read and retry"
            )
        return stored

    def get_version(self, name: str, version: int) -> ModelVersion | None:
        entity = self._get(MODEL_PARTITION + name, _version_key(version))
        return None if entity is None else ModelVersion.model_validate_json(entity["Record"])

    def find_version(self, name: str, request_id: str) -> ModelVersion | None:
        entity = self._get(MODEL_PARTITION + name, _run_key(request_id))
        return None if entity is None else self.get_version(name, int(entity["Version"]))

    def list_versions(self, name: str, *, limit: int = 100) -> builtins.list[ModelVersion]:
        flt = f"PartitionKey eq '{MODEL_PARTITION}{name}' and RowKey ge 'v' and RowKey lt 'w'"
        rows = self._query(flt, select=["RowKey", "Record"])
        rows.sort(key=lambda e: e["RowKey"], reverse=True)  # zero-padded: by version
        return [ModelVersion.model_validate_json(e["Record"]) for e in rows[:limit]]

    def _model_entity(self, name: str) -> Any:
        return self._get(MODEL_PARTITION + name, MODEL_ROW)

    def _get(self, partition: str, key: str) -> Any:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return self._call("read", lambda: self._table.get_entity(partition, key))
        except ResourceNotFoundError:
            return None

    def waiting(self, *, limit: int = 1000) -> builtins.list[RunRecord]:
        """Oldest first by ``created_at`` (then insertion order)."""
        flt = f"PartitionKey eq '{PARTITION}' and State eq '{RunState.received.value}' and Deferrals gt 0"
        keys = self._query(flt, select=_KEY_COLUMNS)
        keys.sort(key=lambda e: (float(e["CreatedAt"]), str(e.get("Seq") or ""), e["RowKey"]))
        out: builtins.list[RunRecord] = []
        for entity in keys[:limit]:
            rec = self._get_by_key(entity["RowKey"])
            if rec is not None and rec.state is RunState.received and rec.deferrals > 0:
                out.append(rec)
        return out

    def team_runs(self, team: str, *, since: datetime) -> builtins.list[RunRecord]:
        flying = " or ".join(f"State eq '{s}'" for s in _state_values(IN_FLIGHT))
        # the SDK substitutes @names only as whole space-separated words: "@since )", not "@since)"
        flt = f"PartitionKey eq '{PARTITION}' and Team eq @team and ({flying} or UpdatedAt ge @since )"
        entities = self._call(
            "query",
            lambda: list(
                self._table.query_entities(
                    flt, parameters={"team": team, "since": _epoch(since)}, results_per_page=1000
                )
            ),
        )
        return [decode_record(e) for e in entities]

    # --- ReadinessProbe ---------------------------------------------------------------------

    @property
    def where(self) -> str:
        """The run table and its endpoint, for messages (no query string, nothing secret)."""
        endpoint = scrub(str(getattr(self._table, "url", "") or "").split("?", 1)[0], *self._secrets)
        return (
            f"run table {self.table_name!r} at {endpoint}" if endpoint else f"run table {self.table_name!r}"
        )

    def check(self) -> str:
        """:class:`shared.ports.ReadinessProbe`: the run table takes a write.

        One upsert (replace) of the probe entity ``(PROBE_PARTITION, PROBE_ROW)``, in its own
        partition so that no run query ever sees it, with ``CheckedAt`` set to now; the table is
        created first when this instance has not seen it yet, as the store does on its first call.
        No retries (neither the SDK's nor the 401/403 budget: a health check says how things are
        now) and each call bounded by ``probe_timeout_s``. Raises TransientError naming the table
        and its endpoint."""
        from azure.core.exceptions import ResourceExistsError
        from azure.data.tables import UpdateMode

        t = self.probe_timeout_s
        options: dict[str, Any] = {"retry_total": 0, "timeout": t, "connection_timeout": t, "read_timeout": t}
        entity = {"PartitionKey": PROBE_PARTITION, "RowKey": PROBE_ROW, "CheckedAt": _epoch(self._now())}
        try:
            if not self._ready:
                try:
                    self._translate("create table", lambda: self._table.create_table(**options), attempts=1)
                except ResourceExistsError:
                    pass
                self._ready = True
            self._translate(
                "health check write",
                lambda: self._table.upsert_entity(entity, mode=UpdateMode.REPLACE, **options),
                attempts=1,
            )
        except (TransientError, PermanentError) as err:
            raise TransientError(scrub(f"{self.where} cannot take a write: {err}", *self._secrets)) from err
        return f"{self.where} writable"

    # --- internals ------------------------------------------------------------------------

    def _entity(self, record: RunRecord, *, seq: str) -> dict[str, Any]:
        entity: dict[str, Any] = {
            "PartitionKey": PARTITION,
            "RowKey": row_key(record.request_id),
            "State": record.state.value,
            "CreatedAt": _epoch(record.created_at),
            "UpdatedAt": _epoch(record.updated_at),
            "Seq": seq,
            "Version": record.version,
            "Deferrals": record.deferrals,
        }
        if record.request is not None:
            entity["Team"] = record.request.team
        entity.update(encode_record(record))
        return entity

    def _get_by_key(self, key: str) -> RunRecord | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return decode_record(self._call("read", lambda: self._table.get_entity(PARTITION, key)))
        except ResourceNotFoundError:
            return None

    @staticmethod
    def _filter(wanted: set[str] | None) -> str:
        flt = f"PartitionKey eq '{PARTITION}'"
        if wanted:
            # values come from the RunState enum, never from a request: no injection possible
            flt += " and (" + " or ".join(f"State eq '{s}'" for s in sorted(wanted)) + ")"
        return flt

    # builtins.list: inside this class ``list`` is the RunStore method above
    def _query(self, flt: str, *, select: builtins.list[str]) -> builtins.list[Any]:
        return self._call(
            "query", lambda: list(self._table.query_entities(flt, select=select, results_per_page=1000))
        )

    def _ensure_table(self) -> None:
        if self._ready:
            return
        from azure.core.exceptions import ResourceExistsError

        with self._ready_lock:
            if self._ready:
                return
            try:
                self._translate("create table", self._table.create_table)
            except ResourceExistsError:
                pass
            self._ready = True

    def _call(self, action: str, fn: Callable[[], Any]) -> Any:
        self._ensure_table()
        return self._translate(action, fn)

    def _translate(self, action: str, fn: Callable[[], Any], *, attempts: int | None = None) -> Any:
        """Run ``fn``, retrying the service's 401/403 within the budget (``attempts`` caps the
        attempts: 1 for none); SDK errors become TransientError / PermanentError. The
        caller-handled ones (exists, not found, modified) pass through untouched."""
        from azure.core.exceptions import (
            ClientAuthenticationError,
            HttpResponseError,
            ResourceExistsError,
            ResourceModifiedError,
            ResourceNotFoundError,
            ServiceRequestError,
            ServiceResponseError,
        )

        def before_sleep(state: Any) -> None:
            err = state.outcome.exception() if state.outcome else None
            log.warning(
                "Table storage %s on %r: attempt %d refused (%s); retrying while the role propagates",
                action,
                self.table_name,
                state.attempt_number,
                getattr(err, "error_code", None) or type(err).__name__,
            )

        retrying, _ = bounded_retrying(
            retry=refused_by_the_service,
            sleep=self._sleep,
            monotonic=self._monotonic,
            max_attempts=attempts or self.max_auth_attempts,
            max_retry_s=self.max_auth_retry_s,
            backoff_s=self.auth_backoff_s,
            before_sleep=before_sleep,
        )
        try:
            for attempt in retrying:
                with attempt:
                    return fn()
        except (ResourceExistsError, ResourceModifiedError):
            raise
        except ResourceNotFoundError as err:
            if "TableNotFound" in str(getattr(err, "error_code", "") or ""):
                self._ready = False  # someone deleted the table: recreate on the next call
                raise TransientError(f"table {self.table_name!r} does not exist (yet); try again") from err
            raise
        except HttpResponseError as err:
            if refused_by_the_service(err):
                code = _error_code(err)
                raise TransientError(
                    f"Table storage refused {action} on {self.table_name!r}, try again later: "
                    f"HTTP {err.status_code} {code} (the identity needs 'Storage Table Data Contributor' "
                    f"on the storage account{ROLE_PROPAGATION_HINT})"
                ) from err
            if isinstance(err, ClientAuthenticationError):  # no response: no token to send at all
                raise PermanentError(
                    f"Table storage {action} on {self.table_name!r}: no credential "
                    f"({type(err).__name__}): managed identity, az login or RLQ_TABLE_CONNECTION",
                    reason="TableAuthentication",
                ) from err
            status = err.status_code or 0
            code = _error_code(err)
            if status == 408 or status == 429 or status >= 500:
                raise TransientError(
                    f"Table storage {action} failed with HTTP {status} ({code}); try again"
                ) from err
            raise PermanentError(
                f"Table storage {action} failed with HTTP {status} ({code})", reason="TableRequest"
            ) from err
        except (ServiceRequestError, ServiceResponseError) as err:
            raise TransientError(f"Table storage {action} failed to connect: {type(err).__name__}") from err
        raise AssertionError("unreachable: the retry loop returns or raises")  # pragma: no cover

    def _now(self) -> datetime:
        value = self._clock()
        if isinstance(value, datetime):
            return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return datetime.fromtimestamp(float(value), UTC)


def _version_key(version: int) -> str:
    return f"v{int(version):09d}"


def _run_key(request_id: str) -> str:
    return "run:" + row_key(request_id)


def refused_by_the_service(err: BaseException) -> bool:
    """A 401/403 from the Table service (a role not propagated yet, a wrong key): worth retrying
    within the budget. A credential that produced no token has no response and is not."""
    from azure.core.exceptions import HttpResponseError

    return isinstance(err, HttpResponseError) and err.response is not None and err.status_code in (401, 403)


def _error_code(err: BaseException) -> str:
    code = getattr(err, "error_code", None)
    return str(getattr(code, "value", code) or type(err).__name__)
