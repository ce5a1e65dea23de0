"""What telemetry costs the intake: requests/s with it off, at its default, and exporting, side by side.

Each request is enqueued (``rlq.enqueue``, the message sent with its trace context) and delivered
to the queue trigger's call (``rlq.intake``, ``rlq.ensure_compute``, ``rlq.submit``, the metric
points), on the embedded parts (SQLite queue and run store) with the compute twin. Three modes, each
in its own process (the SDK's providers are set once per process), interleaved round by round (each
mode first in turn) so a change in the machine's load falls on all three:

* ``bare`` — the instrumentation itself stubbed out (shared.telemetry's spans and metric calls
  replaced by no-ops): the service as it was without telemetry;
* ``default`` — ``RLQ_OTEL_EXPORTER=none``: the OpenTelemetry API with no SDK (what ``rlq serve``
  does unless told otherwise);
* ``console`` — ``RLQ_OTEL_EXPORTER=console``: the SDK records every span, metric point and log
  record and the console exporter writes them (to /dev/null here).

Run: ``.venv/bin/python bench/telemetry_overhead.py`` (``--requests``, ``--rounds``). Prints the
machine, its load before and after, each mode's requests/s per round and the median, and each
mode's median against ``bare``. Not a test: the figures are read, not asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODES = ("bare", "default", "console")


def _stub_telemetry() -> None:
    """``bare``: every span a no-op context, every instrument call nothing (the service without it)."""
    from shared import telemetry

    class _Nothing:
        def __getattr__(self, _name: str):
            return lambda *a, **k: None

    @contextlib.contextmanager
    def nothing(*_a, **_k):
        yield _Nothing()

    @contextlib.contextmanager
    def poll(*_a, **_k):
        yield telemetry.PollSpan(_Nothing())  # type: ignore[arg-type]

    telemetry.span = nothing
    telemetry.poll_span = poll
    telemetry.inject = dict
    telemetry.name_request = lambda *a, **k: None
    for name in dir(telemetry):
        if name.isupper() and hasattr(getattr(telemetry, name), "add"):
            setattr(telemetry, name, _Nothing())
        if name.isupper() and hasattr(getattr(telemetry, name), "record"):
            setattr(telemetry, name, _Nothing())


def one(mode: str, requests: int) -> tuple[float, float]:
    """Requests/s of ``requests`` enqueued and taken in by the intake, in this process: by the wall
    clock, and by the process's CPU time (which other work on a loaded machine disturbs less)."""
    import logging

    from shared.adapters.broker.sqlite_broker import SqliteBroker
    from shared.adapters.compute.compute_twin import ComputeTwin
    from shared.composition import build
    from shared.contracts.run import RunState
    from shared.settings import Settings
    from shared.telemetry_export import configure

    logging.getLogger("shared").setLevel(logging.WARNING)
    if mode == "bare":
        _stub_telemetry()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            data_dir=Path(tmp),
            backend="twin",
            max_in_flight=requests + 1,
            otel_exporter="none" if mode != "console" else "console",
            _env_file=None,
        )  # type: ignore[call-arg]
        configure(settings)
        broker = SqliteBroker(settings.queue_db, lock_duration_s=60)
        w = build(settings, compute={"twin": ComputeTwin(Path(tmp) / "twin.sqlite3")}, broker=broker)
        body = {"env": "CartPole-v1", "stop": {"episode_reward_mean": 150}}
        started, cpu = time.perf_counter(), time.process_time()
        for i in range(requests):
            w.service.enqueue(json.dumps({**body, "request_id": f"bench-{i}"}).encode())
            (rm,) = broker.receive(settings.queue_name)
            w.service.intake(
                rm.body,
                message_id=rm.message_id,
                delivery_count=rm.delivery_count,
                trace_context=rm.application_properties,
            )
            broker.complete(rm)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        submitted = w.store.count([RunState.submitted])
        assert submitted == requests, f"{submitted} of {requests} submitted"
        return requests / elapsed, requests / cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        wall, cpu = one(args.child, args.requests)
        print(json.dumps({"wall": wall, "cpu": cpu}), file=sys.__stderr__)
        return 0

    from bench.machine import describe

    print(f"machine: {describe()}")
    print(f"load before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    rates: dict[str, list[float]] = {m: [] for m in MODES}
    cpu_rates: dict[str, list[float]] = {m: [] for m in MODES}
    for r in range(args.rounds):
        for mode in MODES[r % 3 :] + MODES[: r % 3]:  # each mode first in turn: no order favours one
            done = subprocess.run(
                [sys.executable, __file__, "--child", mode, "--requests", str(args.requests)],
                cwd=ROOT,
                stdout=subprocess.DEVNULL,  # the console exporter's output
                stderr=subprocess.PIPE,
                text=True,
                check=True,
            )
            got = json.loads(done.stderr.strip().splitlines()[-1])
            rates[mode].append(got["wall"])
            cpu_rates[mode].append(got["cpu"])
            print(
                f"round {r + 1} {mode:8s} {got['wall']:7.1f} requests/s wall, {got['cpu']:7.1f} per CPU second"
            )
    print(f"load after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    base, cpu_base = statistics.median(rates["bare"]), statistics.median(cpu_rates["bare"])
    print(f"\n{args.requests} requests enqueued + taken in, {args.rounds} rounds, medians:")
    print("  mode      requests/s (wall)        requests per CPU second")
    for mode in MODES:
        med, cpu_med = statistics.median(rates[mode]), statistics.median(cpu_rates[mode])
        print(
            f"  {mode:8s} {med:7.1f} ({med / base:.3f} of bare)  {cpu_med:7.1f} ({cpu_med / cpu_base:.3f} of bare)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
