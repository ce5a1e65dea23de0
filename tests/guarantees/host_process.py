"""One of several host processes draining one queue at once (``test_concurrency.py``).

Run as ``python -m tests.guarantees.host_process`` with the settings in the environment. It builds
the production wiring on the shared data dir (SQLite queue and store; the compute twin, or the Ray
Jobs backend on a running head with ``RLQ_BACKEND=ray``), hosts ``function_app.py`` on
:class:`shared.localhost.LocalHost` with its background receivers — ``maxConcurrentCalls`` from
host.json per queue trigger — and its timer loop, and waits for a line on stdin before starting, so
that every process starts at the same moment. It exits 0 once everything is settled (see
``crash_driver.settled``), 3 when not within ``--max-seconds``.

``RLQ_TEST_TRAINER_PACKAGE`` (Ray only): the trainer package the jobs run (a stand-in that
finishes in a second), instead of the real one. ``RLQ_TEST_SUBMIT_JOURNAL`` (Ray only): note every
``submit_job`` call in that file (``tests/support/ray_submits.py``).

A test starts such processes with :func:`start_hosts` (this module's, or another that prints the
same ready line and waits for the same go line) and runs them with :func:`run_together`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from shared.composition import build
from shared.contracts.run import ACTIVE, TERMINAL
from shared.localhost import LocalHost
from shared.settings import Settings
from tests.guarantees.crash_driver import (
    NOTIFIED,
    REPO,
    FileNotifier,
    append_record,
    audited_broker,
    compute_under_test,
    settled,
)

INTAKES = "intakes.jsonl"  # one line per intake call: pid, thread, message id, request id, start, end


def host_env(data: Path, **settings: str) -> dict[str, str]:
    """A host process's environment on ``data``: none of this process's ``RLQ_`` or ``RAY_``
    settings, the SQLite queue and store, the poller's timer every second; ``settings`` add or replace."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RLQ_", "RAY_"))}
    env.update(
        RLQ_DATA_DIR=str(data),
        RLQ_BROKER="sqlite",
        RLQ_STORE="sqlite",
        RLQ_POLL_SCHEDULE="*/1 * * * * *",
        PYTHONPATH=str(REPO),
        **settings,
    )
    return env


def start_hosts(
    module: str, env: dict[str, str], n: int, *, max_seconds: float
) -> list[subprocess.Popen[str]]:
    """``n`` processes of ``python -m module --max-seconds max_seconds`` in ``env``, each waiting
    for the go line on stdin."""
    cmd = [sys.executable, "-m", module, "--max-seconds", str(max_seconds)]
    return [
        subprocess.Popen(
            cmd,
            cwd=REPO,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(n)
    ]


def run_together(procs: list[subprocess.Popen[str]], *, max_seconds: float) -> None:
    """Wait until every process is ready with more than one receiver, start them all at once, and
    wait for each to exit 0 (a minute past ``max_seconds`` at the most); any left running is killed."""
    try:
        for p in procs:
            ready = p.stdout.readline()
            assert ready.startswith("ready"), (ready, p.stderr.read()[-3000:] if p.poll() is not None else "")
            assert int(ready.rsplit("maxConcurrentCalls=", 1)[1]) > 1, ready
        for p in procs:  # go: every process at once
            p.stdin.write("\n")
            p.stdin.flush()
        # Each process's pipes are drained at the same time, each in its own thread: waiting on
        # one while another's unread stderr fills its pipe would block that one in a write.
        errs = [""] * len(procs)

        def drain(i: int) -> None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                errs[i] = procs[i].communicate(timeout=max_seconds + 60)[1] or ""

        drains = [threading.Thread(target=drain, args=(i,), daemon=True) for i in range(len(procs))]
        for t in drains:
            t.start()
        for t in drains:
            t.join()
        assert [p.returncode for p in procs] == [0] * len(procs), [e[-3000:] for e in errs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def _journal_intakes(w, path: Path, *, delay_s: float) -> None:
    """Note each intake call with its start and end, so the parent can see the copies overlap;
    ``delay_s`` makes ensure_compute take that long, widening the window two copies race in."""
    service = w.service
    intake = service.intake

    # ``more``: whatever else the host passes on (the trace context)
    def journaled(body, *, message_id, delivery_count=1, **more):
        started = time.time()
        try:
            return intake(body, message_id=message_id, delivery_count=delivery_count, **more)
        finally:
            append_record(
                path,
                {
                    "pid": os.getpid(),
                    "thread": threading.get_ident(),
                    "message_id": message_id,
                    "start": started,
                    "end": time.time(),
                },
            )

    service.intake = journaled
    if delay_s:
        for backend in service.core.compute.values():
            ensure = backend.ensure_compute

            def slow(request, _ensure=ensure):
                time.sleep(delay_s)
                return _ensure(request)

            backend.ensure_compute = slow


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--max-seconds", type=float, default=240.0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    s = Settings()
    broker = audited_broker(s)
    w = build(s, broker=broker, compute=compute_under_test(s), notifier=FileNotifier(s.data_dir / NOTIFIED))
    _journal_intakes(w, s.data_dir / INTAKES, delay_s=float(os.environ.get("RLQ_TEST_ENSURE_DELAY_S", "0")))
    host = LocalHost.for_wiring(w)
    print(f"ready {os.getpid()} maxConcurrentCalls={host.config.max_concurrent_calls}", flush=True)
    sys.stdin.readline()  # the parent starts every process at once
    host.start(http=False)
    deadline = time.monotonic() + args.max_seconds
    try:
        while not settled(w):
            if time.monotonic() > deadline:
                open_ = [r.request_id for r in w.store.list(states=[*ACTIVE, *TERMINAL], limit=20)]
                print(f"not settled after {args.max_seconds:.0f} s; still open: {open_}", file=sys.stderr)
                return 3
            time.sleep(0.2)
    finally:
        host.stop()
        if s.backend == "ray":  # a head this process had to start (the test's head died): not left behind
            from shared.localhost.ray_head import stop_local_head

            stop_local_head()
    return 0


if __name__ == "__main__":
    sys.exit(main())
