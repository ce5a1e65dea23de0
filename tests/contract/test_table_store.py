"""The RunStore contract against Azure Table storage (Azurite), plus what only this store has.

Azurite is started once for the session (``tests/support/azurite.py``; installed into
node_modules/ when it is missing). If it cannot start, these tests fail with the reason: they never skip silently.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from azure.data.tables import TableClient

from shared.adapters.store.table_store import PARTITION, TableRunStore, row_key
from shared.contracts.completion import Delivery
from shared.contracts.run import RunRecord, RunState
from shared.errors import Conflict, PermanentError, TransientError
from shared.settings import Settings
from tests.support.azurite import Azurite

from .run_store_contract import RunStoreContract, record

pytestmark = pytest.mark.azurite


def fresh_table() -> str:
    return "t" + uuid.uuid4().hex[:24]


class TestTableRunStore(RunStoreContract):
    race_rounds = 10  # each round is four HTTP calls; ten rounds exercise the ETag race enough

    @pytest.fixture
    def store(self, azurite: Azurite) -> Iterator[TableRunStore]:
        s = TableRunStore(connection_string=azurite.connection_string, table_name=fresh_table())
        yield s
        s.close()


def test_from_settings_uses_the_connection_and_table(azurite: Azurite) -> None:
    name = fresh_table()
    settings = Settings(
        store="table", table_connection=azurite.connection_string, table_name=name, _env_file=None
    )
    with TableRunStore.from_settings(settings) as s:
        s.insert_if_absent(record("via-settings"))
    raw = TableClient.from_connection_string(azurite.connection_string, name)
    entity = raw.get_entity(PARTITION, "via-settings")
    assert entity["State"] == "received" and entity["Version"] == 0


def test_large_record_is_compressed_into_chunks_and_round_trips(azurite: Azurite) -> None:
    name = fresh_table()
    # ~150 KB of JSON: past a string property's 64 KiB, so it must be chunked
    deliveries = [
        Delivery(
            target=f"https://hooks.example.com/{i}/{uuid.uuid4().hex}",
            ok=bool(i % 2),
            attempts=i % 5,
            error="timeout after 10 s " * 3,
        )
        for i in range(900)
    ]
    big = record("big", deliveries=deliveries)
    assert len(big.model_dump_json()) > 100_000
    with TableRunStore(connection_string=azurite.connection_string, table_name=name) as s:
        _, inserted = s.insert_if_absent(big)
        assert inserted
        assert s.get("big") == big
        updated = s.update(s.get("big").model_copy(update={"state": RunState.notified}))
        assert s.get("big") == updated
        raw = TableClient.from_connection_string(azurite.connection_string, name).get_entity(PARTITION, "big")
    assert "Record" not in raw and raw["RecordChunks"] >= 1
    assert raw["State"] == "notified"


def test_ids_a_row_key_cannot_hold_are_encoded(azurite: Azurite) -> None:
    odd = "team/a#1?x"
    assert row_key(odd) != odd
    with TableRunStore(connection_string=azurite.connection_string, table_name=fresh_table()) as s:
        s.insert_if_absent(record(odd, state=RunState.rejected))
        got = s.get(odd)
        assert got is not None and got.request_id == odd
        assert [r.request_id for r in s.list(states=[RunState.rejected])] == [odd]
        assert s.get("team") is None


def test_etag_guards_a_write_that_slips_in_after_the_version_check(azurite: Azurite) -> None:
    """A writer that updates between our read of the version and our write: the ETag catches it."""
    name = fresh_table()
    with TableRunStore(connection_string=azurite.connection_string, table_name=name) as s:
        s.insert_if_absent(record("slip"))
        mine = s.get("slip")
        real_get = s._table.get_entity

        def get_then_someone_writes(*args, **kwargs):
            entity = real_get(*args, **kwargs)
            if kwargs.get("select"):  # update's version read: now another writer gets in first
                other = TableRunStore(connection_string=azurite.connection_string, table_name=name)
                other.update(other.get("slip").model_copy(update={"run_id": "other"}))
                other.close()
            return entity

        s._table.get_entity = get_then_someone_writes  # type: ignore[method-assign]
        with pytest.raises(Conflict, match="ETag"):
            s.update(mine.model_copy(update={"run_id": "mine"}))
        s._table.get_entity = real_get  # type: ignore[method-assign]
        final = s.get("slip")
    assert (final.run_id, final.version) == ("other", 1)


def test_the_line_is_one_query_for_the_deferred_rows_and_reads_only_their_records(
    azurite: Azurite, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/teams.md: reading the line is one query for "only the deferred rows". Table storage
    answers ``Deferrals gt 0`` itself: ``waiting`` reads the deferred record, never the fresh ones
    (the contract's result alone cannot show it: the records read are checked again here)."""
    with TableRunStore(connection_string=azurite.connection_string, table_name=fresh_table()) as s:
        for i in range(5):
            s.insert_if_absent(record(f"fresh-{i}"))  # received, never deferred: not in the line
        s.insert_if_absent(record("deferred", deferrals=2))
        s.insert_if_absent(record("claimed", state=RunState.submitted, deferrals=1))
        queries: list[int] = []
        reads: list[str] = []
        real_query, real_get = s._table.query_entities, s._table.get_entity

        def query(*args, **kwargs):
            found = list(real_query(*args, **kwargs))
            queries.append(len(found))
            return found

        def get(partition, key, **kwargs):
            reads.append(key)
            return real_get(partition, key, **kwargs)

        monkeypatch.setattr(s._table, "query_entities", query)
        monkeypatch.setattr(s._table, "get_entity", get)
        assert [r.request_id for r in s.waiting()] == ["deferred"]
    assert queries == [1]  # one query, answering the one deferred received row
    assert reads == ["deferred"]


