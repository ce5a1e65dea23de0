"""Pong throughput: rlq trainer vs a hand-written loop vs stock RLlib, and sampling per core.

    .venv/bin/python bench/trainer_throughput.py [--seconds 60] [--config '{"...": ...}']

(a) emulator: agent steps/s of a gymnasium vector env of Pong with frameskip 4 and random
    actions in ONE process (per core), as many envs as the preset samples with.
(a') sampling only, per core: one RLlib EnvRunner of the preset (same preprocessing, same
    network, same number of envs) in this process, no learning; (a')/(a) is what each extra
    CPU worker of a cluster adds relative to the bare emulator.
(b) rlq: ``python -m trainer.train --run IMPALA --env PongNoFrameskip-v4`` with the Pong preset
    for ``--seconds`` of training; sampled env steps/s over the iterations after the first
    (warm-up) from metrics.jsonl.
(c) stock RLlib: ``IMPALAConfig()`` defaults with one EnvRunner on the same env and the same
    Atari preprocessing (the trainer's env creator), measured the same way.
(d) hand-written loop, no Ray, in one process on the same cores (best of torch intra-op threads =
    cores and = 1): the preset's env creator
    (same preprocessing and frame size) in a gymnasium vector env of the same number of envs,
    the same RLModule (built from the same config), batched inference every step, and after
    every train batch (the preset's rollout length x envs) the preset's number of V-trace
    learning passes (Adam, grad clip), each in the preset's minibatches (whole rollout
    fragments, as RLlib slices them) -- the work the preset does, without the framework.
Everything runs one after the other on the same cores. Prints (b)/(d) (target >= 80%),
(b)/(c) and (a')/(a).
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


def _algo_config(settings: dict):
    """The AlgorithmConfig the trainer builds for these settings (env registered, not built)."""
    from types import SimpleNamespace

    from trainer import envs, train

    env_config = envs.env_config_for(ENV_ID, settings)
    name = envs.register(ENV_ID)
    plan = SimpleNamespace(algorithm="IMPALA", seed=0)
    return train._build_algo_config(plan, settings, name, env_config), env_config


def sampling_only(settings: dict, seconds: float) -> float:
    """(a'): one EnvRunner of the preset in this process (one core), sampling, no learning."""
    import torch
    from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner

    torch.set_num_threads(1)
    cfg, _ = _algo_config(settings)
    runner = SingleAgentEnvRunner(config=cfg)
    runner.sample()  # warm-up (env resets, first inference)
    steps, t0 = 0, time.time()
    while time.time() - t0 < seconds:
        steps += sum(len(e) for e in runner.sample())
    rate = steps / (time.time() - t0)
    runner.stop()
    return rate


def _vtrace(behaviour_logp, target_logp, rewards, discounts, values, bootstrap):
    """V-trace targets and policy-gradient advantages (Espeholt et al. 2018, rho/c clipped at 1)."""
    import torch

    rhos = torch.exp(target_logp - behaviour_logp)
    clipped = torch.clamp(rhos, max=1.0)
    values_t1 = torch.cat([values[1:], bootstrap[None]], 0)
    deltas = clipped * (rewards + discounts * values_t1 - values)
    acc = torch.zeros_like(bootstrap)
    vs_minus_v = []
    for t in reversed(range(len(deltas))):
        acc = deltas[t] + discounts[t] * clipped[t] * acc
        vs_minus_v.append(acc)
    vs = torch.stack(vs_minus_v[::-1]) + values
    vs_t1 = torch.cat([vs[1:], bootstrap[None]], 0)
    return vs, clipped * (rewards + discounts * vs_t1 - values)


def handwritten(settings: dict, seconds: float, threads: int) -> dict:
    """(d): the preset's work as one plain PyTorch loop, no Ray."""
    import gymnasium as gym
    import numpy as np
    import torch
    from ray.rllib.core.columns import Columns

    from trainer import envs

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg, env_config = _algo_config(settings)
    n = max(1, settings["num_env_runners"]) * settings["num_envs_per_env_runner"]
    horizon = settings["rollout_fragment_length"]
    # The trainer packs whole sample() results into a train batch; same batch size here.
    per_batch = max(1, -(-settings["train_batch_size_per_learner"] // (horizon * n)))
    epochs = settings.get("num_epochs", 1)
    gamma = settings.get("gamma", 0.99)
    venv = gym.vector.SyncVectorEnv([lambda: envs.make_env(env_config) for _ in range(n)])
    module = cfg.get_rl_module_spec(env=venv.envs[0]).build()
    opt = torch.optim.Adam(module.parameters(), lr=settings["lr"])
    obs, _ = venv.reset(seed=0)
    obs = torch.as_tensor(obs)
    done_prev = np.zeros(n, dtype=bool)
    steps = batches = 0
    t_start = t0 = None
    t_begin = time.time()
    while True:
        o_buf, a_buf, lp_buf, r_buf, d_buf = [], [], [], [], []
        for _ in range(horizon * per_batch):
            with torch.no_grad():
                logits = module.forward_exploration({Columns.OBS: obs})[Columns.ACTION_DIST_INPUTS]
                dist = torch.distributions.Categorical(logits=logits)
                act = dist.sample()
            nxt, rew, term, trunc, _ = venv.step(act.numpy())
            o_buf.append(obs)
            a_buf.append(act)
            lp_buf.append(dist.log_prob(act))
            # An env that ended last step was reset by this one (gymnasium's next-step autoreset).
            r_buf.append(torch.as_tensor(np.where(done_prev, 0.0, np.sign(rew)), dtype=torch.float32))
            done = np.logical_or(term, trunc)
            d_buf.append(torch.as_tensor(np.where(done, 0.0, gamma), dtype=torch.float32))
            done_prev = done
            obs = torch.as_tensor(nxt)
        steps += horizon * per_batch * n
        o = torch.cat([torch.stack(o_buf), obs[None]], 0)  # T+1 observations (bootstrap)
        acts, blogp, rews, disc = (
            torch.stack(a_buf),
            torch.stack(lp_buf),
            torch.stack(r_buf),
            torch.stack(d_buf),
        )
        T = acts.shape[0]
        # RLlib's minibatches are whole rollout fragments: here, groups of envs' sequences.
        group = max(1, min(n, settings.get("minibatch_size") or T * n) // T)
        for _ in range(epochs):
            for lo in range(0, n, group):
                k = slice(lo, lo + group)
                width = acts[:, k].shape[1]
                flat = {Columns.OBS: o[:, k].reshape(-1, *o.shape[2:])}
                out = module.forward_train(flat)
                values = module.compute_values(flat, embeddings=out[Columns.EMBEDDINGS]).reshape(T + 1, width)
                dist = torch.distributions.Categorical(
                    logits=out[Columns.ACTION_DIST_INPUTS].reshape(T + 1, width, -1)[:T]
                )
                logp = dist.log_prob(acts[:, k])
                with torch.no_grad():
                    vs, adv = _vtrace(blogp[:, k], logp, rews[:, k], disc[:, k], values[:T], values[T])
                loss = (
                    -(logp * adv).mean()
                    + settings.get("vf_loss_coeff", 0.5) * 0.5 * ((values[:T] - vs) ** 2).mean()
                    - settings.get("entropy_coeff", 0.01) * dist.entropy().mean()
                )
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(module.parameters(), settings.get("grad_clip", 40.0))
                opt.step()
        batches += 1
        now = time.time()
        if t0 is None:  # first batch = warm-up, as for (b)
            t0, t_start, steps = now, steps, 0
            continue
        if now - t_begin >= seconds:
            break
    venv.close()
    return {"steps_per_s": steps / (time.time() - t0), "batches": batches, "envs": n, "warmup_steps": t_start}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60, help="training seconds for (b), (c) and (d)")
    ap.add_argument("--emulator-seconds", type=float, default=10, help="seconds for (a) and (a')")
    ap.add_argument("--config", default="{}", help="--config overrides for the rlq run (and (d))")
    ap.add_argument("--skip-stock", action="store_true", help="leave out (c)")
    ap.add_argument("--only", default="a,a',b,c,d", help="comma-separated subset of a,a',b,c,d to run")
    args = ap.parse_args()
    only = set(args.only.split(","))

    from trainer import config_map, presets

    cpus = os.cpu_count() or 1
    p = presets.preset("IMPALA", ENV_ID, True)
    p.update(config_map.map_config(json.loads(args.config), "IMPALA").settings)
    p.setdefault("num_env_runners", config_map.default_num_env_runners(cpus))
    runners = p["num_env_runners"]
    n_envs = max(1, runners) * p["num_envs_per_env_runner"]
    print(
        f"machine: {cpus} CPU cores, load average {os.getloadavg()[0]:.1f} at start; Pong; preset samples with "
        f"{runners} EnvRunner(s) x {p['num_envs_per_env_runner']} envs = {n_envs} envs, "
        f"{p['dim']}x{p['dim']}x{p['framestack']} frames, batch {p['train_batch_size_per_learner']}, "
        f"{p.get('num_epochs', 1)} pass(es) per batch in minibatches of {p.get('minibatch_size') or 'the batch'}",
        flush=True,
    )
    result: dict = {"cpus": cpus, "settings": p}
    if "a" in only:
        result["emulator_per_core"] = emulator(p["num_envs_per_env_runner"], args.emulator_seconds, "sync")
        print(
            f"(a)  emulator per core, random actions, frameskip 4, {p['num_envs_per_env_runner']} envs: "
            f"{result['emulator_per_core']:,.0f} steps/s",
            flush=True,
        )
    if "a'" in only:
        result["sampling_per_core"] = sampling_only(p, args.emulator_seconds)
        print(
            f"(a') sampling only per core (one preset EnvRunner, inference, no learning): "
            f"{result['sampling_per_core']:,.0f} steps/s",
            flush=True,
        )
    if "b" in only:
        b = rlq(args.seconds, args.config)
        result["rlq"] = b
        print(
            f"(b)  rlq trainer, Pong preset: {b['steps_per_s']:,.0f} sampled env steps/s over "
            f"{b['iterations']} iterations (first skipped)",
            flush=True,
        )
    if "d" in only:
        # The limit is the loop's best: with every core in torch's intra-op pool when the
        # machine is quiet, with one thread when other work oversubscribes the cores.
        tries = []
        for threads in sorted({1, cpus}, reverse=True):
            d = {**handwritten(p, args.seconds, threads=threads), "threads": threads}
            tries.append(d)
            print(
                f"(d)  hand-written loop, no Ray, {threads} torch thread(s): {d['steps_per_s']:,.0f} env steps/s "
                f"over {d['batches']} train batches (first skipped)",
                flush=True,
            )
        result["handwritten"] = max(tries, key=lambda d: d["steps_per_s"])
        result["handwritten_tries"] = tries
    if "c" in only and not args.skip_stock:
        try:
            c = stock(args.seconds)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:  # the other ratios still print
            print(f"(c)  stock RLlib IMPALA failed: {str(exc).strip().splitlines()[-1][:300]}", flush=True)
        else:
            result["stock"] = c
            print(
                f"(c)  stock RLlib IMPALA, 1 EnvRunner, defaults: {c['steps_per_s']:,.0f} env steps/s",
                flush=True,
            )
    b_rate = result.get("rlq", {}).get("steps_per_s")
    if b_rate and "handwritten" in result:
        print(
            f"(b)/(d) = {100 * b_rate / result['handwritten']['steps_per_s']:.0f}% of the hand-written loop (target >= 80%)"
        )
    if b_rate and "stock" in result:
        print(f"(b)/(c) = {b_rate / result['stock']['steps_per_s']:.2f}x stock RLlib IMPALA")
    if "sampling_per_core" in result and "emulator_per_core" in result:
        print(
            f"(a')/(a) = {100 * result['sampling_per_core'] / result['emulator_per_core']:.0f}% "
            "of the bare emulator per core while sampling"
        )
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    print("BENCH_RESULT " + json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
