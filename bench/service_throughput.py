"""Service throughput: intake rate and latency, and one poll tick over many slow status calls.

Two numbers that bound how much one Functions instance can carry, measured on the embedded parts
(SQLite queue and run store) with the compute twin standing in for the cluster:

1. intake — N requests put on the queue, then delivered through the local Functions host
   (``shared.localhost.LocalHost.drain``: receive under a peek-lock, the ``intake`` handler,
   complete) with an instant compute: requests/s and the p50 / p99 latency of one delivery;
2. polling — ONE poll tick over all N active runs when each status call takes ``--status-latency-s``
   (the twin sleeps, as a slow control plane would): the tick's wall time against doing the same
   calls one after another, for each ``poll_concurrency`` given. "One after another" is measured
   in the same run: a tick at ``poll_concurrency`` 1 over ``--sample`` active runs of their own,
   its time per run scaled to N (so the per-run overhead of the tick is in it, not only the sleep).

Run: ``.venv/bin/python bench/service_throughput.py`` (about a minute); ``--requests 1000`` for a
quick look. Prints a table; exits 1 when a run was skipped or the speed-up target was missed.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.adapters.broker.sqlite_broker import SqliteBroker
from shared.adapters.compute.compute_twin import ComputeTwin
from shared.composition import build, install
from shared.contracts.completion import CompletionMessage, Delivery
from shared.contracts.request import TrainingRequest
from shared.contracts.run import RunState
from shared.settings import Settings


class NoNotifier:
    def deliver(self, message: CompletionMessage, request: TrainingRequest | None) -> list[Delivery]:
        return []


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bench_intake(data: Path, n: int, *, use_host: bool) -> tuple[dict, object]:
    settings = Settings(
        data_dir=data, backend="twin", max_in_flight=n + 1, lock_duration_s=300, poll_tick_budget_s=300
    )
    broker = SqliteBroker(settings.queue_db, lock_duration_s=settings.lock_duration_s)
    # In memory: the twin stands in for a remote control plane, so its own bookkeeping should not
    # cost an fsync per call (on a file it would: its SQLite runs with synchronous=FULL).
    twin = ComputeTwin(":memory:", polls_to_finish=10**9)
    w = build(settings, compute={"twin": twin}, broker=broker, notifier=NoNotifier(), faults=None)
    install(w)

    t0 = time.perf_counter()
    for i in range(n):
        body = {
            "request_id": f"bench-{i:05d}",
            "env": "PongNoFrameskip-v4",
            "algorithm": "IMPALA",
            "stop": {"episode_reward_mean": 18, "time_total_s": 3600},
            "tags": {"bench": "throughput"},
        }
        broker.send(settings.queue_name, json.dumps(body).encode(), message_id=f"m-{i:05d}")
    enqueue_s = time.perf_counter() - t0

    latencies_ms: list[float] = []
    t0 = time.perf_counter()
    if use_host:
        from shared.localhost import LocalHost

        host = LocalHost.for_wiring(w)
        while True:  # the host keeps the last 1000 invocations: drain in chunks to read them all
            done = host.drain(max_messages=1000)
            latencies_ms += [inv.ms for inv in host.invocations[-done:]] if done else []
            if done < 1000:
                break
        driver = "shared.localhost.LocalHost.drain"
    else:
        while msgs := broker.receive(settings.queue_name):
            t1 = time.perf_counter()
            w.service.intake(msgs[0].body, message_id=msgs[0].message_id)
            broker.complete(msgs[0])
            latencies_ms.append((time.perf_counter() - t1) * 1000)
        driver = "receive -> intake -> complete"
    wall = time.perf_counter() - t0

    submitted = w.store.count([RunState.submitted])
    jobs = twin.jobs_per_request()
    assert submitted == n and len(jobs) == n and set(jobs.values()) == {1}, (submitted, len(jobs))
    return {
        "driver": driver,
        "n": n,
        "enqueue_s": enqueue_s,
        "wall_s": wall,
        "rps": n / wall,
        "p50_ms": statistics.median(latencies_ms),
        "p99_ms": pct(latencies_ms, 0.99),
        "max_ms": max(latencies_ms),
    }, (w, twin)


def bench_tick(w, twin: ComputeTwin, *, concurrency: int, latency_s: float, per_run_s: float) -> dict:
    """One tick at ``concurrency``; ``per_run_s``: one run's share of a tick at concurrency 1."""
    w.settings.poll_concurrency = concurrency
    twin.status_latency_s = latency_s
    active = w.store.count([RunState.submitted, RunState.running])
    report = w.service.poll_once()
    sequential = active * per_run_s
    return {
        "concurrency": concurrency,
        "active": active,
        "polled": report.polled,
        "skipped": report.skipped,
        "errors": len(report.errors),
        "wall_s": report.wall_s,
        "sequential_s": sequential,
        "speedup": sequential / report.wall_s,
        "transitions": report.transitions,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=10_000)
    p.add_argument("--status-latency-s", type=float, default=0.05)
    p.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        default=[64, 128, 256],
        help="poll_concurrency values to tick with, one tick each (default: 64 128 256)",
    )
    p.add_argument(
        "--direct", action="store_true", help="drive receive -> intake -> complete without the host"
    )
    p.add_argument("--target-speedup", type=float, default=50.0)
    p.add_argument(
        "--sample",
        type=int,
        default=200,
        help="active runs ticked at poll_concurrency 1 (the sequential figure)",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)

    with tempfile.TemporaryDirectory(prefix="rlq-bench-") as tmp:
        # the sequential figure first, on runs of its own (bench_intake installs its wiring: the
        # main one is installed last)
        _, (ws, twin_s) = bench_intake(Path(tmp) / "sample", args.sample, use_host=not args.direct)
        one = bench_tick(ws, twin_s, concurrency=1, latency_s=args.status_latency_s, per_run_s=0.0)
        twin_s.close()
        per_run_s = one["wall_s"] / one["polled"]
        intake, (w, twin) = bench_intake(Path(tmp) / "rlq", args.requests, use_host=not args.direct)
        print(
            f"intake: {intake['n']} requests through {intake['driver']} (compute twin, SQLite queue + store)"
        )
        print(f"  enqueue               {intake['n'] / intake['enqueue_s']:>9.0f} messages/s")
        print(f"  intake                {intake['rps']:>9.0f} requests/s   ({intake['wall_s']:.1f} s)")
        print(
            f"  accept latency        p50 {intake['p50_ms']:.1f} ms   p99 {intake['p99_ms']:.1f} ms   "
            f"max {intake['max_ms']:.1f} ms   (one delivery: intake handler + settle)"
        )
        print()
        print(
            f"poll tick: {args.requests} active runs, status call {args.status_latency_s * 1000:.0f} ms each; "
            f"sequential: {per_run_s * args.requests:.0f} s (measured: poll_concurrency 1 over {one['polled']} "
            f"runs took {one['wall_s']:.1f} s, {per_run_s * 1000:.1f} ms per run, x {args.requests})"
        )
        print(
            f"  {'concurrency':>11} {'tick wall':>10} {'speed-up':>9} {'polled':>7} {'skipped':>8} {'errors':>7}"
        )
        rows = []
        for c in args.concurrency:
            r = bench_tick(w, twin, concurrency=c, latency_s=args.status_latency_s, per_run_s=per_run_s)
            rows.append(r)
            print(
                f"  {c:>11} {r['wall_s']:>9.1f}s {r['speedup']:>8.0f}x {r['polled']:>7} {r['skipped']:>8} "
                f"{r['errors']:>7}"
            )
        good = [
            r for r in rows if r["skipped"] == 0 and r["errors"] == 0 and r["speedup"] >= args.target_speedup
        ]
        print()
        if good:
            first = min(good, key=lambda r: r["concurrency"])
            best = max(rows, key=lambda r: r["speedup"])
            print(
                f"target >= {args.target_speedup:.0f}x faster than sequential, no run skipped: met from "
                f"poll_concurrency={first['concurrency']} ({first['speedup']:.0f}x); best {best['speedup']:.0f}x "
                f"at {best['concurrency']}"
            )
        else:
            print(f"target >= {args.target_speedup:.0f}x faster than sequential, no run skipped: MISSED")
        twin.close()
        install(None)
        return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