def test_unreachable_table_service_is_transient() -> None:
    from tests.support.azurite import ACCOUNT, ACCOUNT_KEY, free_port

    port = free_port()
    conn = (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
        f"TableEndpoint=http://127.0.0.1:{port}/{ACCOUNT};"
    )
    with (
        TableRunStore(connection_string=conn, table_name="unreachable", retry_total=0, timeout_s=2) as s,
        pytest.raises(TransientError),
    ):
        s.get("x")


WRONG_KEY = "d3Jvbmcta2V5LWZvci10ZXN0cw=="


class FakeTime:
    """``sleep`` advances ``monotonic``; ``on_sleep`` runs after each wait."""

    def __init__(self, on_sleep=None) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self.on_sleep = on_sleep

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        if self.on_sleep:
            self.on_sleep(len(self.sleeps))


def test_a_403_is_retried_while_the_role_propagates(azurite: Azurite) -> None:
    """Right after a deploy the role is not there yet: the service answers 403 for minutes
    (https://learn.microsoft.com/azure/role-based-access-control/troubleshooting). Here Azurite
    refuses a wrong key with a real 403 until the credential is fixed, after the second wait."""
    from azure.core.credentials import AzureNamedKeyCredential

    from tests.support.azurite import ACCOUNT, ACCOUNT_KEY

    cred = AzureNamedKeyCredential(ACCOUNT, WRONG_KEY)
    clock = FakeTime(on_sleep=lambda n: n == 2 and cred.update(ACCOUNT, ACCOUNT_KEY))
    with TableRunStore(
        account_url=azurite.table_endpoint,
        credential=cred,
        table_name=fresh_table(),
        retry_total=0,
        sleep=clock.sleep,
        monotonic=clock.monotonic,
    ) as s:
        _, inserted = s.insert_if_absent(record("late-role"))
        assert inserted and s.get("late-role") is not None
    assert len(clock.sleeps) == 2


def test_a_403_that_outlasts_the_budget_is_transient_and_names_the_role(azurite: Azurite) -> None:
    wrong = azurite.connection_string.replace(
        azurite.connection_string.split("AccountKey=")[1].split(";")[0], WRONG_KEY
    )
    clock = FakeTime()
    with (
        TableRunStore(
            connection_string=wrong,
            table_name=fresh_table(),
            retry_total=0,
            max_auth_retry_s=30,
            sleep=clock.sleep,
            monotonic=clock.monotonic,
        ) as s,
        pytest.raises(TransientError) as info,
    ):
        s.get("x")
    text = str(info.value)
    assert WRONG_KEY not in text
    assert "AuthorizationFailure" in text and "Storage Table Data Contributor" in text and "propagate" in text
    assert len(clock.sleeps) >= 2 and sum(clock.sleeps) <= 30  # retried, within the budget


def test_no_credential_at_all_is_permanent_without_waiting(azurite: Azurite) -> None:
    from azure.core.exceptions import ClientAuthenticationError

    clock = FakeTime()
    with TableRunStore(
        connection_string=azurite.connection_string,
        table_name=fresh_table(),
        sleep=clock.sleep,
        monotonic=clock.monotonic,
    ) as s:
        s.insert_if_absent(record("no-cred"))

        def no_token(*_a: object, **_k: object) -> None:  # what azure-identity raises: no response
            raise ClientAuthenticationError("DefaultAzureCredential failed to retrieve a token")

        s._table.get_entity = no_token  # type: ignore[method-assign]
        with pytest.raises(PermanentError, match="managed identity") as info:
            s.get("no-cred")
    assert info.value.reason == "TableAuthentication" and clock.sleeps == []


