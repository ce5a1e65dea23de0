"""A producer that keeps a trained policy fresh: it watches a metric of the policy in service and,
when the metric drifts below what the policy scored in training, asks rlq to retrain it, warm-started
from the policy's own final checkpoint (``restore_from: rlq://<request_id>``), then watches the new
one.

The metric is read from a JSON-lines file that the serving side appends to, one observation a line
(``{"value": 173.0}``; any other keys are ignored). Drift: the mean of the last ``--window``
observations falls more than ``--tolerance`` (a fraction) below the baseline, the current run's
``final_reward``. Each event is printed as one JSON line.

    python docs/examples/retrain_on_drift.py --api http://127.0.0.1:7071 --run <request_id> \\
        --metric-file served_reward.jsonl --stop '{"training_iteration": 40}'

In Azure pass the Function App URL and ``--function-key`` (or ``RLQ_FUNCTION_KEY``). Only
``shared.client`` (httpx) is needed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from shared.client import Client


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def follow_values(path: Path) -> Callable[[], list[float]]:
    """A reader returning the observations appended to ``path`` since its last call."""
    offset = 0

    def read() -> list[float]:
        nonlocal offset
        if not path.exists():
            return []
        with path.open("rb") as fh:
            fh.seek(offset)
            data = fh.read()
        complete = data[: data.rfind(b"\n") + 1]  # a line still being written waits for its newline
        offset += len(complete)
        values = []
        for line in complete.splitlines():
            try:
                value = json.loads(line)["value"]
            except (ValueError, KeyError, TypeError):
                continue  # not an observation: skipped, never fatal
            if isinstance(value, int | float) and not isinstance(value, bool):
                values.append(float(value))
        return values

    return read


class DriftWatcher:
    """Decides when the policy trained by ``run_id`` needs retraining."""

    def __init__(self, baseline: float, *, window: int, tolerance: float) -> None:
        self.baseline = baseline
        self.tolerance = tolerance
        self.recent: deque[float] = deque(maxlen=window)

    @property
    def threshold(self) -> float:
        return self.baseline - abs(self.baseline) * self.tolerance

    def observe(self, values: list[float]) -> float | None:
        """The drifted window mean once the window is full and below the threshold, else None."""
        self.recent.extend(values)
        if len(self.recent) < (self.recent.maxlen or 1):
            return None
        mean = sum(self.recent) / len(self.recent)
        return mean if mean < self.threshold else None


def run(
    client: Client,
    run_id: str,
    read: Callable[[], list[float]],
    *,
    window: int = 20,
    tolerance: float = 0.2,
    stop: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    interval_s: float = 5.0,
    train_timeout_s: float = 6 * 3600,
    max_retrains: int | None = None,
) -> Iterator[str]:
    """Watch, retrain on drift, adopt the retrained run; yields each new run's request id."""
    current = client.wait(run_id, timeout_s=train_timeout_s)
    if current["status"] != "Completed" or current.get("final_reward") is None:
        raise SystemExit(f"run {run_id} did not complete with a reward: {current['status']}")
    watcher = DriftWatcher(float(current["final_reward"]), window=window, tolerance=tolerance)
    emit("watching", request_id=run_id, baseline=watcher.baseline, threshold=watcher.threshold)
    retrains = 0
    while max_retrains is None or retrains < max_retrains:
        values = read()
        drifted = watcher.observe(values)
        if drifted is None:
            if values:
                emit("ok", request_id=run_id, observations=len(values))
            time.sleep(interval_s)
            continue
        emit("drift", request_id=run_id, window_mean=drifted, threshold=watcher.threshold)
        child = client.retrain(
            run_id, stop=stop, config=config, tags={"retrained_from": run_id, "reason": "drift"}
        )
        emit("retrain_submitted", request_id=child, parent_request_id=run_id)
        done = client.wait(child, timeout_s=train_timeout_s)
        retrains += 1
        emit("retrained", request_id=child, completion=done)
        if done["status"] == "Completed" and done.get("final_reward") is not None:
            run_id = child
            watcher = DriftWatcher(float(done["final_reward"]), window=window, tolerance=tolerance)
            emit("watching", request_id=run_id, baseline=watcher.baseline, threshold=watcher.threshold)
            yield child
        # else: keep the old policy; the next full drifted window asks again


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--api", required=True, help="rlq's base URL, e.g. http://127.0.0.1:7071")
    p.add_argument("--function-key", default=os.environ.get("RLQ_FUNCTION_KEY"))
    p.add_argument("--run", required=True, help="request id of the completed run now in service")
    p.add_argument("--metric-file", required=True, type=Path, help="JSON lines with a 'value' each")
    p.add_argument("--window", type=int, default=20, help="observations per decision")
    p.add_argument("--tolerance", type=float, default=0.2, help="allowed drop, a fraction of baseline")
    p.add_argument("--stop", type=json.loads, default=None, help="stop criteria JSON for retraining")
    p.add_argument("--config", type=json.loads, default=None, help="config overrides JSON")
    p.add_argument("--interval-s", type=float, default=5.0)
    p.add_argument("--train-timeout-s", type=float, default=6 * 3600)
    p.add_argument("--max-retrains", type=int, default=None, help="exit after this many")
    args = p.parse_args(argv)
    with Client(args.api, function_key=args.function_key) as client:
        for _ in run(
            client,
            args.run,
            follow_values(args.metric_file),
            window=args.window,
            tolerance=args.tolerance,
            stop=args.stop,
            config=args.config,
            interval_s=args.interval_s,
            train_timeout_s=args.train_timeout_s,
            max_retrains=args.max_retrains,
        ):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
