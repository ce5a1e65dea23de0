"""HTTP latency through the local host: many clients at once, each request on a new connection.

The real function app (function_app.py) on the compute twin, served by the local host (waitress)
on 127.0.0.1. ``--clients`` threads in a separate process (so they do not share the server's
GIL) start on one barrier and each sends ``--per-client`` requests, every one on a new TCP
connection: ``GET /api/trainings/<id>`` of a recorded run (the dashboard's and ``rlq status``'s
read), or with ``--post`` half of them ``POST /api/trainings`` of a new request. It prints the
latency percentiles of the whole exchange (connect, request, full answer), the failures, the
machine and its load average, the figures the README quotes.

Usage: python bench/http_latency.py [--clients 64] [--per-client 16] [--post]
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from machine import describe as describe_machine  # bench/machine.py: the script's own folder is on sys.path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.composition import build
from shared.localhost import LocalHost
from shared.settings import Settings

SEEDED = "latency-seed"


def _one(port: int, n: int, i: int, post: bool) -> tuple[float, int]:
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        if post and i % 2:
            body = json.dumps({"env": "CartPole-v1", "request_id": f"lat-{n}-{i}"})
            conn.request("POST", "/api/trainings", body, {"Content-Type": "application/json"})
        else:
            conn.request("GET", f"/api/trainings/{SEEDED}")
        resp = conn.getresponse()
        resp.read()
        status = resp.status
    except OSError:
        status = 0
    finally:
        conn.close()
    return time.perf_counter() - t0, status


def clients(port: int, n_clients: int, per_client: int, post: bool, out: mp.Queue) -> None:
    """The load, in its own process: ``n_clients`` threads released at once."""
    barrier = threading.Barrier(n_clients)
    results: list[tuple[float, int]] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        barrier.wait()
        mine = [_one(port, n, i, post) for i in range(per_client)]
        with lock:
            results.extend(mine)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(n_clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put((results, time.perf_counter() - t0))


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile: the smallest value with at least q % of the values at or below it."""
    rank = max(1, -(-len(sorted_values) * q // 100))
    return sorted_values[int(rank) - 1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--per-client", type=int, default=16)
    ap.add_argument("--post", action="store_true", help="half the requests POST a new training request")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="rlq-http-latency-") as tmp:
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None,
            data_dir=Path(tmp) / "rlq",
            backend="twin",
            max_in_flight=10**6,
        )
        wiring = build(settings)
        wiring.service.enqueue({"env": "CartPole-v1", "request_id": SEEDED})
        host = LocalHost.for_wiring(wiring)
        host.start(queues=False, timers=False)
        try:
            load_before = os.getloadavg()
            ctx = mp.get_context("spawn")
            out: mp.Queue = ctx.Queue()
            proc = ctx.Process(
                target=clients, args=(host.http_port, args.clients, args.per_client, args.post, out)
            )
            proc.start()
            results, wall = out.get(timeout=600)
            proc.join(60)
            load_after = os.getloadavg()
        finally:
            host.stop()
    lat = sorted(t for t, _ in results)
    failed = sum(1 for _, status in results if status not in (200, 202))
    ms = [1000 * percentile(lat, q) for q in (50, 90, 99)]
    what = "GET /api/trainings/<id>" + (" and POST /api/trainings" if args.post else "")
    print(
        f"HTTP through the local host (function_app.py on the compute twin): {what}, "
        f"{args.clients} clients x {args.per_client} requests, a new connection each, all at once"
    )
    print(f"requests        {len(results)}, failed {failed}, {len(results) / wall:.0f} requests/s")
    print(
        f"latency         p50 {ms[0]:.1f} ms, p90 {ms[1]:.1f} ms, p99 {ms[2]:.1f} ms, "
        f"max {1000 * lat[-1]:.1f} ms, mean {1000 * statistics.fmean(lat):.1f} ms"
    )
    print(f"machine         {describe_machine()}")
    print(
        "load average    before {:.2f} {:.2f} {:.2f}, after {:.2f} {:.2f} {:.2f}".format(
            *load_before, *load_after
        )
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
