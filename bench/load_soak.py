"""Load and soak: rlq under volume, repeated deliveries, poison and SIGKILLs — nothing lost, nothing twice.

Load (default 10,000 messages: 5% repeated deliveries of earlier requests, 2% poison bodies from
``tests/poison/corpus``): the messages go on the SQLite intake queue; a processing process (the
local Functions host running ``function_app.py`` on the compute twin, ``tests/guarantees/crash_driver.py``)
works through them and is SIGKILLed and restarted ``--restarts`` times at random moments. At the end
every message is accounted for: each valid request notified exactly once with exactly one job and one
completion message on the topic, each poison message dead-lettered once naming its field.

Poll soak (default 1,000 active runs, up to 100 ticks): every tick polls every run while a tenth of
status calls fail; every run must finish, no tick may skip a run or exceed ``poll_tick_budget_s``.

Run: ``.venv/bin/python bench/load_soak.py`` (a few minutes on two cores); ``--requests`` /
``--runs`` / ``--ticks`` for other sizes, ``--skip-load`` / ``--skip-soak`` for one half.
Exit status 1 when a guarantee failed (the message says which).
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.guarantees.loadgen import make_plan, run_load, run_poll_soak


def main(argv: list[str] | None = None) -> int:  # noqa: C901 - a benchmark script: options, run, report, read top to bottom
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=10_000, help="messages on the intake queue")
    p.add_argument("--duplicates", type=float, default=0.05, help="share of repeated deliveries")
    p.add_argument("--poison", type=float, default=0.02, help="share of poison messages")
    p.add_argument("--restarts", type=int, default=3, help="SIGKILLs of the processing process")
    p.add_argument(
        "--max-in-flight",
        type=int,
        default=None,
        help="global cap on runs in flight (default: none in practice); over it requests are deferred",
    )
    p.add_argument(
        "--defer-delay-s", type=float, default=1.0, help="defer_delay_s when --max-in-flight is set"
    )
    p.add_argument(
        "--mode",
        choices=("host", "direct"),
        default="host",
        help="host: the local Functions host; direct: the service called as the host would",
    )
    p.add_argument("--runs", type=int, default=1000, help="active runs in the poll soak")
    p.add_argument("--ticks", type=int, default=100, help="poll ticks at most")
    p.add_argument("--polls-to-finish", type=int, default=70, help="successful status calls a run needs")
    p.add_argument("--error-rate", type=float, default=0.1, help="share of status calls that fail")
    p.add_argument("--concurrency", type=int, default=64, help="poll_concurrency")
    p.add_argument("--budget-s", type=float, default=50.0, help="poll_tick_budget_s")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--skip-load", action="store_true")
    p.add_argument("--skip-soak", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    failed = False

    with tempfile.TemporaryDirectory(prefix="rlq-soak-") as tmp:
        if not args.skip_load:
            plan = make_plan(
                args.requests, duplicate_rate=args.duplicates, poison_rate=args.poison, seed=seed
            )
            print(
                f"load: {len(plan.messages)} messages, {args.restarts} SIGKILLs, processing via {args.mode} "
                f"(seed {seed})",
                flush=True,
            )
            t0 = time.perf_counter()
            try:
                report = run_load(
                    Path(tmp) / "load",
                    plan,
                    restarts=args.restarts,
                    seed=seed,
                    mode=args.mode,
                    max_seconds=3600,
                    max_in_flight=args.max_in_flight,
                    defer_delay_s=args.defer_delay_s,
                    out=sys.stdout,
                )
            except AssertionError as err:  # the message starts with the seed (run_load)
                print(f"LOAD FAILED: {err}")
                failed = True
            else:
                for line in report.lines():
                    print(f"  {line}")
                if report.restarts != args.restarts:  # the run must have been as rough as it says
                    print(
                        f"LOAD FAILED: {report.restarts} of {args.restarts} SIGKILLs happened (seed {seed})"
                    )
                    failed = True
                print(
                    f"  enqueue {report.enqueue_s:.1f} s, whole run {time.perf_counter() - t0:.1f} s: "
                    "0 lost, 0 duplicate jobs, every message accounted for"
                )
            print(flush=True)
        if not args.skip_soak:
            print(
                f"poll soak: {args.runs} active runs, up to {args.ticks} ticks, {args.error_rate:.0%} of status "
                f"calls failing, poll_concurrency {args.concurrency} (seed {seed})",
                flush=True,
            )
            soak = run_poll_soak(
                Path(tmp),
                runs=args.runs,
                max_ticks=args.ticks,
                polls_to_finish=args.polls_to_finish,
                error_rate=args.error_rate,
                concurrency=args.concurrency,
                budget_s=args.budget_s,
                seed=seed,
            )
            for line in soak.lines():
                print(f"  {line}")
            problems = []
            if soak.finished != soak.runs:
                problems.append(f"{soak.runs - soak.finished} runs stuck")
            if soak.skipped:
                problems.append(f"{soak.skipped} runs skipped over a tick budget")
            if soak.max_tick_s >= soak.budget_s:
                problems.append(f"a tick took {soak.max_tick_s:.1f} s")
            if soak.other_errors:
                problems.append(f"unexpected errors: {soak.other_errors[:3]}")
            if problems:
                print(f"SOAK FAILED: {'; '.join(problems)}")
                failed = True
            else:
                print("  no run stuck, no tick over budget, no run skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
