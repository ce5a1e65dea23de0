"""Retraining by reference, end to end on one machine: the function app on a started local host
(HTTP on a socket), a real local Ray head and the real trainer. The example producer
(docs/examples/retrain_on_drift.py) watches a metric file, sees it drift and retrains through the
client; the child run restores the parent's final checkpoint and its counts continue from it."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from shared.client import Client
from shared.curves import load_metrics

pytestmark = [pytest.mark.ray, pytest.mark.timeout(1200)]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "retrain_on_drift.py"


def lines_of(proc: subprocess.Popen) -> queue.Queue:
    q: queue.Queue = queue.Queue()

    def pump() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            q.put(line)
        q.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return q


def next_event(q: queue.Queue, seen: list[str], *, timeout_s: float) -> dict:
    """The next JSON event the producer printed (its other output is kept for the failure message)."""
    while True:
        line = q.get(timeout=timeout_s)
        assert line is not None, "producer exited:\n" + "".join(seen)
        seen.append(line)
        if line.startswith("{"):
            return json.loads(line)


def append(path: Path, values: list[float]) -> None:
    with path.open("a") as fh:
        fh.writelines(json.dumps({"value": v, "source": "serving"}) + "\n" for v in values)


def test_a_drifting_metric_retrains_from_the_parents_checkpoint_and_the_counts_continue(api, tmp_path):
    w, base_url = api
    metric = tmp_path / "served_reward.jsonl"
    with Client(base_url) as client:
        parent = client.submit(
            {"env": "CartPole-v1", "algorithm": "IMPALA", "stop": {"training_iteration": 2}}
        )
        proc = subprocess.Popen(
            [
                sys.executable,
                str(EXAMPLE),
                "--api",
                base_url,
                "--run",
                parent,
                "--metric-file",
                str(metric),
                "--window",
                "3",
                "--tolerance",
                "0.2",
                "--stop",
                '{"training_iteration": 4}',
                "--interval-s",
                "0.5",
                "--train-timeout-s",
                "500",
                "--max-retrains",
                "1",
            ],
            cwd=str(ROOT),
            env={**_env(), "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        q, seen = lines_of(proc), []
        try:
            watching = next_event(q, seen, timeout_s=520)  # after the parent completed
            assert watching["event"] == "watching" and watching["request_id"] == parent
            baseline = watching["baseline"]
            append(metric, [baseline] * 3)  # in line with training: nothing happens
            assert next_event(q, seen, timeout_s=30)["event"] == "ok"
            append(metric, [baseline * 0.5] * 3)  # drifted
            drift = next_event(q, seen, timeout_s=30)
            assert drift["event"] == "drift" and drift["window_mean"] == pytest.approx(baseline * 0.5)
            submitted = next_event(q, seen, timeout_s=30)
            assert submitted["event"] == "retrain_submitted"
            child = submitted["request_id"]
            retrained = next_event(q, seen, timeout_s=520)
            assert retrained["event"] == "retrained" and retrained["request_id"] == child
            assert proc.wait(timeout=60) == 0, "".join(seen)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

        parent_done = client.get(parent)["completion"]
        child_record = client.get(child)
    child_done = retrained["completion"]
    assert parent_done["status"] == "Completed" and parent_done["checkpoint_path"]
    assert child_done["status"] == "Completed", child_done
    # lineage, on the record and the completion message
    assert child_record["parent_request_id"] == parent and child_done["parent_request_id"] == parent
    assert child_record["request"]["restore_from"] == parent_done["checkpoint_path"]
    assert child_done["tags"] == {"retrained_from": parent, "reason": "drift"}
    # the counts continue from the parent's: iterations 3 and 4, timesteps past the parent's
    assert parent_done["iterations"] == 2 and child_done["iterations"] == 4
    assert child_done["timesteps"] > parent_done["timesteps"] > 0
    rows = load_metrics(w.settings.runs_dir / child / "metrics.jsonl")
    assert [r["iteration"] for r in rows] == [3, 4]
    assert rows[0]["timesteps"] > parent_done["timesteps"]


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("RLQ_")}
