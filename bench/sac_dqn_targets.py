"""SAC and DQN presets to their targets: SAC on Pendulum-v1 to a mean return of -250, DQN on
CartPole-v1 to 450 (the mean of the last 100 episodes, the trainer's own stop criterion).

    .venv/bin/python bench/sac_dqn_targets.py [--only SAC|DQN] [--limit 720] [--seed 0]

Each runs the real trainer CLI (``python -m trainer.train --run SAC --env Pendulum-v1 --stop ...``
with the algorithm's preset, trainer/presets.py) in a subprocess, one after the other, stopped at
the target or after ``--limit`` seconds of training. Prints per run: reached or not, env steps, the
trainer's training seconds (time_total_s), the wall seconds of the whole process (Ray start-up
included), the last mean return, the machine (CPU model, cores) and the load average before and
after (1, 5, 15 min, as ``uptime``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import describe as describe_machine  # bench/machine.py: the script's own folder is on sys.path

REPO = Path(__file__).resolve().parent.parent
TARGETS = {"SAC": ("Pendulum-v1", -250.0), "DQN": ("CartPole-v1", 450.0)}


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run(algorithm: str, limit: float, seed: int) -> dict:
    env_id, target = TARGETS[algorithm]
    stop = {"episode_reward_mean": target, "time_total_s": limit}
    with tempfile.TemporaryDirectory(prefix=f"rlq-bench-{algorithm.lower()}-") as out:
        cmd = [sys.executable, "-m", "trainer.train", "--run", algorithm, "--env", env_id]
        cmd += ["--stop", json.dumps(stop), "--seed", str(seed), "--checkpoint-freq", "0"]
        cmd += ["--checkpoint-every-s", "0", "--output-dir", out]
        load_before, t0 = load(), time.time()
        p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=limit + 300)
        wall = time.time() - t0
    summary: dict = {}
    last: dict = {}
    for line in p.stdout.splitlines() + p.stderr.splitlines():
        if line.startswith("RLQ_SUMMARY "):
            summary = json.loads(line.removeprefix("RLQ_SUMMARY "))
        elif line.startswith("RLQ_METRICS "):
            last = json.loads(line.removeprefix("RLQ_METRICS "))
    if p.returncode != 0 or not summary:
        sys.stderr.write(p.stderr[-4000:])
    return {
        "algorithm": algorithm,
        "env": env_id,
        "target": target,
        "reached": summary.get("stop_reason") == "reward_reached",
        "steps": last.get("timesteps"),
        "train_s": last.get("time_total_s"),
        "wall_s": round(wall, 1),
        "reward": last.get("episode_reward_mean"),
        "rc": p.returncode,
        "load_before": load_before,
        "load_after": load(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=sorted(TARGETS), help="run one algorithm only")
    ap.add_argument("--limit", type=float, default=720.0, help="training seconds before giving up")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(f"machine: {describe_machine()}", flush=True)
    for algorithm in [args.only] if args.only else list(TARGETS):
        r = run(algorithm, args.limit, args.seed)
        reward = "n/a" if r["reward"] is None else f"{r['reward']:.1f}"
        print(
            f"{r['algorithm']} {r['env']} -> {r['target']:g}: "
            f"{'reached' if r['reached'] else 'NOT reached'} in {r['steps']} steps, "
            f"{r['train_s']} s training, {r['wall_s']} s wall, mean return {reward}; "
            f"load {r['load_before']} -> {r['load_after']}",
            flush=True,
        )
        print("RESULT " + json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
