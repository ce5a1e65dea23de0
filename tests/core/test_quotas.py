"""Per-team quotas and priorities, in one process on the fake clock (docs/teams.md).

A request over its team's cap is deferred exactly as over the global cap (put back on the queue,
``waiting`` saying why), never refused and never lost; when slots free, the deferred requests take
them high before normal before low, oldest first, and a waiting request ages one level per
``priority_aging_s`` so that a stream of high requests cannot starve a low one.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from shared.contracts.parsing import parse_request
from shared.contracts.run import IN_FLIGHT, RunRecord, RunState
from shared.core import quotas
from shared.errors import InvalidRequest
from shared.settings import Settings
from tests.support.topics import drain_topic

GPU_HEAD = {"head": {"vm_size": "STANDARD_NC4AS_T4_V3"}}  # 1 GPU (shared/contracts/vm_sizes.py)
QUOTAS = {"team-a": {"max_in_flight": 1}, "gpu-team": {"gpu_hours_per_day": 1}, "*": {"max_in_flight": 5}}


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    """The conftest's settings with :data:`QUOTAS` and aging; stall and unreachable timeouts past the
    hour the GPU-hours test moves the clock on."""
    return {
        "stall_timeout_s": 7200,
        "unreachable_timeout_s": 7200,
        "team_quotas": json.dumps(QUOTAS),
        "priority_aging_s": 600,
    }


def body(request_id: str, **extra) -> bytes:
    return json.dumps(
        {"request_id": request_id, "env": "CartPole-v1", "stop": {"timesteps_total": 10_000}, **extra}
    ).encode()


def send(w, request_id: str, **extra) -> None:
    w.broker.send(w.settings.queue_name, body(request_id, **extra), message_id=f"m-{request_id}")


def intake_all(w) -> Counter:
    """Deliver every due message on the intake queue as the host does; count the outcomes."""
    q, seen = w.settings.queue_name, Counter()
    while msgs := w.broker.receive(q):
        (m,) = msgs
        rec = w.service.intake(m.body, message_id=m.message_id, delivery_count=m.delivery_count)
        seen[rec.state.value] += 1
        w.broker.complete(m)
    return seen


def submitted_at(w) -> dict[str, float]:
    """When each request was submitted (the fake clock), from the run records."""
    return {r.request_id: r.submitted_at.timestamp() for r in w.store.list(limit=1000) if r.submitted_at}


def submit_order(w) -> list[str]:
    return [rid for rid, _ in sorted(submitted_at(w).items(), key=lambda kv: kv[1])]


# --- the request's fields and the settings -----------------------------------------------------


@pytest.mark.parametrize(
    "extra, field, message",
    [
        (
            {"priority": "urgent"},
            "priority",
            "'urgent' is not allowed; input should be 'high', 'normal' or 'low'",
        ),
        ({"priority": 1}, "priority", "1 is not allowed; input should be 'high', 'normal' or 'low'"),
        (
            {"team": "team a"},
            "team",
            "'team a' is not allowed; a team is 1-64 letters, digits, _ or -, starting with a letter or digit",
        ),
    ],
)
def test_a_bad_team_or_priority_is_refused_naming_the_field_and_what_is_allowed(extra, field, message):
    with pytest.raises(InvalidRequest) as err:
        parse_request(body("bad", **extra))
    assert err.value.errors == [{"field": field, "message": message}]


def test_a_request_without_team_or_priority_is_the_default_team_at_normal():
    request = parse_request(body("plain"))
    assert (request.team, request.priority) == ("default", "normal")


ALLOWED = "allowed: max_in_flight (an integer >= 1), gpu_hours_per_day (a number > 0)"


@pytest.mark.parametrize(
    "quotas_json, named",
    [
        (
            '{"team-a": {"max_inflight": 2}}',
            f"RLQ_TEAM_QUOTAS: team-a.max_inflight: Extra inputs are not permitted; {ALLOWED}",
        ),
        (
            '{"team-a": {"max_in_flight": 0}}',
            f"RLQ_TEAM_QUOTAS: team-a.max_in_flight: Input should be greater than or equal to 1; {ALLOWED}",
        ),
        (
            '{"team-a": {"gpu_hours_per_day": "8"}}',
            f"RLQ_TEAM_QUOTAS: team-a.gpu_hours_per_day: Input should be a valid number; {ALLOWED}",
        ),
        (
            '{"team a": {}}',
            "RLQ_TEAM_QUOTAS: team 'team a' is not allowed; a team is 1-64 letters, digits, _ or -, or \"*\" for every team not named",
        ),
        ("[1]", 'RLQ_TEAM_QUOTAS: expected an object of teams, e.g. {"team-a": {"max_in_flight": 2}}'),
        ("{nope", "RLQ_TEAM_QUOTAS: not JSON (Expecting property name enclosed in double quotes"),
        (
            "/no/such/quotas.json",
            "RLQ_TEAM_QUOTAS: neither JSON nor a readable file: /no/such/quotas.json (No such file or directory)",
        ),
    ],
)
def test_bad_quotas_stop_start_up_naming_the_entry(tmp_path, quotas_json, named):
    with pytest.raises(ValueError, match="RLQ_TEAM_QUOTAS") as err:
        Settings(data_dir=tmp_path, team_quotas=quotas_json)
    assert named in str(err.value)


def test_quotas_from_a_file_and_the_star_entry_for_every_other_team(tmp_path):
    path = tmp_path / "quotas.json"
    path.write_text('{"team-a": {"max_in_flight": 2, "gpu_hours_per_day": 8}, "*": {"max_in_flight": 1}}')
    s = Settings(data_dir=tmp_path, team_quotas=str(path))
    assert (s.team_quota("team-a").max_in_flight, s.team_quota("team-a").gpu_hours_per_day) == (2, 8.0)
    assert (s.team_quota("anyone").max_in_flight, s.team_quota("anyone").gpu_hours_per_day) == (1, None)
    unset = Settings(data_dir=tmp_path)
    assert unset.has_team_quotas is False and unset.team_quota("team-a").max_in_flight is None


# --- team caps -----------------------------------------------------------------------------------


def test_over_its_team_cap_a_request_waits_visibly_then_runs_once(wired, twin, clock):
    send(wired, "a-1", team="team-a")
    send(wired, "a-2", team="team-a")
    send(wired, "b-1", team="team-b")  # another team: not held back by team-a's cap
    assert intake_all(wired) == Counter(submitted=2, received=1)
    waiting = wired.service.get("a-2")
    assert waiting.state is RunState.received and waiting.deferrals == 1
    assert waiting.waiting == "waiting for team quota: team team-a has 1 of 1 runs in flight"
    assert wired.service.get("b-1").state is RunState.submitted
    assert wired.broker.counts(wired.settings.queue_name)["scheduled"] == 1  # sent again later: not lost

    for _ in range(30):
        if wired.store.count([RunState.notified]) == 3:
            break
        wired.service.poll_once()
        team_a = [r for r in wired.store.list(states=IN_FLIGHT) if r.request.team == "team-a"]
        assert len(team_a) <= 1
        clock.advance(wired.settings.defer_delay_s)
        intake_all(wired)
    assert twin.jobs_per_request() == {"a-1": 1, "a-2": 1, "b-1": 1} == twin.submits()
    assert wired.service.get("a-2").waiting is None  # cleared by the claim
    assert sorted(m.message_id for m in drain_topic(wired)) == [
        "a-1:completed",
        "a-2:completed",
        "b-1:completed",
    ]


def test_gpu_hours_per_day_hold_back_gpu_runs_until_the_next_utc_day(wired, twin, clock):
    clock.now = datetime(2026, 3, 2, 20, 0, tzinfo=UTC)
    send(wired, "g-1", team="gpu-team", compute=GPU_HEAD)
    intake_all(wired)
    clock.advance(3600)  # one GPU for one hour: the day's budget
    for _ in range(3):
        wired.service.poll_once()
    assert wired.service.get("g-1").state is RunState.notified

    send(wired, "g-2", team="gpu-team", compute=GPU_HEAD)
    send(wired, "g-cpu", team="gpu-team")  # needs no GPU: the GPU-hour cap does not hold it back
    assert intake_all(wired) == Counter(received=1, submitted=1)
    held = wired.service.get("g-2")
    assert held.waiting == "waiting for team quota: team gpu-team used 1.00 of 1 GPU-hours today (UTC)"
    assert wired.service.get("g-cpu").state is RunState.submitted

    clock.now = datetime(2026, 3, 2, 23, 59, tzinfo=UTC)
    intake_all(wired)
    assert wired.service.get("g-2").state is RunState.received  # still today
    clock.now = datetime(2026, 3, 3, 0, 1, tzinfo=UTC)
    intake_all(wired)
    assert wired.service.get("g-2").state is RunState.submitted  # a new UTC day
    assert twin.submits() == {"g-1": 1, "g-cpu": 1, "g-2": 1}


def test_gpu_hours_count_the_part_of_each_run_inside_today():
    s = Settings(backend="twin", head_vm_size="STANDARD_NC24ADS_A100_V4", worker_node_count=0)
    now = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
    request = parse_request(
        body("x", team="t", compute={"head": {"vm_size": "STANDARD_NC4AS_T4_V3", "node_count": 2}})
    )

    def run(state, started_h, ended_h=None, **changes) -> RunRecord:
        return RunRecord(
            request_id="x",
            state=state,
            request=request,
            submitted_at=now + timedelta(hours=started_h),
            finished_at=None if ended_h is None else now + timedelta(hours=ended_h),
            **changes,
        )

    use = quotas.team_use(
        [
            run(RunState.running, -1),  # 2 GPUs x 1 h
            run(RunState.notified, -4, -1.5),  # began yesterday: 2 GPUs x 0.5 h today
            run(RunState.notified, -5, -3),  # ended yesterday: nothing
            RunRecord(request_id="y", state=RunState.received, request=request),  # never submitted
        ],
        now,
        s,
    )
    assert use.in_flight == 1 and use.gpu_hours == pytest.approx(3.0)
    on_azureml = parse_request(body("z", compute={"backend": "azureml"}))
    assert quotas.run_gpus(on_azureml, "azureml", s) == 1  # the default head cluster's size
    assert quotas.run_gpus(parse_request(body("r")), "ray", s) == 0


# --- priorities ----------------------------------------------------------------------------------


def test_freed_slots_go_high_then_normal_then_low_oldest_first(wired, twin, clock):
    wired.settings.max_in_flight = 1
    send(wired, "busy", priority="low")
    intake_all(wired)
    for rid, priority in [
        ("low-1", "low"),
        ("normal-1", "normal"),
        ("low-2", "low"),
        ("high-1", "high"),
        ("normal-2", "normal"),
        ("high-2", "high"),
    ]:
        send(wired, rid, priority=priority)
        clock.advance(1)
    assert intake_all(wired) == Counter(received=6)
    assert wired.service.get("low-1").waiting == "waiting for a free slot: 1 of 1 runs in flight"

    for _ in range(60):
        if wired.store.count([RunState.notified]) == 7:
            break
        wired.service.poll_once()
        clock.advance(wired.settings.defer_delay_s)
        intake_all(wired)
    assert submit_order(wired) == ["busy", "high-1", "high-2", "normal-1", "normal-2", "low-1", "low-2"]
    assert twin.submits() == dict.fromkeys(submit_order(wired), 1)
    waited = wired.service.get("low-2")
    assert waited.deferrals > 1 and waited.waiting is None


def test_a_low_request_is_not_starved_by_a_stream_of_high_ones(wired, twin, clock):
    s = wired.settings
    s.max_in_flight, aging = 1, s.priority_aging_s
    send(wired, "busy")
    intake_all(wired)
    send(wired, "low", priority="low")
    intake_all(wired)
    low_received = wired.service.get("low").created_at
    for i in range(60):  # a new high request every deferral delay, forever
        send(wired, f"high-{i:02d}", priority="high")
        wired.service.poll_once()
        clock.advance(s.defer_delay_s)
        intake_all(wired)
        if "low" in twin.submits():
            break
    order = submit_order(wired)
    assert "low" in order, "the low request never ran"
    started = submitted_at(wired)["low"]
    assert started - low_received.timestamp() <= 2 * aging + 4 * s.defer_delay_s  # two levels of aging
    assert started - low_received.timestamp() >= aging  # before aging, the high requests went first
    assert order.index("low") > 3


def test_a_request_that_takes_the_last_slot_at_the_same_moment_as_another_backs_off(wired, twin, monkeypatch):
    wired.settings.max_in_flight = 1
    send(wired, "first")
    intake_all(wired)
    admission = wired.service._intake.admission
    monkeypatch.setattr(admission, "wait_reason", lambda record: None)  # it counted before the other claimed
    send(wired, "second")
    assert intake_all(wired) == Counter(received=1)
    second = wired.service.get("second")
    assert (second.state, second.claimed_at, second.deferrals) == (RunState.received, None, 1)
    assert second.waiting == "waiting for a free slot: 1 of 1 runs in flight"
    assert twin.submits() == {"first": 1}
    assert wired.broker.counts(wired.settings.queue_name)["scheduled"] == 1


def test_a_deferred_request_long_gone_from_the_queue_holds_no_place_in_line():
    request = parse_request(body("late"))
    now = datetime(2026, 3, 2, tzinfo=UTC)
    rec = RunRecord(request_id="late", request=request, deferrals=2, updated_at=now - timedelta(seconds=600))
    assert quotas.in_line(rec, now, defer_delay_s=60)
    assert not quotas.in_line(rec.model_copy(update={"updated_at": now - timedelta(seconds=601)}), now, 60)
    assert not quotas.in_line(rec.model_copy(update={"cancel_requested": True}), now, 60)
