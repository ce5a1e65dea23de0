"""Enqueue to first iteration on the local Ray head: where the seconds go after ``rlq submit``.

    .venv/bin/python bench/enqueue_to_first.py [--run IMPALA] [--env CartPole-v1] [--repeat 2]

Starts ``rlq serve --port 0`` on a fresh data dir (its private local Ray head; start-up not
counted), then per repeat submits a short run with the real ``rlq submit`` and times, from the
moment ``rlq submit`` is started:

* ``submit``: the ``rlq submit`` process returned the request id (CLI start, validation, enqueue);
* ``intake``: the function host logged the intake invocation as completed (the Ray job is
  submitted: trainer package staged, runtime env uploaded);
* ``job driver``: the Ray job's driver log appeared (Ray started the entrypoint process);
* the trainer's own start-up phases from its ``start-up:`` log line (``before_ray_init_s``:
  Python start to arguments validated is *not* in it; ``ray_init_s``; ``algorithm_build_s``:
  torch/RLlib imports, config, EnvRunner/Learner actors; ``first_iteration_s``);
* ``first metrics``: the first row of ``<data-dir>/runs/<id>/metrics.jsonl`` (the trainer writes
  it just before printing the first ``RLQ_METRICS`` line).

Target: first metrics <= 10 s after ``rlq submit``. Times are detected by polling every 0.05 s.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RLQ = str(Path(sys.executable).with_name("rlq"))
STARTUP = re.compile(r"rlq-trainer: start-up: (.*)$", re.M)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(data_dir: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RAY_ADDRESS", "RLQ_RAY_ADDRESS", "MLFLOW_TRACKING_URI")
    }
    env.update(
        RLQ_DATA_DIR=str(data_dir),
        RLQ_BACKEND="ray",
        RLQ_RAY_DASHBOARD_PORT=str(_free_port()),
        PYTHONUNBUFFERED="1",
    )
    return env


def _wait_for(pred, timeout: float, what: str):
    t_end = time.time() + timeout
    while time.time() < t_end:
        got = pred()
        if got:
            return got
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")


def _driver_logs(data_dir: Path) -> list[str]:
    # The local head's temp dir is derived from the data dir (shared/adapters/ray_local.py).
    digest = hashlib.sha256(str(data_dir).encode("utf-8")).hexdigest()[:12]
    return glob.glob(f"/tmp/rlq-ray-{digest}/session_*/logs/job-driver-*.log")


def one_run(data_dir: Path, env: dict[str, str], serve_log: Path, args) -> dict:
    # Iterations, not seconds: IMPALA's warm-up iterations (no sample yet) are not reported, and
    # a short time limit can end a run during them with no metrics row at all.
    stop = json.dumps({"training_iteration": args.iterations, "time_total_s": 300})
    intake_seen = serve_log.read_text().count("fn=intake outcome=completed")
    ray_logs = _driver_logs(data_dir)
    t0 = time.time()
    p = subprocess.run(
        [RLQ, "submit", "--run", args.run, "--env", args.env, "--stop", stop],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    if p.returncode != 0:
        raise RuntimeError("rlq submit failed: " + p.stderr[-1000:])
    marks = {"submit": time.time() - t0}
    rid = p.stdout.strip().splitlines()[-1]
    # The run's output dir is named by the request id in its canonical (hex) form.
    metrics = data_dir / "runs" / rid.replace("-", "") / "metrics.jsonl"
    driver_log: list[str] = []

    def step():
        now = time.time() - t0
        if "intake" not in marks and serve_log.read_text().count("fn=intake outcome=completed") > intake_seen:
            marks["intake"] = now
        if "job driver" not in marks:
            new = [f for f in _driver_logs(data_dir) if f not in ray_logs]
            if new:
                marks["job driver"] = now
                driver_log.extend(new)
        if metrics.exists() and metrics.read_text().strip():
            marks["first metrics"] = now
            return True
        return False

    _wait_for(step, args.timeout, f"the first metrics row of {rid}")
    phases = {}
    if driver_log:

        def startup():
            m = STARTUP.search(Path(driver_log[0]).read_text(errors="replace"))
            return m.group(1) if m else None

        line = _wait_for(startup, 30, "the trainer's start-up line")
        phases = {k: float(v) for k, v in (kv.rsplit(" ", 1) for kv in line.split(", "))}
    # Let the run finish (its summary.json written) before the next one or the teardown.
    _wait_for(lambda: (metrics.parent / "summary.json").exists(), args.timeout, f"run {rid} to finish")
    return {"request_id": rid, "marks_s": marks, "trainer_phases_s": phases}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="IMPALA")
    ap.add_argument("--env", default="CartPole-v1")
    ap.add_argument("--repeat", type=int, default=2, help="runs one after the other on the same head")
    ap.add_argument("--iterations", type=int, default=2, help="each run's training_iteration stop")
    ap.add_argument("--timeout", type=float, default=300)
    args = ap.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="rlq-bench-e2f-"))
    env = _env(data_dir)
    serve_log = data_dir / "serve.log"
    print(f"machine: {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}; data dir {data_dir}")
    t = time.time()
    with serve_log.open("w") as log:
        serve = subprocess.Popen(
            [RLQ, "serve", "--port", "0"], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO
        )
    try:
        _wait_for(lambda: "dashboard:" in serve_log.read_text(), args.timeout, "rlq serve to be ready")
        print(f"rlq serve ready (local Ray head up) in {time.time() - t:.1f} s (not counted)", flush=True)
        results = []
        for i in range(args.repeat):
            r = one_run(data_dir, env, serve_log, args)
            results.append(r)
            m, ph = r["marks_s"], r["trainer_phases_s"]
            print(
                f"run {i + 1}: submit {m['submit']:.1f} s | intake done {m.get('intake', float('nan')):.1f} s | "
                f"job driver log {m.get('job driver', float('nan')):.1f} s | first metrics {m['first metrics']:.1f} s"
                " (target <= 10 s)",
                flush=True,
            )
            if ph:
                inside = ph.get("first_metrics_s", 0.0)
                print(
                    "       inside the trainer: "
                    + ", ".join(f"{k} {v:.1f}" for k, v in ph.items())
                    + f"; before the trainer's clock: {m['first metrics'] - inside:.1f} s "
                    "(queue, job submit, runtime env, Python start and trainer imports)",
                    flush=True,
                )
        print("BENCH_RESULT " + json.dumps(results))
    finally:
        serve.send_signal(signal.SIGTERM)
        try:
            serve.wait(timeout=120)
        except subprocess.TimeoutExpired:
            serve.kill()
        shutil.rmtree(data_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
