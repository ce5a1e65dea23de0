"""Wall seconds of training to mean return 450 on CartPole-v1: rlq preset vs Stable-Baselines3 PPO.

    .venv/bin/python bench/cartpole_time_to_450.py [--run PPO] [--limit 300] [--skip-sb3]

Both sides use the same criterion: the mean return of the last 100 completed episodes >= 450.
rlq runs the real trainer CLI (``python -m trainer.train --run X --env CartPole-v1`` with the
algorithm's CartPole preset) in a subprocess; "train s" is the trainer's own time_total_s (first
``algo.train()`` to the iteration that met the target), "wall s" is the whole process including
Ray start-up. SB3 PPO uses the rl-zoo hyper-parameters (n_envs 8, n_steps 32, batch 256,
gae_lambda 0.8, gamma 0.98, n_epochs 20, ent_coef 0, lr linear 1e-3, clip linear 0.2, 1e5 steps)
in a subprocess too; "train s" is from the start of ``model.learn`` to the target, "wall s"
includes imports and model creation. Needs ``pip install stable-baselines3``.
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

REPO = Path(__file__).resolve().parent.parent
TARGET = 450.0

SB3_CODE = r"""
import json, sys, time
t_wall = time.time()
import numpy as np
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
target, limit, seed, threads = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
if threads > 0:
    import torch
    torch.set_num_threads(threads)
def linear(v):
    return lambda progress: progress * v
class Stop(BaseCallback):
    def __init__(self):
        super().__init__(); self.t0 = None; self.hit = None
    def _on_training_start(self):
        self.t0 = time.time()
    def _on_step(self):
        buf = self.model.ep_info_buffer
        if len(buf) >= 100 and np.mean([e["r"] for e in buf]) >= target:
            self.hit = (time.time() - self.t0, self.num_timesteps); return False
        return time.time() - self.t0 < limit
env = make_vec_env("CartPole-v1", n_envs=8, seed=seed)
model = PPO("MlpPolicy", env, n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20,
            ent_coef=0.0, learning_rate=linear(0.001), clip_range=linear(0.2), seed=seed, verbose=0)
cb = Stop()
model.learn(total_timesteps=100_000, callback=cb)
mean = float(np.mean([e["r"] for e in model.ep_info_buffer]))
print("SB3_RESULT " + json.dumps({"reached": cb.hit is not None, "train_s": cb.hit[0] if cb.hit else time.time() - cb.t0,
      "timesteps": cb.hit[1] if cb.hit else model.num_timesteps, "final_mean": mean, "wall_s": time.time() - t_wall}))
"""


def run_sb3(limit: float, seed: int, threads: int) -> dict:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    p = subprocess.run(
        [sys.executable, "-c", SB3_CODE, str(TARGET), str(limit), str(seed), str(threads)],
        capture_output=True,
        text=True,
        env=env,
        timeout=limit + 120,
    )
    for line in p.stdout.splitlines():
        if line.startswith("SB3_RESULT "):
            return json.loads(line[len("SB3_RESULT ") :])
    raise RuntimeError("SB3 run failed:\n" + p.stderr[-2000:])


def run_rlq(algorithm: str, limit: float, seed: int) -> dict:
    out = Path(tempfile.mkdtemp(prefix="rlq-bench-cartpole-"))
    t0 = time.time()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainer.train",
            "--run",
            algorithm,
            "--env",
            "CartPole-v1",
            "--stop",
            json.dumps({"episode_reward_mean": TARGET, "time_total_s": limit}),
            "--checkpoint-freq",
            "0",
            "--seed",
            str(seed),
            "--output-dir",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=limit + 300,
    )
    wall = time.time() - t0
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {
        "reached": summary["stop_reason"] == "reward_reached",
        "train_s": rows[-1]["time_total_s"] if rows else None,
        "timesteps": summary["timesteps"],
        "final_mean": summary["final_reward"],
        "wall_s": wall,
        "exit_code": p.returncode,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="PPO", help="rlq algorithm (its CartPole preset is used)")
    ap.add_argument("--limit", type=float, default=300, help="give up after this many training seconds")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-sb3", action="store_true")
    ap.add_argument(
        "--sb3-threads",
        type=int,
        default=1,
        help="torch threads for SB3 (0: torch default). The rlq trainer uses 1 for MLPs; "
        "on a busy 2-core machine torch's default 2 threads made SB3 ~40x slower",
    )
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} CPU cores; target: mean return of last 100 episodes >= {TARGET:g}")
    rlq = run_rlq(args.run, args.limit, args.seed)
    print(
        f"rlq {args.run:6s} preset : reached={rlq['reached']} train {rlq['train_s']:.1f} s, wall {rlq['wall_s']:.1f} s, "
        f"{rlq['timesteps']} steps, final mean {rlq['final_mean']}"
    )
    if args.skip_sb3:
        return 0
    sb3 = run_sb3(args.limit, args.seed, args.sb3_threads)
    print(
        f"SB3 PPO (rl-zoo, {args.sb3_threads or 'default'} torch threads): reached={sb3['reached']} train {sb3['train_s']:.1f} s, wall {sb3['wall_s']:.1f} s, "
        f"{sb3['timesteps']} steps, final mean {sb3['final_mean']:.1f}"
    )
    if rlq["reached"] and sb3["reached"]:
        print(
            f"ratio rlq/SB3: train {rlq['train_s'] / sb3['train_s']:.2f}x, wall {rlq['wall_s'] / sb3['wall_s']:.2f}x "
            f"(target <= 3x)"
        )
    else:
        print("ratio: n/a (a side did not reach the target within the limit)")
    print("BENCH_RESULT " + json.dumps({"rlq": rlq, "sb3": sb3, "algorithm": args.run}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
