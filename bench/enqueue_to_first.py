"""Enqueue to first iteration on the local Ray head: where the seconds go after ``rlq submit``.

    .venv/bin/python bench/enqueue_to_first.py [--run IMPALA] [--env CartPole-v1] [--repeat 2] \
        [--config '{}' --config '{"num_learners": 0}']

Starts ``rlq serve --port 0`` on a fresh data dir (its private local Ray head; start-up not
counted), then per repeat submits a short run with the real ``rlq submit`` (once per ``--config``
variant, the variants alternating so each sees the same load) and times, from the moment
``rlq submit`` is started:

* ``submit``: the ``rlq submit`` process returned the request id (CLI start, validation, enqueue);
* ``intake``: the function host logged the intake invocation as completed (the Ray job is
  submitted: trainer package staged, runtime env uploaded);
* ``job driver``: the Ray job's driver log appeared (Ray started the entrypoint process);
* the trainer's own start-up phases from its ``start-up:`` log line (``before_ray_init_s``:
  Python start to arguments validated is *not* in it; ``ray_init_s``; ``imports_s``: torch and
  RLlib in the driver; ``algorithm_build_s``: config, EnvRunner/Learner actors started and
  ready; ``first_iteration_s``);
* ``first metrics``: the first row of ``<data-dir>/runs/<id>/metrics.jsonl`` (the trainer writes
  it just before printing the first ``RLQ_METRICS`` line);
* the CPU seconds each process (``rlq submit``, the host's intake, the job supervisor, the
  driver, each actor by its class, Ray's daemons) spent until then: the work start-up costs
  whatever the load, where wall time on a busy machine is that work stretched by contention.

Target: first metrics <= 10 s after ``rlq submit``. Times are detected by polling every 0.05 s.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shared.localhost.ray_head import free_port, head_pids, head_temp_dir, ray_psutil

REPO = Path(__file__).resolve().parent.parent
RLQ = str(Path(sys.executable).with_name("rlq"))
STARTUP = re.compile(r"rlq-trainer: start-up: (.*)$", re.M)


def _env(data_dir: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RAY_ADDRESS", "RLQ_RAY_ADDRESS", "MLFLOW_TRACKING_URI")
    }
    env.update(
        RLQ_DATA_DIR=str(data_dir),
        RLQ_BACKEND="ray",
        RLQ_RAY_DASHBOARD_PORT=str(free_port()),
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
    return glob.glob(f"{head_temp_dir(data_dir)}/session_*/logs/job-driver-*.log")


def _title(proc) -> str:
    """What a head process is: the actor class Ray names it by, the trainer driver, or a daemon."""
    cmd = proc.cmdline()
    if not cmd:
        return "?"
    if cmd[0].startswith("ray::"):
        return cmd[0][len("ray::") :].split(".")[0]
    if "trainer.train" in cmd:
        return "trainer driver"
    return "Ray daemons"


def _cpu_seconds(pids: list[int]) -> dict[int, tuple[str, float]]:
    """pid -> (what it is, user + system CPU seconds so far) for the processes still alive."""
    psutil = ray_psutil()
    out = {}
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            t = proc.cpu_times()
            out[pid] = (_title(proc), t.user + t.system)
        except psutil.Error:
            continue
    return out


def _head_cpu(data_dir: Path, serve_pid: int) -> dict[int, tuple[str, float]]:
    got = _cpu_seconds(head_pids(data_dir))
    got.update({pid: ("rlq serve (intake)", cpu) for pid, (_t, cpu) in _cpu_seconds([serve_pid]).items()})
    return got


def _cpu_used(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds per kind of process between two snapshots (a new process counts from 0)."""
    used: dict[str, float] = {}
    for pid, (what, cpu) in after.items():
        delta = cpu - (before[pid][1] if pid in before else 0.0)
        if delta > 0.005:
            used[what] = round(used.get(what, 0.0) + delta, 2)
    return dict(sorted(used.items(), key=lambda kv: -kv[1]))


def one_run(
    data_dir: Path, env: dict[str, str], serve_log: Path, args, config: str = "{}", serve_pid: int = 0
) -> dict:
    # Iterations, not seconds: IMPALA's warm-up iterations (no sample yet) are not reported, and
    # a short time limit can end a run during them with no metrics row at all.
    stop = json.dumps({"training_iteration": args.iterations, "time_total_s": 300})
    intake_seen = serve_log.read_text().count("fn=intake outcome=completed")
    ray_logs = _driver_logs(data_dir)
    cpu_before = _head_cpu(data_dir, serve_pid)
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    p = subprocess.run(
        [RLQ, "submit", "--run", args.run, "--env", args.env, "--stop", stop, "--config", config],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    if p.returncode != 0:
        raise RuntimeError("rlq submit failed: " + p.stderr[-1000:])
    marks = {"submit": time.time() - t0}
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    submit_cpu = children.ru_utime + children.ru_stime - children_before.ru_utime - children_before.ru_stime
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
    # CPU seconds each process spent up to the first metrics row: what the start-up costs
    # whatever the load (on a busy machine wall time is this work stretched by contention).
    cpu = {"rlq submit": round(submit_cpu, 2), **_cpu_used(cpu_before, _head_cpu(data_dir, serve_pid))}
    phases = {}
    if driver_log:

        def startup():
            m = STARTUP.search(Path(driver_log[0]).read_text(errors="replace"))
            return m.group(1) if m else None

        line = _wait_for(startup, 30, "the trainer's start-up line")
        phases = {k: float(v) for k, v in (kv.rsplit(" ", 1) for kv in line.split(", "))}
    # Let the run finish (its summary.json written) before the next one or the teardown.
    _wait_for(lambda: (metrics.parent / "summary.json").exists(), args.timeout, f"run {rid} to finish")
    return {"request_id": rid, "config": config, "marks_s": marks, "trainer_phases_s": phases, "cpu_s": cpu}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="IMPALA")
    ap.add_argument("--env", default="CartPole-v1")
    ap.add_argument("--repeat", type=int, default=2, help="runs one after the other on the same head")
    ap.add_argument("--iterations", type=int, default=2, help="each run's training_iteration stop")
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument(
        "--config",
        action="append",
        help="JSON of RLlib overrides for a variant (repeatable; '{}' is the preset); variants alternate",
    )
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
        configs = args.config or ["{}"]
        for i in range(args.repeat):
            for config in configs:  # variants alternate, so each sees the same load over time
                load = os.getloadavg()[0]
                r = one_run(data_dir, env, serve_log, args, config, serve.pid)
                r["load_average"] = load
                results.append(r)
                m, ph = r["marks_s"], r["trainer_phases_s"]
                label = "" if config == "{}" else f" --config {config}"
                print(
                    f"run {i + 1}{label} (load average {load:.1f}): submit {m['submit']:.1f} s | "
                    f"intake done {m.get('intake', float('nan')):.1f} s | job driver log "
                    f"{m.get('job driver', float('nan')):.1f} s | first metrics {m['first metrics']:.1f} s"
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
                cpu = r["cpu_s"]
                print(
                    f"       CPU seconds to the first metrics row, {sum(cpu.values()):.1f} in all: "
                    + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items()),
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
