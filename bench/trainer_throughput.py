"""Pong sampling throughput: emulator limit vs rlq trainer (Pong preset) vs stock RLlib IMPALA.

    .venv/bin/python bench/trainer_throughput.py [--seconds 60] [--config '{"...": ...}']

(a) emulator limit: agent steps/s of a gymnasium vector env of Pong with frameskip 4 and random
    actions, as many envs as the preset samples with (EnvRunners x envs per runner); measured
    both synchronous (one process) and asynchronous (one process per env); the larger counts.
(b) rlq: ``python -m trainer.train --run IMPALA --env PongNoFrameskip-v4`` with the Pong preset
    for ``--seconds`` of training; sampled env steps/s over the iterations after the first
    (warm-up) from metrics.jsonl.
(c) stock RLlib: ``IMPALAConfig()`` defaults with one EnvRunner on the same env and the same
    Atari preprocessing (the trainer's env creator), measured the same way.
Everything runs one after the other on the same cores. Prints (b)/(a) and (b)/(c).
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
sys.path.insert(0, str(REPO))
ENV_ID = "PongNoFrameskip-v4"


def emulator(num_envs: int, seconds: float, mode: str) -> float:
    import ale_py
    import gymnasium as gym

    gym.register_envs(ale_py)
    venv = gym.make_vec(
        "ALE/Pong-v5", num_envs=num_envs, vectorization_mode=mode, frameskip=4, repeat_action_probability=0.0
    )
    venv.reset(seed=0)
    steps, t0 = 0, time.time()
    while time.time() - t0 < seconds:
        venv.step(venv.action_space.sample())
        steps += num_envs
    rate = steps / (time.time() - t0)
    venv.close()
    return rate


def rate_from_rows(rows) -> float:
    rows = rows[1:]  # first iteration = warm-up
    if len(rows) < 2:
        raise RuntimeError("not enough iterations; raise --seconds")
    return (rows[-1]["timesteps"] - rows[0]["timesteps"]) / (
        rows[-1]["time_total_s"] - rows[0]["time_total_s"]
    )


def rlq(seconds: float, config: str) -> dict:
    out = Path(tempfile.mkdtemp(prefix="rlq-bench-pong-"))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainer.train",
            "--run",
            "IMPALA",
            "--env",
            ENV_ID,
            "--config",
            config,
            "--stop",
            json.dumps({"time_total_s": seconds}),
            "--checkpoint-freq",
            "0",
            "--output-dir",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=seconds + 300,
    )
    if p.returncode != 0:
        raise RuntimeError("trainer failed:\n" + p.stderr[-3000:])
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    settings = json.loads((out / "checkpoints" / "final" / "rlq_meta.json").read_text())["settings"]
    return {
        "steps_per_s": rate_from_rows(rows),
        "iterations": len(rows),
        "settings": settings,
        "reward": rows[-1]["episode_reward_mean"],
    }


STOCK_CODE = r"""
import json, sys, time
sys.path.insert(0, sys.argv[2])
import ray
from ray.rllib.algorithms.impala import IMPALAConfig
from trainer import envs
seconds = float(sys.argv[1])
ray.init(include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": sys.argv[2]}})
name = envs.register("PongNoFrameskip-v4")
cfg = IMPALAConfig().environment(name, env_config=envs.env_config_for("PongNoFrameskip-v4", {})).env_runners(num_env_runners=1)
algo = cfg.build_algo()
rows, t0 = [], time.time()
while time.time() - t0 < seconds:
    r = algo.train()
    rows.append({"timesteps": r["num_env_steps_sampled_lifetime"], "time_total_s": time.time() - t0})
algo.stop(); ray.shutdown()
print("STOCK_ROWS " + json.dumps(rows))
"""


def stock(seconds: float) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    p = subprocess.run(
        [sys.executable, "-c", STOCK_CODE, str(seconds), str(REPO)],
        capture_output=True,
        text=True,
        env=env,
        timeout=seconds + 300,
    )
    for line in p.stdout.splitlines():
        if line.startswith("STOCK_ROWS "):
            rows = [r for r in json.loads(line[len("STOCK_ROWS ") :]) if r["timesteps"] > 0]
            return {"steps_per_s": rate_from_rows(rows), "iterations": len(rows)}
    raise RuntimeError("stock IMPALA failed:\n" + p.stderr[-3000:])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60, help="training seconds for (b) and (c)")
    ap.add_argument("--emulator-seconds", type=float, default=10)
    ap.add_argument("--config", default="{}", help="--config overrides for the rlq run")
    ap.add_argument("--skip-stock", action="store_true")
    args = ap.parse_args()

    from trainer import config_map, presets

    cpus = os.cpu_count() or 1
    p = presets.preset("IMPALA", ENV_ID, True)
    p.update(config_map.map_config(json.loads(args.config), "IMPALA").settings)
    runners = p.get("num_env_runners", config_map.default_num_env_runners(cpus))
    n_envs = max(1, runners) * p["num_envs_per_env_runner"]
    print(
        f"machine: {cpus} CPU cores; Pong; preset samples with {runners} EnvRunner(s) x "
        f"{p['num_envs_per_env_runner']} envs = {n_envs} envs",
        flush=True,
    )
    a_sync = emulator(n_envs, args.emulator_seconds, "sync")
    a_async = emulator(n_envs, args.emulator_seconds, "async")
    a = max(a_sync, a_async)
    print(
        f"(a) emulator, random actions, frameskip 4: sync {a_sync:,.0f} steps/s, async {a_async:,.0f} steps/s",
        flush=True,
    )
    b = rlq(args.seconds, args.config)
    print(
        f"(b) rlq trainer, Pong preset: {b['steps_per_s']:,.0f} sampled env steps/s over {b['iterations']} "
        f"iterations (first skipped)",
        flush=True,
    )
    result = {"cpus": cpus, "emulator_sync": a_sync, "emulator_async": a_async, "rlq": b}
    if not args.skip_stock:
        c = stock(args.seconds)
        print(
            f"(c) stock RLlib IMPALA, 1 EnvRunner, defaults: {c['steps_per_s']:,.0f} env steps/s", flush=True
        )
        result["stock"] = c
        print(f"(b)/(c) = {b['steps_per_s'] / c['steps_per_s']:.2f}x (target >= 3x)")
    print(f"(b)/(a) = {100 * b['steps_per_s'] / a:.0f}% of the emulator limit (target >= 35%)")
    print("BENCH_RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
