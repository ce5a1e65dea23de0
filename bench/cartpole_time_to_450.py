"""Wall seconds of training to mean return 450 on CartPole-v1: rlq preset vs Stable-Baselines3 PPO.

    .venv/bin/python bench/cartpole_time_to_450.py [--algorithms IMPALA,PPO] [--seeds 5] [--limit 600]
        [--skip-sb3] [--config ALGO=JSON ...]

Both sides use the same criterion: the mean return of the last 100 completed episodes >= 450.
rlq runs the real trainer CLI (``python -m trainer.train --run X --env CartPole-v1`` with the
algorithm's CartPole preset, plus ``--config ALGO=JSON`` overrides to compare a variant) in a
subprocess; "train s" is the trainer's own time_total_s (first
``algo.train()`` to the iteration that met the target), "wall s" is the whole process including
Ray start-up. SB3 PPO uses the rl-zoo hyper-parameters (n_envs 8, n_steps 32, batch 256,
gae_lambda 0.8, gamma 0.98, n_epochs 20, ent_coef 0, lr linear 1e-3, clip linear 0.2, 1e5 steps)
in a subprocess too; "train s" is from the start of ``model.learn`` to the target, "wall s"
includes imports and model creation. Needs ``pip install stable-baselines3``.

Each seed runs every algorithm and SB3 one after the other, so each comparison is side by side.
Prints per seed, then per algorithm how many seeds reached 450 (IMPALA target: all, within the
trainer's default 600 s stop) with the median and worst seconds, the per-seed and median PPO / SB3
ratios of training seconds (target <= 1.0x, 1.3x on the way), and the load average (1, 5, 15 min, as ``uptime``) with each line.
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


def run_rlq(algorithm: str, limit: float, seed: int, config: str | None = None) -> dict:
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
            *(["--config", config] if config else []),
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
    if not (out / "summary.json").exists():
        # The trainer refused the run (exit 2 names the bad --config field) or crashed: say why.
        tail = "\n".join((p.stderr or p.stdout).strip().splitlines()[-15:])
        raise SystemExit(
            f"rlq {algorithm} seed {seed}: the trainer exited {p.returncode} without a summary:\n{tail}"
        )
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {
        "reached": summary["stop_reason"] == "reward_reached",
        "train_s": rows[-1]["time_total_s"] if rows else None,
        "timesteps": summary["timesteps"],
        "final_mean": summary["final_reward"],
        "best_mean": summary["best_reward"],
        "metrics": str(out / "metrics.jsonl"),
        "wall_s": wall,
        "exit_code": p.returncode,
    }


def _load() -> str:
    """The 1, 5 and 15 minute load averages, as ``uptime`` prints them."""
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def _median(xs: list[float]) -> float | None:
    xs = sorted(xs)
    if not xs:
        return None
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--algorithms", default="PPO", help="comma-separated rlq algorithms (their CartPole presets)"
    )
    ap.add_argument("--run", default=None, help="one algorithm (same as --algorithms X)")
    ap.add_argument(
        "--limit",
        type=float,
        default=600,
        help="give up after this many training seconds (600: the trainer's default CartPole stop)",
    )
    ap.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 (or --seed for one)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--skip-sb3", action="store_true")
    ap.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="ALGO=JSON",
        help="trainer --config overrides for one algorithm, e.g. PPO='{\"num_epochs\": 10}' (repeatable)",
    )
    ap.add_argument(
        "--sb3-threads",
        type=int,
        default=1,
        help="torch threads for SB3 (0: torch default). The rlq trainer uses 1 for MLPs; "
        "on a busy 2-core machine torch's default 2 threads made SB3 ~40x slower",
    )
    args = ap.parse_args()
    algorithms = (
        [args.run] if args.run else [a.strip().upper() for a in args.algorithms.split(",") if a.strip()]
    )
    seeds = [args.seed] if args.seed is not None else list(range(args.seeds))
    configs = {}
    for item in args.config:
        name, sep, value = item.partition("=")
        if not sep or name.strip().upper() not in algorithms:
            ap.error(f"--config {item!r}: expected ALGO=JSON with ALGO one of {algorithms}")
        json.loads(value)  # fail here, not in the first trainer run
        configs[name.strip().upper()] = value
    print(
        f"machine: {describe_machine()}; load average {_load()}; "
        f"target: mean return of last 100 episodes >= {TARGET:g}; seeds {seeds}"
        + "".join(f"; {a} --config {c}" for a, c in configs.items())
    )
    runs: dict[str, list[dict]] = {a: [] for a in [*algorithms, *([] if args.skip_sb3 else ["SB3"])]}
    for seed in seeds:
        for algorithm in algorithms:
            r = run_rlq(algorithm, args.limit, seed, configs.get(algorithm))
            runs[algorithm].append(r)
            print(
                f"seed {seed} rlq {algorithm:6s} {'preset+config' if algorithm in configs else 'preset'}: reached={r['reached']} train {r['train_s'] or 0:.1f} s, "
                f"wall {r['wall_s']:.1f} s, {r['timesteps']} steps, final mean {r['final_mean'] or 0:.1f} (best {r['best_mean'] or 0:.1f}; curve {r['metrics']}); "
                f"load {_load()}",
                flush=True,
            )
        if not args.skip_sb3:
            r = run_sb3(args.limit, seed, args.sb3_threads)
            runs["SB3"].append(r)
            print(
                f"seed {seed} SB3 PPO (rl-zoo, {args.sb3_threads or 'default'} torch threads): reached={r['reached']} "
                f"train {r['train_s']:.1f} s, wall {r['wall_s']:.1f} s, {r['timesteps']} steps, "
                f"final mean {r['final_mean'] or 0:.1f}; load {_load()}",
                flush=True,
            )
    medians = {}
    for name, rs in runs.items():
        hit = [r for r in rs if r["reached"]]
        medians[name] = (_median([r["train_s"] for r in hit]), _median([r["wall_s"] for r in hit]))
        m_train, m_wall = medians[name]
        worst = max(rs, key=lambda r: (not r["reached"], r["train_s"] or 0)) if rs else None
        print(
            f"{name:6s}: reached 450 in {len(hit)}/{len(rs)} seeds"
            + (
                f"; median train {m_train:.1f} s, wall {m_wall:.1f} s, "
                f"{_median([r['timesteps'] for r in hit]):.0f} steps"
                if hit
                else ""
            )
            + (
                f"; worst: {'train' if worst['reached'] else 'not reached after'} "
                f"{worst['train_s'] or 0:.1f} s, wall {worst['wall_s']:.1f} s"
                if worst
                else ""
            )
        )
    if "PPO" in runs and "SB3" in runs:
        pairs = [
            (a["train_s"] / b["train_s"], a["wall_s"] / b["wall_s"])
            for a, b in zip(runs["PPO"], runs["SB3"], strict=True)
            if a["reached"] and b["reached"]
        ]
        if pairs:
            print(
                "per seed rlq PPO / SB3: train "
                + ", ".join(f"{t:.2f}x" for t, _ in pairs)
                + "; wall "
                + ", ".join(f"{w:.2f}x" for _, w in pairs)
            )
    if "PPO" in medians and "SB3" in medians and medians["PPO"][0] and medians["SB3"][0]:
        print(
            f"ratio rlq PPO / SB3 (medians): train {medians['PPO'][0] / medians['SB3'][0]:.2f}x, "
            f"wall {medians['PPO'][1] / medians['SB3'][1]:.2f}x (target: train <= 1.0x, 1.3x on the way)"
        )
    print(f"load average {_load()} at the end")
    print("BENCH_RESULT " + json.dumps({"runs": runs, "algorithms": algorithms, "seeds": seeds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