def test_missing_configuration_is_a_clear_error() -> None:
    with pytest.raises(PermanentError, match="RLQ_TABLE_ACCOUNT_URL"):
        TableRunStore.from_settings(Settings(store="table", _env_file=None))


def test_list_is_bounded_by_limit_and_stays_newest_first(azurite: Azurite) -> None:
    from datetime import timedelta

    from .run_store_contract import T0

    with TableRunStore(connection_string=azurite.connection_string, table_name=fresh_table()) as s:
        for i in range(12):
            s.insert_if_absent(
                record(f"b-{i:02d}", state=RunState.running, created_at=T0 + timedelta(seconds=i))
            )
        got = s.list(states=[RunState.running], limit=5)
        assert [r.request_id for r in got] == ["b-11", "b-10", "b-09", "b-08", "b-07"]
        assert s.count([RunState.running]) == 12
        assert isinstance(got[0], RunRecord)


# --- readiness: the run table takes a write ---------------------------------------------------------


def test_check_writes_the_probe_entity_outside_the_run_partition(azurite: Azurite) -> None:
    from shared.adapters.store.table_store import PROBE_PARTITION, PROBE_ROW
    from shared.ports import ReadinessProbe

    name = fresh_table()
    with TableRunStore(connection_string=azurite.connection_string, table_name=name) as s:
        assert isinstance(s, ReadinessProbe)
        detail = s.check()  # a table it has never seen: created, as the store's first call does
        assert name in detail and azurite.table_endpoint in detail and "writable" in detail
        s.insert_if_absent(record("a-run", state=RunState.running))
        s.check()
        assert [r.request_id for r in s.list()] == ["a-run"]  # the probe is never a run
        assert s.count([RunState.running]) == 1
    raw = TableClient.from_connection_string(azurite.connection_string, name)
    probe = raw.get_entity(PROBE_PARTITION, PROBE_ROW)
    assert probe["CheckedAt"] > 0
    assert len(list(raw.query_entities(f"PartitionKey eq '{PROBE_PARTITION}'"))) == 1  # one entity, rewritten


def test_check_with_a_wrong_key_fails_at_once_naming_the_table_and_no_key(azurite: Azurite) -> None:
    from tests.support.azurite import ACCOUNT_KEY

    wrong = azurite.connection_string.replace(ACCOUNT_KEY, WRONG_KEY)
    clock = FakeTime()
    name = fresh_table()
    with (
        TableRunStore(
            connection_string=wrong, table_name=name, sleep=clock.sleep, monotonic=clock.monotonic
        ) as s,
        pytest.raises(TransientError) as info,
    ):
        s.check()
    text = str(info.value)
    assert f"run table {name!r} at {azurite.table_endpoint}" in text and "cannot take a write" in text
    assert "AuthorizationFailure" in text and "Storage Table Data Contributor" in text
    assert WRONG_KEY not in text and ACCOUNT_KEY not in text
    assert clock.sleeps == []  # no retry budget spent on a health check


def test_check_fails_naming_the_table_once_the_service_is_stopped() -> None:
    import time

    from tests.support.azurite import start_azurite

    emulator = start_azurite()
    name = fresh_table()
    try:
        with TableRunStore(connection_string=emulator.connection_string, table_name=name) as s:
            assert "writable" in s.check()
            emulator.stop()
            started = time.monotonic()
            with pytest.raises(TransientError) as info:
                s.check()
            took = time.monotonic() - started
    finally:
        emulator.stop()
    text = str(info.value)
    assert f"run table {name!r} at {emulator.table_endpoint} cannot take a write" in text
    assert "failed to connect" in text
    assert took < 5  # one attempt, no retries (the store's own calls retry 3 times)


def test_check_against_a_service_that_never_answers_is_bounded_by_the_probe_timeout() -> None:
    import re
    import socket
    import time

    from tests.support.azurite import ACCOUNT, ACCOUNT_KEY

    with socket.socket() as server:  # accepts connections (the kernel's backlog), never answers
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        port = server.getsockname()[1]
        conn = (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"TableEndpoint=http://127.0.0.1:{port}/{ACCOUNT};"
        )
        with TableRunStore(connection_string=conn, table_name="silent", probe_timeout_s=1.0) as s:
            started = time.monotonic()
            with pytest.raises(TransientError, match=re.escape("run table 'silent' at http://127.0.0.1")):
                s.check()
            took = time.monotonic() - started
    assert 0.9 <= took < 4  # the create-table call waited out its 1 s read timeout, once
