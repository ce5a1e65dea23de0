"""The RunStore contract, shared by every store adapter (SQLite here, Azure Tables via Azurite).

Subclass :class:`RunStoreContract` and provide a ``store`` fixture that yields an empty store.
Nothing here may depend on how a store is built: only the :class:`shared.ports.RunStore` methods.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from shared.contracts.completion import Delivery
from shared.contracts.request import TrainingRequest
from shared.contracts.run import Progress, RunRecord, RunState
from shared.errors import Conflict, NotFound
from shared.ports import RunStore

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def record(
    request_id: str, *, state: RunState = RunState.received, created_at: datetime = T0, **fields: object
) -> RunRecord:
    return RunRecord(
        request_id=request_id, state=state, created_at=created_at, updated_at=created_at, **fields
    )


def read_modify_write(store: RunStore, request_id: str, change, *, attempts: int = 1000) -> RunRecord:
    """Re-read and retry on Conflict, the way the service updates a record."""
    for _ in range(attempts):
        current = store.get(request_id)
        assert current is not None
        try:
            return store.update(change(current))
        except Conflict:
            continue
    raise AssertionError(f"no update of {request_id} succeeded in {attempts} attempts")


def _race_two_writers(
    store: RunStore, request_id: str, *, label: str
) -> tuple[dict[int, RunRecord], dict[int, str]]:
    """Two threads read the same version, then both write: what each saw and how each fared."""
    seen: dict[int, RunRecord] = {}
    outcome: dict[int, str] = {}
    both_read = threading.Barrier(2)

    def writer(i: int) -> None:
        seen[i] = store.get(request_id)
        both_read.wait(timeout=10)
        try:
            store.update(seen[i].model_copy(update={"error": f"{label} writer {i}"}))
            outcome[i] = "won"
        except Conflict:
            outcome[i] = "conflict"

    threads = [threading.Thread(target=writer, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return seen, outcome


class RunStoreContract:
    """Behaviour every RunStore must have. Subclasses provide the ``store`` fixture."""

    race_rounds = 30
    counter_threads = 4
    counter_increments = 25

    def test_is_a_run_store(self, store: RunStore) -> None:
        assert isinstance(store, RunStore)

    def test_get_unknown_is_none(self, store: RunStore) -> None:
        assert store.get("nope") is None

    def test_insert_then_get_round_trips_every_field(self, store: RunStore) -> None:
        request = TrainingRequest(request_id="r-1", env="CartPole-v1", tags={"team": "rl"})
        rec = record(
            "r-1",
            request=request,
            run_id="run-9",
            progress=Progress(iteration=3, timesteps=1200),
            deliveries=[Delivery(target="https://example.com/hook", ok=True, attempts=2)],
        )
        stored, inserted = store.insert_if_absent(rec)
        assert inserted is True
        assert stored == rec
        got = store.get("r-1")
        assert got == rec
        assert got.request.tags == {"team": "rl"}
        assert got.progress.timesteps == 1200

    def test_second_insert_returns_first_record(self, store: RunStore) -> None:
        first = record("dup", run_id="first")
        store.insert_if_absent(first)
        stored, inserted = store.insert_if_absent(record("dup", run_id="second", state=RunState.running))
        assert inserted is False
        assert stored.run_id == "first"
        assert stored.state is RunState.received
        assert store.get("dup").run_id == "first"

    def test_update_increments_version_and_stamps_updated_at(self, store: RunStore) -> None:
        store.insert_if_absent(record("u"))
        current = store.get("u")
        updated = store.update(current.model_copy(update={"state": RunState.submitted, "run_id": "run-1"}))
        assert updated.version == current.version + 1
        assert updated.updated_at > T0
        got = store.get("u")
        assert got.version == current.version + 1
        assert got.state is RunState.submitted
        assert got.run_id == "run-1"
        again = store.update(got.model_copy(update={"state": RunState.running}))
        assert again.version == current.version + 2
        assert store.get("u").state is RunState.running

    def test_stale_version_conflicts_and_keeps_the_winner(self, store: RunStore) -> None:
        store.insert_if_absent(record("c"))
        stale = store.get("c")
        store.update(stale.model_copy(update={"run_id": "winner"}))
        with pytest.raises(Conflict):
            store.update(stale.model_copy(update={"run_id": "loser"}))
        got = store.get("c")
        assert got.run_id == "winner"
        assert got.version == stale.version + 1

    def test_update_unknown_is_not_found(self, store: RunStore) -> None:
        with pytest.raises(NotFound):
            store.update(record("ghost"))
        assert store.get("ghost") is None

    def test_list_filters_by_state_newest_first(self, store: RunStore) -> None:
        states = [RunState.received, RunState.running, RunState.completed, RunState.running, RunState.failed]
        for i, state in enumerate(states):
            store.insert_if_absent(record(f"l-{i}", state=state, created_at=T0 + timedelta(minutes=i)))
        assert [r.request_id for r in store.list()] == ["l-4", "l-3", "l-2", "l-1", "l-0"]
        assert [r.request_id for r in store.list(limit=2)] == ["l-4", "l-3"]
        assert [r.request_id for r in store.list(states=[RunState.running])] == ["l-3", "l-1"]
        both = store.list(states=[RunState.running, RunState.completed])
        assert [r.request_id for r in both] == ["l-3", "l-2", "l-1"]
        assert store.list(states=[RunState.notified]) == []

    def test_list_sees_state_changes(self, store: RunStore) -> None:
        store.insert_if_absent(record("s"))
        store.update(store.get("s").model_copy(update={"state": RunState.running}))
        assert [r.request_id for r in store.list(states=[RunState.running])] == ["s"]
        assert store.list(states=[RunState.received]) == []

    def test_count_by_states(self, store: RunStore) -> None:
        for i, state in enumerate(
            [RunState.running, RunState.running, RunState.submitted, RunState.completed]
        ):
            store.insert_if_absent(record(f"n-{i}", state=state))
        assert store.count([RunState.running]) == 2
        assert store.count([RunState.running, RunState.submitted]) == 3
        assert store.count([RunState.rejected]) == 0
        assert store.count([]) == 0

    def test_racing_writers_one_wins_no_lost_update(self, store: RunStore) -> None:
        store.insert_if_absent(record("race"))
        for round_ in range(self.race_rounds):
            seen, outcome = _race_two_writers(store, "race", label=f"round {round_}")
            assert seen[0].version == seen[1].version == round_
            assert sorted(outcome.values()) == ["conflict", "won"], outcome
            winner = next(i for i, o in outcome.items() if o == "won")
            final = store.get("race")
            assert final.version == round_ + 1
            assert final.error == f"round {round_} writer {winner}"

    def test_concurrent_read_modify_write_counts_exactly(self, store: RunStore) -> None:
        store.insert_if_absent(record("counter"))
        start = threading.Barrier(self.counter_threads)
        errors: list[BaseException] = []

        def bump() -> None:
            try:
                start.wait(timeout=10)
                for _ in range(self.counter_increments):
                    read_modify_write(
                        store,
                        "counter",
                        lambda r: r.model_copy(update={"poll_failures": r.poll_failures + 1}),
                    )
            except BaseException as err:  # noqa: BLE001 - surfaced below: a thread's failure must fail the test
                errors.append(err)

        threads = [threading.Thread(target=bump) for _ in range(self.counter_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert errors == []
        total = self.counter_threads * self.counter_increments
        final = store.get("counter")
        assert final.poll_failures == total
        assert final.version == total

    def test_waiting_is_the_deferred_received_oldest_first(self, store: RunStore) -> None:
        cases = [
            ("w-fresh", RunState.received, 0),  # not deferred yet: not in the line
            ("w-late", RunState.received, 1),
            ("w-early", RunState.received, 3),
            ("w-claimed", RunState.provisioning, 2),
            ("w-done", RunState.notified, 5),
        ]
        for i, (rid, state, deferrals) in enumerate(cases):
            created = T0 + timedelta(minutes=10 - i)  # inserted newest first
            store.insert_if_absent(record(rid, state=state, created_at=created, deferrals=deferrals))
        assert [r.request_id for r in store.waiting()] == ["w-early", "w-late"]
        assert [r.request_id for r in store.waiting(limit=1)] == ["w-early"]
        store.update(store.get("w-early").model_copy(update={"state": RunState.provisioning}))
        store.update(store.get("w-fresh").model_copy(update={"deferrals": 1}))
        assert [r.request_id for r in store.waiting()] == ["w-late", "w-fresh"]

    def test_team_runs_in_flight_or_updated_since(self, store: RunStore) -> None:
        since = T0 + timedelta(hours=1)

        def team_record(rid: str, team: str, state: RunState, updated: datetime) -> RunRecord:
            request = TrainingRequest(request_id=rid, env="CartPole-v1", team=team)
            return record(rid, state=state, request=request, created_at=T0).model_copy(
                update={"updated_at": updated}
            )

        for rec in [
            team_record("t-running", "team-a", RunState.running, T0),  # in flight: counted however old
            team_record("t-provisioning", "team-a", RunState.provisioning, T0),
            team_record("t-ended-before", "team-a", RunState.notified, T0),
            team_record("t-ended-after", "team-a", RunState.notified, since + timedelta(minutes=5)),
            team_record("t-at", "team-a", RunState.completed, since),
            team_record("t-waiting", "team-a", RunState.received, T0),
            team_record("t-other", "team-b", RunState.running, since + timedelta(minutes=5)),
            record("t-no-request", state=RunState.running),
        ]:
            store.insert_if_absent(rec)
        got = sorted(r.request_id for r in store.team_runs("team-a", since=since))
        assert got == ["t-at", "t-ended-after", "t-provisioning", "t-running"]
        assert [r.request_id for r in store.team_runs("team-b", since=since)] == ["t-other"]
        assert store.team_runs("team-c", since=since) == []
        store.update(store.get("t-waiting").model_copy(update={"state": RunState.provisioning}))
        assert "t-waiting" in {r.request_id for r in store.team_runs("team-a", since=since)}
