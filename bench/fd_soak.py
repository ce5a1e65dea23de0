"""Descriptor soak: 10,000 HTTP requests through the local host, the descriptor count flat.

The real function app on the compute twin, served by the local host over real HTTP, each request
on a new connection (half POST /api/trainings of a new request, half GET of the previous one),
while the intake, the poller and the notifier run. The process's open descriptors
(/proc/self/fd) and live threads are sampled every 1,000 requests after a warm-up of 2,000 (the
server's, the function pool's and the poller's threads are pooled and reach their bounds early);
the run fails (exit 1) when descriptors grow by more than new threads could hold (a connection
per database per thread), or any request fails.
CI runs a reduced form (1,000 requests) in tests/e2e/test_host_reliability.py.

Usage: python bench/fd_soak.py [--requests 10000]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.composition import build
from shared.localhost import LocalHost
from shared.settings import Settings


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def one(port: int, i: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        if i % 2:
            body = json.dumps({"env": "CartPole-v1", "request_id": f"soak-{i}"})
            conn.request("POST", "/api/trainings", body, {"Content-Type": "application/json"})
        else:
            conn.request("GET", f"/api/trainings/soak-{i - 1}" if i else "/api/health")
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--warmup", type=int, default=2000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="rlq-fd-soak-") as tmp:
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None,
            data_dir=Path(tmp) / "rlq",
            backend="twin",
            poll_schedule="*/1 * * * * *",
            max_in_flight=args.requests + 1,
        )
        host = LocalHost.for_wiring(build(settings))
        host.start()
        statuses: Counter[int] = Counter()
        try:
            for i in range(args.warmup):
                one(host.http_port, i)
            samples = [(open_fds(), threading.active_count())]
            t0 = time.perf_counter()
            for i in range(args.requests):
                statuses[one(host.http_port, args.warmup + i)] += 1
                if (i + 1) % 1000 == 0:
                    samples.append((open_fds(), threading.active_count()))
            wall = time.perf_counter() - t0
        finally:
            host.close()
    (fds0, threads0), (fds1, threads1) = samples[0], samples[-1]
    over = [(f - fds0) - (4 * max(0, t - threads0) + 16) for f, t in samples]
    print(
        f"requests: {args.requests} in {wall:.1f} s ({args.requests / wall:.0f}/s), statuses {dict(statuses)}"
    )
    print(f"open descriptors every 1,000 requests: {[f for f, _ in samples]}")
    print(f"live threads every 1,000 requests: {[t for _, t in samples]}")
    print(f"growth: {fds1 - fds0} descriptors, {threads1 - threads0} threads")
    ok = max(over) <= 0 and set(statuses) <= {200, 202}
    print("OK" if ok else "FAIL: descriptors grew or requests failed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
