"""docs/examples/retrain_on_drift.py: its drift rule and metric reader, and one run of it as a
process against the local host on the compute twin (the real-Ray run, with counts continuing from
the parent's checkpoint, is tests/e2e/test_retrain.py)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from shared.client import Client
from tests.client.conftest import CARTPOLE

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "retrain_on_drift.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("retrain_on_drift", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_drift_is_a_full_window_whose_mean_is_below_the_threshold(example):
    w = example.DriftWatcher(100.0, window=3, tolerance=0.2)
    assert w.threshold == 80.0
    assert w.observe([10.0, 10.0]) is None  # far below, but the window is not full yet
    w = example.DriftWatcher(100.0, window=3, tolerance=0.2)
    assert w.observe([90.0, 85.0, 70.0]) is None  # mean 81.7, above 80
    assert w.observe([60.0]) == pytest.approx((85.0 + 70.0 + 60.0) / 3)
    negative = example.DriftWatcher(-100.0, window=1, tolerance=0.2)  # Pendulum-like rewards
    assert negative.threshold == -120.0
    assert negative.observe([-110.0]) is None and negative.observe([-130.0]) == -130.0


def test_the_reader_returns_only_new_complete_observations(example, tmp_path):
    path = tmp_path / "m.jsonl"
    read = example.follow_values(path)
    assert read() == []  # no file yet
    path.write_text('{"value": 1}\n{"value": true}\nnot json\n{"other": 2}\n{"value": 2.5}\n{"value": 3')
    assert read() == [1.0, 2.5]  # booleans, junk and the unfinished last line are not observations
    with path.open("a") as fh:
        fh.write("}\n")
    assert read() == [3.0]
    assert read() == []


def test_the_example_retrains_a_drifting_run_through_the_client(serve, tmp_path):
    host, _ = serve()
    metric = tmp_path / "served.jsonl"
    with Client(host.base_url) as client:
        parent = client.submit(CARTPOLE)
        baseline = client.wait(parent, timeout_s=30, interval_s=0.2)["final_reward"]
        metric.write_text("".join(json.dumps({"value": baseline * 0.5}) + "\n" for _ in range(3)))
        out = subprocess.run(
            [
                sys.executable,
                str(EXAMPLE),
                "--api",
                host.base_url,
                "--run",
                parent,
                "--metric-file",
                str(metric),
                "--window",
                "3",
                "--interval-s",
                "0.2",
                "--stop",
                '{"training_iteration": 9}',
                "--max-retrains",
                "1",
            ],
            cwd=str(ROOT),
            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        events = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
        assert [e["event"] for e in events] == [
            "watching",
            "drift",
            "retrain_submitted",
            "retrained",
            "watching",
        ]
        child = events[2]["request_id"]
        assert events[3]["completion"]["parent_request_id"] == parent
        assert events[4]["request_id"] == child
        assert client.get(child)["request"]["stop"]["training_iteration"] == 9
