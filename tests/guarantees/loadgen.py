"""Load and soak machinery shared by ``test_load.py`` (reduced, CI) and ``bench/load_soak.py`` (full).

Load: N messages on the intake queue — valid requests, extra deliveries of some of them (the
producer retried), and poison bodies from ``tests/poison/corpus`` — processed by
``crash_driver.py`` subprocesses that the parent SIGKILLs at random moments and restarts. At the
end every message must be accounted for: each valid request notified once with one job, each
poison message dead-lettered once naming its field, nothing else dead-lettered.

Poll soak: many active runs polled tick after tick while the compute twin fails a share of the
status calls; every run must finish and no tick may go over its budget.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from shared.adapters.broker.sqlite_broker import SqliteBroker
from shared.adapters.compute.compute_twin import ComputeTwin
from shared.adapters.store.sqlite_store import SqliteRunStore
from shared.contracts.run import FINAL, RunState
from shared.settings import Settings
from tests.guarantees.crash_driver import AUDIT_SUBSCRIPTION, TOPIC_SENDS, driver_env, is_completion, prepare
from tests.poison.conftest import corpus, names_field
from tests.support.descriptors import open_fds

REPO = Path(__file__).resolve().parents[2]
ENVS = ("CartPole-v1", "CartPole-v0", "Acrobot-v1", "PongNoFrameskip-v4", "ALE/Pong-v5")


@dataclass(frozen=True)
class Message:
    message_id: str
    body: bytes
    kind: str  # "valid" | "duplicate" | "poison"
    request_id: str | None = None  # valid and duplicate
    field: str | None = None  # poison: the field its rejection must name


@dataclass
class LoadPlan:
    messages: list[Message]

    @property
    def request_ids(self) -> list[str]:
        return [m.request_id for m in self.messages if m.kind == "valid" and m.request_id]

    @property
    def poison(self) -> list[Message]:
        return [m for m in self.messages if m.kind == "poison"]

    @property
    def duplicates(self) -> list[Message]:
        return [m for m in self.messages if m.kind == "duplicate"]


def make_plan(n: int, *, duplicate_rate: float = 0.05, poison_rate: float = 0.02, seed: int = 7) -> LoadPlan:
    """``n`` messages: ``duplicate_rate`` of them repeat an earlier request, ``poison_rate`` are poison."""
    rng = random.Random(seed)
    n_dup, n_poison = round(n * duplicate_rate), round(n * poison_rate)
    n_valid = n - n_dup - n_poison
    keyed: list[tuple[float, Message]] = []
    valid = []
    for i in range(n_valid):
        env = rng.choice(ENVS)
        rid = f"load-{i:05d}"
        body = {
            "request_id": rid,
            "env": env,
            "algorithm": rng.choice(("IMPALA", "APPO", "PPO")),
            "stop": {"timesteps_total": rng.randint(10_000, 10**7)},
            "tags": {"batch": str(i // 100)},
        }
        valid.append(Message(f"msg-{rid}", json.dumps(body).encode(), "valid", request_id=rid))
        keyed.append((float(i), valid[-1]))
    for k in range(n_dup):  # a repeat comes somewhere after its original
        i = rng.randrange(n_valid)
        orig = valid[i]
        keyed.append(
            (
                rng.uniform(i + 0.1, n_valid),
                Message(f"{orig.message_id}-again-{k}", orig.body, "duplicate", request_id=orig.request_id),
            )
        )
    poison_files = [c for c in corpus() if not c.name.startswith("gen-")]
    for k in range(n_poison):
        case = rng.choice(poison_files)
        keyed.append(
            (
                rng.uniform(0, n_valid),
                Message(f"poison-{k}-{case.name}", case.body, "poison", field=case.field),
            )
        )
    out = [m for _, m in sorted(keyed, key=lambda km: km[0])]
    return LoadPlan(out)


@dataclass
class LoadReport:
    messages: int = 0
    valid_requests: int = 0
    duplicate_deliveries: int = 0
    poison: int = 0
    restarts: int = 0
    kill_points: list[str] = field(default_factory=list)
    processing_wall_s: float = 0.0
    enqueue_s: float = 0.0
    deferrals: int = 0
    # filled by verify_load
    notified: int = 0
    jobs: int = 0
    submit_calls: int = 0
    duplicate_jobs: int = 0  # submit calls beyond the first for a request
    lost: int = 0
    dead_letters: int = 0
    republishes_dropped: int = 0

    @property
    def requests_per_s(self) -> float:
        return self.messages / self.processing_wall_s if self.processing_wall_s else 0.0

    def lines(self) -> list[str]:
        return [
            (
                f"messages                 {self.messages:>8}  ({self.valid_requests} requests, "
                f"{self.duplicate_deliveries} duplicate deliveries, {self.poison} poison)"
            ),
            (
                f"processing wall time     {self.processing_wall_s:>8.1f} s  ({self.requests_per_s:.0f} messages/s, "
                f"restarts and lock expiries included)"
            ),
            f"SIGKILL + restart        {self.restarts:>8}  at progress {', '.join(self.kill_points) or '-'}",
            f"notified                 {self.notified:>8}  (exactly one completion message each)",
            (
                f"jobs                     {self.jobs:>8}  from {self.submit_calls} submit calls: duplicate "
                f"jobs {self.duplicate_jobs}, lost {self.lost}"
            ),
            (
                f"duplicates dropped       {self.duplicate_deliveries:>8}  deliveries, plus {self.republishes_dropped} "
                "completion re-publishes dropped by duplicate detection"
            ),
            f"dead letters             {self.dead_letters:>8}  (all poison, each naming its field)",
            f"deferrals (in-flight cap){self.deferrals:>8}",
        ]


# How far along a run record is: progress moves with every intake and every poll of every run, so
# a kill threshold on it can land anywhere — mid-intake, mid-tick, between publish and record.
_RANK = {
    RunState.received: 1,
    RunState.provisioning: 2,
    RunState.submitted: 3,
    RunState.running: 4,
    RunState.completed: 5,
    RunState.failed: 5,
    RunState.canceled: 5,
    RunState.timed_out: 5,
    RunState.notified: 6,
}


def _progress(
    broker: SqliteBroker, store: SqliteRunStore, s: Settings, total_msgs: int, n_valid: int
) -> float:
    c = broker.counts(s.queue_name)
    consumed = total_msgs - c["active"] - c["locked"] - c["scheduled"]
    ranks = sum(rank * store.count([state]) for state, rank in _RANK.items())
    return (consumed + ranks) / (total_msgs + 6 * n_valid)


def run_load(
    workdir: Path,
    plan: LoadPlan,
    *,
    restarts: int = 3,
    seed: int = 11,
    mode: str = "direct",
    max_seconds: float = 600.0,
    max_in_flight: int | None = None,
    defer_delay_s: float = 60.0,
    out=None,
) -> LoadReport:
    """Enqueue the plan, process it with SIGKILLs at random progress points, verify every message.

    ``max_in_flight`` (default: no cap in practice) makes the service defer what is over the cap;
    the deferred copies come back after ``defer_delay_s`` of real time.
    """
    rng = random.Random(seed)
    data = workdir / "rlq"
    settings = Settings(data_dir=data)
    broker = prepare(settings)
    report = LoadReport(
        messages=len(plan.messages),
        valid_requests=len(plan.request_ids),
        duplicate_deliveries=len(plan.duplicates),
        poison=len(plan.poison),
    )
    t0 = time.perf_counter()
    for m in plan.messages:
        assert broker.send(settings.queue_name, m.body, message_id=m.message_id)
    report.enqueue_s = time.perf_counter() - t0
    store = SqliteRunStore(settings.store_db)
    env = driver_env(
        data, RLQ_MAX_IN_FLIGHT=max_in_flight or len(plan.messages) + 10, RLQ_DEFER_DELAY_S=defer_delay_s
    )
    cmd = [
        sys.executable,
        "-m",
        "tests.guarantees.crash_driver",
        "--mode",
        mode,
        "--max-seconds",
        str(max_seconds),
    ]
    thresholds = sorted(rng.uniform(0.05, 0.9) for _ in range(restarts))
    log = (lambda text: print(text, file=out, flush=True)) if out is not None else (lambda text: None)

    started = time.perf_counter()
    deadline = started + max_seconds
    # The driver's stderr goes to a file, never a pipe: this loop reads nothing while it watches the
    # progress, and a driver logging a warning per deferral on starved cores filled a pipe's 64 KiB
    # and blocked in the write until the deadline (py-spy: the driver's main thread in
    # StreamHandler.emit), which read as "did not finish in time".
    stderr_path = workdir / "driver-stderr.log"
    while True:
        with stderr_path.open("w") as stderr_file:
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=stderr_file)
        target = thresholds[report.restarts] if report.restarts < len(thresholds) else None
        jitter = rng.uniform(0.0, 0.05)  # so the kill is not in step with the progress reads
        while proc.poll() is None and target is not None:
            if _progress(broker, store, settings, len(plan.messages), len(plan.request_ids)) >= target:
                time.sleep(jitter)
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                break
            if time.perf_counter() > deadline:
                proc.kill()
                raise AssertionError(f"(seed {seed}) the load did not finish in time")
            time.sleep(0.01)
        proc.wait(timeout=max(1.0, deadline - time.perf_counter()))
        err = stderr_path.read_text(errors="replace")
        if proc.returncode == -signal.SIGKILL:
            report.restarts += 1
            report.kill_points.append(
                f"{_progress(broker, store, settings, len(plan.messages), len(plan.request_ids)):.0%}"
            )
            log(f"  killed the processing process at {report.kill_points[-1]} progress; restarting")
            continue
        if proc.returncode != 0:
            raise AssertionError(f"(seed {seed}) the driver exited {proc.returncode}: {err[-3000:]}")
        if report.restarts < restarts:  # it finished before the next kill point: fewer kills than asked
            log(f"  finished before kill {report.restarts + 1} of {restarts}")
        break
    report.processing_wall_s = time.perf_counter() - started
    store.close()
    broker.close()
    try:
        verify_load(data, plan, report)
    except AssertionError as err:  # the seed first: a failing run can be replayed exactly
        raise AssertionError(f"(seed {seed}: rerun with RLQ_LOAD_SEED={seed}) {err}") from err
    return report


def verify_load(data: Path, plan: LoadPlan, report: LoadReport) -> None:
    """Every message accounted for; raise AssertionError naming what is not."""
    s = Settings(data_dir=data)
    store, broker = SqliteRunStore(s.store_db), SqliteBroker(s.queue_db)
    twin = ComputeTwin(data / "twin.sqlite3")
    try:
        ids = plan.request_ids
        jobs = twin.jobs_per_request()
        report.jobs = sum(jobs.values())
        # Counted from the submit calls rlq made, not the jobs the twin kept: the twin returns the
        # job already there for a request, so a second call would never show as a second job.
        submits = twin.submits()
        report.submit_calls = sum(submits.values())
        report.duplicate_jobs = sum(n - 1 for n in submits.values() if n > 1)
        records = {r.request_id: r for r in store.list(limit=10**7)}
        lost = [rid for rid in ids if rid not in records or records[rid].state is not RunState.notified]
        report.lost = len(lost)
        report.notified = sum(1 for rid in ids if rid in records and records[rid].state is RunState.notified)
        assert not lost, (
            f"{len(lost)} requests not notified, e.g. {[(r, records.get(r) and records[r].state) for r in lost[:5]]}"
        )
        assert report.duplicate_jobs == 0, (
            f"more than one submit call: {[(r, n) for r, n in submits.items() if n > 1][:10]}"
        )
        assert set(submits) == set(jobs), (
            f"submit calls and jobs disagree: {sorted(set(submits) ^ set(jobs))[:10]}"
        )
        assert set(jobs) == set(ids), (
            f"jobs for requests that are not valid ones: {sorted(set(jobs) - set(ids))[:10]}"
        )
        assert all(r.state in FINAL for r in records.values())
        report.deferrals = sum(r.deferrals for r in records.values())

        seen = Counter(  # completion messages: the topic carries model-promoted events too
            m.message_id
            for m in broker.peek(s.topic_name, subscription=AUDIT_SUBSCRIPTION, limit=10**7)
            if is_completion(m.message_id)
        )
        assert seen == Counter({f"{rid}:completed": 1 for rid in ids}), (
            f"completion messages not one per request: {[(k, v) for k, v in seen.items() if v != 1][:10]}"
        )
        sends = [json.loads(line) for line in (data / TOPIC_SENDS).read_text().splitlines()]
        sends = [x for x in sends if is_completion(x["message_id"])]
        report.republishes_dropped = sum(1 for x in sends if not x["landed"])

        dead = broker.dead_letters(s.queue_name, limit=10**7)
        report.dead_letters = len(dead)
        by_id = {d.message_id: d for d in dead}
        assert len(by_id) == len(dead), "a message was dead-lettered twice"
        poison = {m.message_id: m for m in plan.poison}
        assert set(by_id) == set(poison), (
            f"dead letters that are not poison: {sorted(set(by_id) - set(poison))[:5]}; "
            f"poison not dead-lettered: {sorted(set(poison) - set(by_id))[:5]}"
        )
        for mid, d in by_id.items():
            assert d.reason in ("InvalidRequest", "Forbidden"), (mid, d.reason, d.description[:200])
            assert names_field(d.description, poison[mid].field or ""), (
                mid,
                poison[mid].field,
                d.description[:200],
            )
        counts = broker.counts(s.queue_name)
        assert counts == {"active": 0, "scheduled": 0, "locked": 0, "dead_letter": len(plan.poison)}, counts
    finally:
        store.close()
        broker.close()
        twin.close()


# --- poll soak -----------------------------------------------------------------------------------


@dataclass
class SoakReport:
    runs: int
    ticks: int = 0
    finished: int = 0
    status_errors: int = 0
    other_errors: list[str] = field(default_factory=list)
    skipped: int = 0
    tick_wall_s: list[float] = field(default_factory=list)
    budget_s: float = 0.0
    open_fds: list[int] = field(default_factory=list)  # after each tick (Linux): must not keep growing

    @property
    def max_tick_s(self) -> float:
        return max(self.tick_wall_s, default=0.0)

    def lines(self) -> list[str]:
        walls = sorted(self.tick_wall_s) or [0.0]
        return [
            f"runs                     {self.runs:>8}  finished {self.finished}, stuck {self.runs - self.finished}",
            f"ticks                    {self.ticks:>8}  skipped runs {self.skipped}",
            (
                f"tick wall time           p50 {walls[len(walls) // 2]:.2f} s, max {self.max_tick_s:.2f} s "
                f"(budget {self.budget_s:.0f} s)"
            ),
            (
                f"transient status errors  {self.status_errors:>8}  (retried on the next tick); other errors "
                f"{len(self.other_errors)}"
            ),
            (
                f"open file descriptors    {self.open_fds[0] if self.open_fds else 0:>8}  after the first tick, "
                f"{self.open_fds[-1] if self.open_fds else 0} after the last"
            ),
        ]


def run_poll_soak(
    workdir: Path,
    *,
    runs: int,
    max_ticks: int,
    polls_to_finish: int,
    error_rate: float = 0.1,
    concurrency: int = 64,
    budget_s: float = 50.0,
    seed: int = 5,
) -> SoakReport:
    """``runs`` active runs, ticked until all finish (at most ``max_ticks``), a share of status calls failing."""
    from shared.composition import build
    from tests.guarantees.crash_driver import FileNotifier

    data = workdir / "soak"
    data.mkdir(parents=True, exist_ok=True)
    settings = Settings(
        data_dir=data,
        backend="twin",
        max_in_flight=runs + 1,
        poll_concurrency=concurrency,
        poll_tick_budget_s=budget_s,
        stall_timeout_s=10**6,
        default_run_duration_s=10**5,
        max_run_duration_s=10**6,
    )
    twin = ComputeTwin(
        data / "twin.sqlite3", polls_to_finish=polls_to_finish, status_error_rate=error_rate, seed=seed
    )
    w = build(settings, compute={"twin": twin}, notifier=FileNotifier(data / "notified.jsonl"), faults=None)
    for i in range(runs):
        body = {"request_id": f"soak-{i:05d}", "env": "CartPole-v1", "stop": {"timesteps_total": 10**6}}
        assert w.service.accept(json.dumps(body).encode(), message_id=f"m-{i}").state is RunState.submitted
    report = SoakReport(runs=runs, budget_s=budget_s)
    try:
        while report.ticks < max_ticks:
            tick = w.service.poll_once()
            report.ticks += 1
            report.tick_wall_s.append(tick.wall_s)
            if os.path.isdir("/proc/self/fd"):
                report.open_fds.append(open_fds())
            report.skipped += tick.skipped
            for e in tick.errors:
                if "injected" in e:
                    report.status_errors += 1
                else:
                    report.other_errors.append(e)
            if w.store.count([RunState.notified]) == runs:
                break
        report.finished = w.store.count([RunState.notified])
    finally:
        twin.close()
    return report
