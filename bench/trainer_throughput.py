"""Pong throughput: rlq trainer vs a hand-written loop vs stock RLlib, and sampling per core.

    .venv/bin/python bench/trainer_throughput.py [--seconds 60] [--config '{"...": ...}']
    .venv/bin/python bench/trainer_throughput.py --only b,d --seconds 75 --repeat 2   # (b)/(d), b d d b
    .venv/bin/python bench/trainer_throughput.py --runners 1,2,4,8,15                # sampling scaling

(a) emulator: agent steps/s of a gymnasium vector env of Pong with frameskip 4 and random
    actions in ONE process (per core), as many envs as the preset samples with.
(a') sampling only, per core: one RLlib EnvRunner of the preset (same preprocessing, same
    network, same number of envs) in this process, no learning; (a')/(a) is what each extra
    CPU worker of a cluster adds relative to the bare emulator. The EnvRunner makes its envs
    as the trainer does (ale_py's vector env) and, alternating, as RLlib's default "sync" mode
    does (the preset's one-env creator, stepped env after env): steps per CPU second of both.
(b) rlq: ``python -m trainer.train --run IMPALA --env PongNoFrameskip-v4`` with the Pong preset
    for ``--seconds`` of training; sampled env steps/s over the iterations after the first
    (warm-up) from metrics.jsonl. The trainer runs behind a few lines (``B_BOOT``) that count
    its optimizer steps and time RLlib's learner thread; the CPU seconds of its process tree
    are read at each iteration.
(c) stock RLlib: ``IMPALAConfig()`` defaults with one EnvRunner on the same env and the same
    Atari preprocessing (the trainer's env creator), measured the same way.
(d) hand-written, no Ray, the preset's work laid out as the preset lays it out: a sampler
    process per EnvRunner (the preset's vector env, as the trainer's EnvRunner makes it, the
    same RLModule, batched inference every step, one torch thread) overlapped with the learner
    in this process through a queue as bounded as IMPALA's learner queue; the learner trains
    on RLlib's rows (each fragment plus its bootstrap step) in RLlib's cyclic minibatches
    (``minibatch_plan``), V-trace, Adam (fused, as the trainer's), grad clip. The optimizer steps per batch of (b) and
    (d) are counted and asserted equal; where each side's seconds per batch go is printed.
(n) the preset's network on one torch thread: a forward pass at one EnvRunner's frames and a
    forward + backward pass at one minibatch, RLlib's ``Conv2d`` against the full-frame layer as
    the matrix product it is (``trainer/networks.py``), same weights, outputs asserted equal.
(o) Adam on the preset's module, one torch thread: torch's default implementation against
    ``fused=True`` (``trainer/learners.py``), same start and gradients, parameters asserted equal.
(s) with ``--runners``: sampling only with n EnvRunner actors for each n (scaling vs linear).
(b) and (d) alternate (``--repeat``) on the same cores. Prints (b)/(d) (target >= 80%),
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


def preset_envs(settings: dict, seconds: float) -> dict:
    """(a) continued: the preset's envs with its preprocessing, random actions, no inference, in
    this process: the one-env creator's envs stepped one after another (RLlib's "sync" mode)
    against ``make_vector_env`` (the trainer's), alternating; env steps per CPU second."""
    import gymnasium as gym
    import numpy as np

    from trainer import envs

    env_config = envs.env_config_for(ENV_ID, settings)
    n = settings["num_envs_per_env_runner"]
    makers = {
        "sync": lambda: gym.vector.SyncVectorEnv([lambda: envs.make_env(env_config) for _ in range(n)]),
        "vector": lambda: envs.make_vector_env({**env_config, "num_envs": n}),
    }
    rng = np.random.default_rng(0)
    rates: dict[str, list[float]] = {}
    for name in ("vector", "sync", "sync", "vector"):
        venv = makers[name]()
        venv.reset(seed=0)
        steps, t0, c0 = 0, time.time(), time.process_time()
        while time.time() - t0 < seconds / 2:
            venv.step(rng.integers(0, venv.single_action_space.n, size=n))
            steps += n
        rates.setdefault(name, []).append(steps / (time.process_time() - c0))
        venv.close()
    return {name: sum(r) / len(r) for name, r in rates.items()}


def rate_from_rows(rows) -> float:
    rows = rows[1:]  # first iteration = warm-up
    if len(rows) < 2:
        raise RuntimeError("not enough iterations; raise --seconds")
    return (rows[-1]["timesteps"] - rows[0]["timesteps"]) / (
        rows[-1]["time_total_s"] - rows[0]["time_total_s"]
    )


# (b) runs the trainer's own entry point (``python -m trainer.train``) behind a few lines that
# count, in the driver (the preset's Learner runs there), the optimizer steps (torch's global
# step hook) and, in RLlib's IMPALA learner thread, the batches it updates on, their env steps
# and the seconds it waits for them against the seconds it updates.
B_BOOT = r"""
import atexit, json, os, runpy, sys, time
from torch.optim.optimizer import register_optimizer_step_post_hook
from ray.rllib.algorithms.impala import impala_learner
stats = {"optimizer_steps": 0, "updates": 0, "batch_env_steps": 0, "wait_s": 0.0, "update_s": 0.0}
def _count(*_):
    stats["optimizer_steps"] += 1
register_optimizer_step_post_hook(_count)
_step = impala_learner._LearnerThread.step
def step(self):
    if not hasattr(self, "_bench_get"):
        self._bench_get = self._in_queue.get
        def timed_get(*a, **k):
            t = time.perf_counter()
            item = self._bench_get(*a, **k)
            self._bench_wait = time.perf_counter() - t
            if isinstance(item, tuple):
                if stats["updates"]:  # the wait for the first batch is start-up
                    stats["wait_s"] += self._bench_wait
                stats["updates"] += 1
                stats["batch_env_steps"] += item[0].env_steps()
            return item
        self._in_queue.get = timed_get
    t = time.perf_counter()
    ok = _step(self)
    stats["update_s"] += time.perf_counter() - t - self._bench_wait
    return ok
impala_learner._LearnerThread.step = step
def _dump():
    with open(os.environ["RLQ_BENCH_LEARNER_STATS"], "w") as f:
        json.dump(stats, f)
atexit.register(_dump)
sys.argv = ["trainer.train", *sys.argv[1:]]
runpy.run_module("trainer.train", run_name="__main__", alter_sys=True)
"""


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of a process and all its descendants alive now: on a shared
    machine the figure that does not depend on the share of the cores the run got."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def rlq(seconds: float, config: str) -> dict:
    out = Path(tempfile.mkdtemp(prefix="rlq-bench-pong-"))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env["RLQ_BENCH_LEARNER_STATS"] = str(out / "learner_stats.json")
    cmd = [
        sys.executable,
        "-c",
        B_BOOT,
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
    ]
    # The CPU seconds of the trainer and every process it started (Ray's too), read as each
    # iteration's metrics line arrives.
    marks = []
    with (
        (out / "stderr.log").open("w") as err,
        subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=err, text=True, env=env) as proc,
    ):
        deadline = time.time() + seconds + 300
        for line in proc.stdout:
            if line.startswith("RLQ_METRICS "):
                marks.append(tree_cpu_s(proc.pid))
            if time.time() > deadline:
                proc.kill()
        proc.wait()
    if proc.returncode != 0:
        raise RuntimeError("trainer failed:\n" + (out / "stderr.log").read_text()[-3000:])
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    settings = json.loads((out / "checkpoints" / "final" / "rlq_meta.json").read_text())["settings"]
    learner = json.loads((out / "learner_stats.json").read_text())
    cpu = None
    if len(marks) == len(rows) >= 3:  # same window as the rate: after the first iteration
        cpu = (marks[-1] - marks[1]) / (rows[-1]["timesteps"] - rows[1]["timesteps"])
    return {
        "steps_per_s": rate_from_rows(rows),
        "iterations": len(rows),
        "env_steps_sampled": rows[-1]["timesteps"],
        "cpu_s_per_env_step": cpu,
        "settings": settings,
        "reward": rows[-1]["episode_reward_mean"],
        "learner": learner,
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

    from trainer import envs

    env_config = envs.env_config_for(ENV_ID, settings)
    name = envs.register(ENV_ID)
    plan = SimpleNamespace(algorithm="IMPALA", seed=0, atari=True, discrete_actions=True)
    return _trainer_algo_config()(plan, settings, name, env_config), env_config


def _from_probe(settings: dict, build):
    """``build(cfg, probe)`` on the trainer's AlgorithmConfig for the preset and one env of its
    creator (for the spaces), the env closed again; returns what it built and the env_config."""
    from trainer import envs

    cfg, env_config = _algo_config(settings)
    probe = envs.make_env(env_config)
    try:
        return build(cfg, probe), env_config
    finally:
        probe.close()


def _preset_module(settings: dict):
    """The preset's RLModule as the trainer builds it, and the env_config it came from."""
    return _from_probe(settings, lambda cfg, probe: cfg.get_rl_module_spec(env=probe).build())


def _trainer_algo_config():
    """The trainer's own AlgorithmConfig builder (``trainer.configure.algo_config``; before the
    trainer's split into modules, ``trainer.train._build_algo_config``)."""
    import importlib

    for module, name in (("trainer.configure", "algo_config"), ("trainer.train", "_build_algo_config")):
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    raise RuntimeError("the trainer has no AlgorithmConfig builder (trainer.configure.algo_config)")


def network(settings: dict, reps: int = 40) -> dict:
    """(n): milliseconds per forward pass (one EnvRunner's envs, no grad) and per forward +
    backward pass (one minibatch), RLlib's own module against the trainer's, the same weights,
    interleaved so that a drifting load hits both alike; all three in float32, and the trainer's
    forward + backward again with its Learner's encoder in bfloat16 (``learner_precision``) where
    the CPU computes it natively."""
    import copy

    import torch
    from torch import nn

    from trainer import networks

    torch.set_num_threads(1)
    fast, _ = _preset_module(settings)
    fast._train_bf16 = False  # float32 here whatever the settings say; bf16 is its own row
    half = copy.deepcopy(fast)
    half._train_bf16 = True
    plain = copy.deepcopy(fast)
    for layer in plain.modules():  # back to RLlib's Conv2d, the same parameters
        if isinstance(layer, networks.FullFrameConv2d):
            layer.__class__ = nn.Conv2d
    dim, stack = settings["dim"], settings["framestack"]
    torch.manual_seed(0)
    infer = torch.rand(settings["num_envs_per_env_runner"], dim, dim, stack) * 2 - 1
    train = torch.rand(settings.get("minibatch_size") or 128, dim, dim, stack) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(
            fast.forward_inference({"obs": infer})["action_dist_inputs"],
            plain.forward_inference({"obs": infer})["action_dist_inputs"],
            rtol=1e-4,
            atol=1e-5,
        )

    def forward(module) -> None:
        with torch.no_grad():
            module.forward_exploration({"obs": infer})

    def forward_backward(module) -> None:
        module.zero_grad(set_to_none=True)
        out = module.forward_train({"obs": train})  # as the Learner: the values from the same embeddings
        values = module.compute_values({"obs": train}, embeddings=out["embeddings"])
        (out["action_dist_inputs"].sum() + values.sum()).backward()

    native_bf16 = networks.native_bf16()
    ms: dict[str, list[float]] = {}
    for _ in range(reps):
        for name, module in (("rllib", plain), ("rlq", fast), ("rlq_bf16", half)):
            for kind, fn in (("forward", forward), ("forward_backward", forward_backward)):
                if name == "rlq_bf16" and (kind == "forward" or not native_bf16):
                    continue  # sampling is float32 everywhere; emulated bfloat16 is slower
                t = time.perf_counter()
                fn(module)
                ms.setdefault(f"{name}_{kind}", []).append(1000 * (time.perf_counter() - t))
    return {k: sorted(v)[len(v) // 2] for k, v in ms.items()}  # medians


def optimizer(settings: dict, reps: int = 200) -> dict:
    """(o): milliseconds per Adam step on the preset's module (its parameters, gradients of the
    same shapes), torch's default implementation against ``fused=True`` (``trainer/learners.py``),
    interleaved; after ``reps`` steps from the same start both must hold the same parameters."""
    import copy

    import torch

    torch.set_num_threads(1)
    module, _ = _preset_module(settings)
    params = {"default": list(module.parameters()), "fused": list(copy.deepcopy(module).parameters())}
    torch.manual_seed(0)
    grads = [torch.randn_like(p) for p in params["default"]]
    opts = {
        "default": torch.optim.Adam(params["default"], lr=_first_value(settings["lr"])),
        "fused": torch.optim.Adam(params["fused"], lr=_first_value(settings["lr"]), fused=True),
    }
    ms: dict[str, list[float]] = {}
    for _ in range(reps):
        for name, opt in opts.items():
            for p, g in zip(params[name], grads, strict=True):
                p.grad = g.clone()
            t = time.perf_counter()
            opt.step()
            ms.setdefault(name, []).append(1000 * (time.perf_counter() - t))
    for a, b in zip(params["default"], params["fused"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    out = {k: sorted(v)[len(v) // 2] for k, v in ms.items()}  # medians
    out["parameters"] = sum(p.numel() for p in params["default"])
    out["tensors"] = len(params["default"])
    return out


def gradient_step(settings: dict, reps: int = 100) -> dict:
    """(o) continued: milliseconds per ``apply_gradients`` of the preset's Learner (as the trainer
    builds it; one thread), RLlib's ``TorchLearner.apply_gradients`` (each gradient tensor checked
    for nan/inf twice) against the trainer's (one total norm, ``trainer/learners.py``), interleaved
    on two Learners from the same weights; both must hold the same parameters after ``reps`` steps."""
    import torch
    from ray.rllib.core.learner.torch.torch_learner import TorchLearner

    torch.set_num_threads(1)
    learners, _ = _from_probe(
        settings,
        lambda cfg, probe: {"rllib": cfg.build_learner(env=probe), "trainer": cfg.build_learner(env=probe)},
    )
    learners["trainer"].module.set_state(learners["rllib"].module.get_state())
    apply = {
        "rllib": lambda ln, g: TorchLearner.apply_gradients(ln, g),
        "trainer": lambda ln, g: ln.apply_gradients(g),
    }
    torch.manual_seed(0)
    grads = [torch.randn_like(p) for p in learners["rllib"]._params.values()]
    ms: dict[str, list[float]] = {}
    for _ in range(reps):
        for name, learner in learners.items():
            step = {}
            for (pid, param), g in zip(learner._params.items(), grads, strict=True):
                param.grad = step[pid] = g.clone()
            t = time.perf_counter()
            apply[name](learner, step)
            ms.setdefault(name, []).append(1000 * (time.perf_counter() - t))
    for a, b in zip(learners["rllib"]._params.values(), learners["trainer"]._params.values(), strict=True):
        assert torch.equal(a, b), "the two apply_gradients left different parameters"
    return {k: sorted(v)[len(v) // 2] for k, v in ms.items()}  # medians


def sampling_only(settings: dict, seconds: float, vectorize_mode: str | None = None) -> dict:
    """(a'): one EnvRunner of the preset in this process (one core), sampling, no learning: env
    steps per second of wall time and per CPU second of this process. ``vectorize_mode``
    overrides how the EnvRunner makes its envs ("sync": ``make_env``'s envs stepped one after
    the other, RLlib's default; the trainer's Atari presets use "vector_entry_point")."""
    import torch
    from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner

    torch.set_num_threads(1)
    cfg, _ = _algo_config(settings)
    if vectorize_mode:
        cfg = cfg.copy(copy_frozen=False).env_runners(gym_env_vectorize_mode=vectorize_mode)
    runner = SingleAgentEnvRunner(config=cfg)
    runner.sample()  # warm-up (env resets, first inference)
    steps, t0, c0 = 0, time.time(), time.process_time()
    while time.time() - t0 < seconds:
        steps += sum(len(e) for e in runner.sample())
    wall, cpu = time.time() - t0, time.process_time() - c0
    runner.stop()
    return {"mode": cfg.gym_env_vectorize_mode, "steps_per_s": steps / wall, "steps_per_cpu_s": steps / cpu}


def runner_scaling(settings: dict, counts: list[int], seconds: float) -> list[dict]:
    """Sampling only with n of the preset's EnvRunners as Ray actors (one CPU each), for each n in
    ``counts``: env steps/s of all of them together, each keeping one ``sample()`` in flight and
    its episodes coming back through the object store as in training; how a cluster of CPU
    workers scales. The learner is left out: it is what the GPU is for."""
    import ray
    from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner

    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    os.environ.setdefault("RAY_worker_niceness", "0")  # as the trainer does (Ray's default: 15)
    ray.init(include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    cfg, _ = _algo_config(settings)
    remote = ray.remote(num_cpus=1)(SingleAgentEnvRunner)
    out = []
    try:
        for n in counts:
            runners = [remote.remote(config=cfg, worker_index=i + 1) for i in range(n)]
            ray.get([r.sample.remote() for r in runners])  # warm-up: env resets, first inference
            pending = {r.sample.remote(): r for r in runners}
            steps, t0 = 0, time.time()
            while time.time() - t0 < seconds:
                done, _ = ray.wait(list(pending), num_returns=1)
                runner = pending.pop(done[0])
                steps += sum(len(e) for e in ray.get(done[0]))
                pending[runner.sample.remote()] = runner
            rate = steps / (time.time() - t0)
            for r in runners:
                ray.kill(r)
            base = out[0]["steps_per_s"] / out[0]["runners"] if out else rate / n
            out.append({"runners": n, "steps_per_s": rate, "of_linear": rate / (n * base)})
            print(
                f"(s)  sampling only, {n:>2} EnvRunner(s) x {settings['num_envs_per_env_runner']} envs: "
                f"{rate:,.0f} env steps/s = {100 * out[-1]['of_linear']:.0f}% of linear "
                f"({n} x {base:,.0f}); load average {os.getloadavg()[0]:.1f}",
                flush=True,
            )
    finally:
        ray.shutdown()
    return out


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


def minibatch_plan(settings: dict) -> list[list[tuple[int, int]]]:
    """The rows of each minibatch RLlib's Learner trains on for one train batch of the preset, as
    ``MiniBatchCyclicIterator`` cuts them (Ray 2.60, ``rllib/utils/minibatch_utils.py``): the
    batch is one EnvRunner ``sample()``, each env's fragment plus the one extra timestep the
    learner connector appends for the bootstrap value (``AddOneTsToEpisodesAndTruncate``), so
    envs x (fragment + 1) rows; minibatches of ``minibatch_size`` rows are cut in order, cycling
    over the batch (a minibatch that reaches the end continues from the start) until every row
    has been covered ``num_epochs`` times. The preset's 16 x 33 = 528 rows, 128-row minibatches
    and 2 epochs give 9 minibatches per 512 sampled steps, which need not start on a fragment."""
    rows = settings["num_envs_per_env_runner"] * (settings["rollout_fragment_length"] + 1)
    epochs = settings.get("num_epochs", 1)
    size = settings.get("minibatch_size") or rows
    plan, start, covered = [], 0, 0
    while covered < epochs:
        need, parts = size, []
        while start + need >= rows:
            parts.append((start, rows))
            need -= rows - start
            start, covered = 0, covered + 1
        if need > 0:
            parts.append((start, start + need))
            start += need
        plan.append(parts)
    return plan


def _time_major(x, horizon: int):
    """[B*T] rows to [T, B], zero-padded to whole sequences (RLlib's ``make_time_major``)."""
    import torch

    pad = -len(x) % horizon
    if pad:
        x = torch.cat([x, x.new_zeros(pad, *x.shape[1:])])
    return x.reshape(-1, horizon, *x.shape[1:]).transpose(0, 1)


def _first_value(setting) -> float:
    """A setting that is a number or a schedule ``[[step, value], ...]`` (``lr``,
    ``entropy_coeff``): its value at step 0."""
    return float(setting[0][1]) if isinstance(setting, list) else float(setting)


def _sampler(rank: int, settings: dict, batches, weights: dict, version, stop, report) -> None:
    """(d)'s sampler process, an EnvRunner's work: the preset's env creator in a gymnasium sync
    vector env of the preset's envs, batched inference (one torch thread, as Ray gives an
    EnvRunner actor) every step; one train batch (envs x fragment) at a time onto the learner's
    bounded queue; the newest weights copied in before each batch."""
    import queue

    import numpy as np
    import torch
    from ray.rllib.core.columns import Columns

    from trainer import envs

    torch.set_num_threads(1)
    torch.manual_seed(rank)
    module, env_config = _preset_module(settings)
    m, horizon, gamma = (
        settings["num_envs_per_env_runner"],
        settings["rollout_fragment_length"],
        settings.get("gamma", 0.99),
    )
    # The envs the preset's EnvRunner steps: RLlib's vector entry point, the trainer's creator.
    venv = envs.make_vector_env({**env_config, "num_envs": m})
    obs, _ = venv.reset(seed=1000 * rank)
    obs = torch.as_tensor(obs)
    done_prev = np.zeros(m, dtype=bool)
    seen = -1
    clock = dict.fromkeys(("weights", "inference", "env", "put_wait"), 0.0)
    batches_put, t_begin = 0, time.perf_counter()
    while not stop.is_set():
        t = time.perf_counter()
        if version.value != seen:
            with version.get_lock():
                seen = version.value
                module.load_state_dict(weights)
        t1 = time.perf_counter()
        clock["weights"] += t1 - t
        o_buf, a_buf, lp_buf, r_buf, d_buf = [], [], [], [], []
        for _ in range(horizon):
            t = time.perf_counter()
            with torch.no_grad():
                logits = module.forward_exploration({Columns.OBS: obs})[Columns.ACTION_DIST_INPUTS]
                dist = torch.distributions.Categorical(logits=logits)
                act = dist.sample()
                logp = dist.log_prob(act)
            t1 = time.perf_counter()
            nxt, rew, term, trunc, _ = venv.step(act.numpy())
            clock["inference"] += t1 - t
            clock["env"] += time.perf_counter() - t1
            o_buf.append(obs)
            a_buf.append(act)
            lp_buf.append(logp)
            # An env that ended last step was reset by this one (gymnasium's next-step autoreset).
            r_buf.append(torch.as_tensor(np.where(done_prev, 0.0, np.sign(rew)), dtype=torch.float32))
            done = np.logical_or(term, trunc)
            d_buf.append(torch.as_tensor(np.where(done, 0.0, gamma), dtype=torch.float32))
            done_prev = done
            obs = torch.as_tensor(nxt)
        batch = (
            torch.cat([torch.stack(o_buf), obs[None]], 0),  # T+1 observations (bootstrap)
            torch.stack(a_buf),
            torch.stack(lp_buf),
            torch.stack(r_buf),
            torch.stack(d_buf),
        )
        t = time.perf_counter()
        while not stop.is_set():
            try:
                batches.put(batch, timeout=0.5)
                break
            except queue.Full:
                continue
        clock["put_wait"] += time.perf_counter() - t
        batches_put += 1
        if batches_put == 1:  # the first batch is warm-up, as for the learner
            clock = dict.fromkeys(clock, 0.0)
            t_begin = time.perf_counter()
    clock["total"] = time.perf_counter() - t_begin
    report.put({"rank": rank, "batches": batches_put, **clock})
    batches.cancel_join_thread()  # exit without waiting for the learner to take what is queued
    venv.close()


def handwritten(settings: dict, seconds: float, threads: int | None = None) -> dict:
    """(d): the preset's work in plain PyTorch, no Ray, as the preset lays it out: one sampler
    process per EnvRunner (``_sampler``) and the learner in this process, overlapped, with a
    bounded queue between them (IMPALA's learner queue, ``learner_queue_size``)."""
    import queue

    import torch
    import torch.multiprocessing as mp
    from ray.rllib.core.columns import Columns
    from torch.optim.optimizer import register_optimizer_step_post_hook

    runners = max(1, settings["num_env_runners"])
    # The trainer's rule for the driver's intra-op threads: the cores the EnvRunners leave free.
    threads = threads or max(1, (os.cpu_count() or 1) - settings["num_env_runners"])
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    module, _ = _preset_module(settings)
    m, horizon = settings["num_envs_per_env_runner"], settings["rollout_fragment_length"]
    plan = minibatch_plan(settings)
    per_batch = len(plan)
    opt = torch.optim.Adam(
        module.parameters(), lr=_first_value(settings["lr"]), fused=True
    )  # as trainer/learners.py
    optimizer_steps = [0]
    hook = register_optimizer_step_post_hook(
        lambda *_: optimizer_steps.__setitem__(0, optimizer_steps[0] + 1)
    )
    ctx = mp.get_context("spawn")
    weights = {k: v.detach().clone().share_memory_() for k, v in module.state_dict().items()}
    version = ctx.Value("l", 0)
    stop, report = ctx.Event(), ctx.Queue()
    batches = ctx.Queue(maxsize=settings.get("learner_queue_size", 3))
    procs = [
        ctx.Process(target=_sampler, args=(r, settings, batches, weights, version, stop, report), daemon=True)
        for r in range(runners)
    ]
    for p in procs:
        p.start()
    clock = dict.fromkeys(("wait", "rows", "forward", "vtrace", "backward", "optimizer", "publish"), 0.0)
    trained = done_batches = 0
    t0 = None
    while True:
        t = time.perf_counter()
        o, acts, blogp, rews, disc = batches.get(timeout=600)
        t1 = time.perf_counter()
        clock["wait"] += t1 - t
        # The Learner's rows: each env's fragment then its bootstrap timestep (loss mask 0).
        t = time.perf_counter()
        rows = {
            "obs": o.transpose(0, 1).reshape(-1, *o.shape[2:]),
            **{
                name: torch.cat([x, torch.zeros_like(x[:1])], 0).transpose(0, 1).reshape(-1)
                for name, x in (("act", acts), ("blogp", blogp), ("rew", rews), ("disc", disc))
            },
            "mask": torch.cat([torch.ones(horizon, m), torch.zeros(1, m)], 0).transpose(0, 1).reshape(-1),
        }
        clock["rows"] += time.perf_counter() - t
        for parts in plan:
            t = time.perf_counter()
            mb = {k: torch.cat([v[a:b] for a, b in parts]) for k, v in rows.items()}
            flat = {Columns.OBS: mb["obs"]}
            out = module.forward_train(flat)
            values = module.compute_values(flat, embeddings=out[Columns.EMBEDDINGS])
            dist = torch.distributions.Categorical(logits=out[Columns.ACTION_DIST_INPUTS])
            logp = dist.log_prob(mb["act"].long())
            t1 = time.perf_counter()
            # Time-major in sequences of the fragment length, zero-padded, as RLlib's loss does.
            tm = {
                k: _time_major(v, horizon)
                for k, v in (("logp", logp), ("values", values), *mb.items())
                if k != "obs"
            }
            with torch.no_grad():
                bootstrap = torch.cat([tm["values"][0][1:], tm["values"][0][:1]])
                vs, adv = _vtrace(
                    tm["blogp"], tm["logp"], tm["rew"], tm["disc"] * tm["mask"], tm["values"], bootstrap
                )
            t2 = time.perf_counter()
            size = tm["mask"].sum()
            loss = (
                -(tm["logp"] * adv * tm["mask"]).sum() / size
                + settings.get("vf_loss_coeff", 0.5)
                * 0.5
                * (((tm["values"] - vs) ** 2) * tm["mask"]).sum()
                / size
                - _first_value(settings.get("entropy_coeff", 0.01)) * dist.entropy().mean()
            )
            opt.zero_grad()
            loss.backward()
            t3 = time.perf_counter()
            torch.nn.utils.clip_grad_norm_(module.parameters(), settings.get("grad_clip", 40.0))
            opt.step()
            t4 = time.perf_counter()
            clock["forward"] += t1 - t
            clock["vtrace"] += t2 - t1
            clock["backward"] += t3 - t2
            clock["optimizer"] += t4 - t3
        t = time.perf_counter()
        with version.get_lock(), torch.no_grad():
            for k, v in module.state_dict().items():
                weights[k].copy_(v)
            version.value += 1
        now = time.perf_counter()
        clock["publish"] += now - t
        if t0 is None:  # the first batch is warm-up, as for (b)
            t0, clock, steps0 = now, dict.fromkeys(clock, 0.0), optimizer_steps[0]
            cpu0 = tree_cpu_s(os.getpid())
            continue
        trained += horizon * m
        done_batches += 1
        if now - t0 >= seconds:
            break
    elapsed = time.perf_counter() - t0
    cpu = tree_cpu_s(os.getpid()) - cpu0
    stop.set()
    samplers = []
    deadline = time.time() + 60
    while len(samplers) < runners and time.time() < deadline:
        try:  # a sampler blocked on a full queue sees the stop within its put timeout
            samplers.append(report.get(timeout=0.2))
        except queue.Empty:
            pass
    for p in procs:
        p.join(timeout=10)
        if p.is_alive():
            p.terminate()
    hook.remove()
    assert optimizer_steps[0] - steps0 == per_batch * done_batches, "(d) stepped the optimizer off the preset"
    return {
        "steps_per_s": trained / elapsed,
        "batches": done_batches,
        "env_steps": trained,
        "optimizer_steps": optimizer_steps[0] - steps0,
        "optimizer_steps_per_batch": per_batch,
        "minibatch_rows": settings.get("minibatch_size"),
        "threads": threads,
        "runners": runners,
        "elapsed_s": elapsed,
        "cpu_s_per_env_step": cpu / trained,
        "learner_s": clock,
        "samplers": samplers,
    }


def _mean(runs: list[dict]) -> float:
    return sum(r["steps_per_s"] for r in runs) / len(runs)


def compare_work(b: dict, d: dict, settings: dict) -> None:
    """Assert (b) and (d) did the same work per sampled step; print where each one's seconds per
    train batch went."""
    lb = b["learner"]
    batch = settings["num_envs_per_env_runner"] * settings["rollout_fragment_length"]
    d_per_batch = d["optimizer_steps"] / d["batches"]
    b_per_update = lb["optimizer_steps"] / max(1, lb["updates"])
    b_batch = b["env_steps_sampled"] / max(1, lb["updates"])
    print(
        f"work: optimizer steps per {batch}-step train batch: (b) {b_per_update:.2f} "
        f"({lb['optimizer_steps']} over {lb['updates']} learner updates), (d) {d_per_batch:.2f} "
        f"({d['optimizer_steps']} over {d['batches']} batches, RLlib's cyclic {d['minibatch_rows']}-row "
        f"minibatches); per 1M sampled env steps: (b) {1e6 * lb['optimizer_steps'] / b['env_steps_sampled']:,.0f}, "
        f"(d) {1e6 * d['optimizer_steps'] / d['env_steps']:,.0f}; (b) sampled {b_batch:.0f} env steps per "
        "learner update (the rest is in the learner queue when it stops)",
        flush=True,
    )
    # The learner thread may stop inside its last update: at most one update's steps short.
    assert abs(lb["optimizer_steps"] - d_per_batch * lb["updates"]) <= d_per_batch, (
        f"(b) and (d) do different work: {b_per_update:.2f} against {d_per_batch:.2f} optimizer steps per batch"
    )
    in_flight = settings.get("learner_queue_size", 3) + 2 * max(1, settings["num_env_runners"])
    assert b["env_steps_sampled"] <= batch * (lb["updates"] + in_flight), (
        f"(b) sampled {b['env_steps_sampled']} env steps but its learner updated on only {lb['updates']} batches"
    )
    b_s, d_s = batch / b["steps_per_s"], batch / d["steps_per_s"]
    b_upd, b_wait = lb["update_s"] / lb["updates"], lb["wait_s"] / max(1, lb["updates"] - 1)
    dl = d["learner_s"]
    n = d["batches"]
    d_upd = sum(v for k, v in dl.items() if k != "wait") / n
    print(
        f"seconds per train batch: (b) {b_s:.2f} (learner thread: {b_upd:.2f} updating, {b_wait:.2f} waiting "
        f"for samples), (d) {d_s:.2f} (learner: {d_upd:.2f} updating = "
        + ", ".join(f"{k} {v / n:.3f}" for k, v in dl.items() if k != "wait")
        + f"; {dl['wait'] / n:.2f} waiting for samples)",
        flush=True,
    )
    if b.get("cpu_s_per_env_step") and d.get("cpu_s_per_env_step"):
        print(
            f"CPU seconds per train batch, all processes: (b) {batch * b['cpu_s_per_env_step']:.2f}, "
            f"(d) {batch * d['cpu_s_per_env_step']:.2f}: (d)/(b) = "
            f"{100 * d['cpu_s_per_env_step'] / b['cpu_s_per_env_step']:.0f}% (the ratio a quiet machine "
            "would show where the cores, not the overlap, limit both)",
            flush=True,
        )
    for s in d["samplers"]:
        tot = s["total"] or 1.0
        print(
            f"     (d) sampler {s['rank']}: "
            + ", ".join(f"{k} {100 * s[k] / tot:.0f}%" for k in ("env", "inference", "weights", "put_wait"))
            + f" of {tot:.0f} s ({s['batches']} batches; put_wait = blocked on a full learner queue)",
            flush=True,
        )
    print(
        f"where (b)'s extra {b_s - d_s:+.2f} s per batch goes: learner updates {b_upd - d_upd:+.2f} s "
        f"(RLlib's learner connector, loss and metrics per minibatch against the plain loop), "
        f"learner waiting for samples {b_wait - dl['wait'] / n:+.2f} s (sampling side: EnvRunner, "
        "object store, the driver's main thread)",
        flush=True,
    )


def main() -> int:  # noqa: C901 - a benchmark script: options, the four measurements and the report, top to bottom
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60, help="training seconds for (b), (c) and (d)")
    ap.add_argument("--emulator-seconds", type=float, default=10, help="seconds for (a) and (a')")
    ap.add_argument("--config", default="{}", help="--config overrides for the rlq run (and (d))")
    ap.add_argument("--skip-stock", action="store_true", help="leave out (c)")
    ap.add_argument(
        "--only", default="a,a',n,o,b,c,d", help="comma-separated subset of a,a',n,o,b,c,d to run"
    )
    ap.add_argument(
        "--runners",
        default=None,
        help="comma-separated EnvRunner counts: measure sampling-only scaling (s) instead of a-d, e.g. 1,2,4,8,15",
    )
    ap.add_argument(
        "--scaling-seconds", type=float, default=20, help="seconds of sampling per count for --runners"
    )
    ap.add_argument("--repeat", type=int, default=1, help="(b) and (d) runs each, alternating b d d b ...")
    ap.add_argument(
        "--d-threads",
        type=int,
        default=None,
        help="torch threads of (d)'s learner (default: the trainer's rule, the cores the EnvRunners leave)",
    )
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
    if args.runners:
        counts = [int(x) for x in args.runners.split(",") if x.strip()]
        result["scaling"] = runner_scaling(p, counts, args.scaling_seconds)
        print("BENCH_RESULT " + json.dumps(result, default=str))
        return 0
    if "a" in only:
        result["emulator_per_core"] = emulator(p["num_envs_per_env_runner"], args.emulator_seconds, "sync")
        print(
            f"(a)  emulator per core, random actions, frameskip 4, {p['num_envs_per_env_runner']} envs: "
            f"{result['emulator_per_core']:,.0f} steps/s",
            flush=True,
        )
        e = result["preset_envs"] = preset_envs(p, args.emulator_seconds)
        print(
            f"(a)  the preset's envs with its preprocessing, random actions, no inference: one-env creator "
            f"synced {e['sync']:,.0f}, ale_py's vector env (the trainer's) {e['vector']:,.0f} env steps per "
            f"CPU second = {e['vector'] / e['sync']:.2f}x",
            flush=True,
        )
    if "a'" in only:
        # The preset's envs as the trainer makes them, then as RLlib's default "sync" mode would,
        # alternating (trainer, sync, sync, trainer) so a drifting load hits both alike.
        runs = [sampling_only(p, args.emulator_seconds, mode) for mode in (None, "sync", "sync", None)]
        trainer_runs, sync_runs = runs[0::3], runs[1:3]
        for r in runs:
            print(
                f"(a') sampling only per core (one preset EnvRunner, inference, no learning), envs "
                f"'{r['mode']}': {r['steps_per_s']:,.0f} steps/s, {r['steps_per_cpu_s']:,.0f} per CPU "
                f"second; load average {os.getloadavg()[0]:.1f}",
                flush=True,
            )
        result["sampling_per_core"] = sum(r["steps_per_s"] for r in trainer_runs) / 2
        result["sampling_modes"] = runs
        cpu = [sum(r["steps_per_cpu_s"] for r in rs) / 2 for rs in (trainer_runs, sync_runs)]
        print(
            f"(a') the trainer's envs ('{trainer_runs[0]['mode']}') against 'sync': "
            f"{cpu[0]:,.0f} against {cpu[1]:,.0f} env steps per CPU second = {cpu[0] / cpu[1]:.2f}x",
            flush=True,
        )
    if "n" in only:
        n = result["network"] = network(p)
        print(
            f"(n)  the preset's network, one thread, median ms: forward of {p['num_envs_per_env_runner']} frames "
            f"{n['rllib_forward']:.1f} (RLlib's Conv2d) vs {n['rlq_forward']:.1f} (full-frame layer as a matrix "
            f"product), {n['rllib_forward'] / n['rlq_forward']:.2f}x; forward + backward of "
            f"{p.get('minibatch_size') or 128} frames {n['rllib_forward_backward']:.1f} vs "
            f"{n['rlq_forward_backward']:.1f}, {n['rllib_forward_backward'] / n['rlq_forward_backward']:.2f}x; "
            + (
                f"the trainer's forward + backward with the encoder in bfloat16 {n['rlq_bf16_forward_backward']:.1f}, "
                f"{n['rlq_forward_backward'] / n['rlq_bf16_forward_backward']:.2f}x float32's"
                if "rlq_bf16_forward_backward" in n
                else "no bfloat16 row: this CPU has no native bfloat16 (AMX or AVX512-BF16)"
            ),
            flush=True,
        )
    if "o" in only:
        o = result["optimizer"] = optimizer(p)
        print(
            f"(o)  Adam on the preset's module ({o['parameters']:,} parameters in {o['tensors']} tensors), "
            f"one thread, median ms per step: torch's default {o['default']:.3f} vs fused {o['fused']:.3f}, "
            f"{o['default'] / o['fused']:.2f}x; the same parameters after 200 steps (asserted)",
            flush=True,
        )
        g = result["gradient_step"] = gradient_step(p)
        print(
            f"(o)  apply_gradients of the preset's Learner, one thread, median ms: RLlib's {g['rllib']:.3f} "
            f"(each tensor checked twice) vs the trainer's {g['trainer']:.3f} (one total norm), "
            f"{g['rllib'] / g['trainer']:.2f}x; the same parameters after 100 steps (asserted)",
            flush=True,
        )
    # (b) and (d) alternate, b d d b ..., so a load that drifts during the run hits both alike.
    order = [("b", "d") if r % 2 == 0 else ("d", "b") for r in range(args.repeat)]
    runs: dict[str, list[dict]] = {"rlq": [], "handwritten": []}
    for pair in order:
        for which in pair:
            if which not in only:
                continue
            print(f"     load average {os.getloadavg()[0]:.1f}", flush=True)
            if which == "b":
                b = rlq(args.seconds, args.config)
                runs["rlq"].append(b)
                print(
                    f"(b)  rlq trainer, Pong preset: {b['steps_per_s']:,.0f} sampled env steps/s over "
                    f"{b['iterations']} iterations (first skipped)",
                    flush=True,
                )
            else:
                d = handwritten(p, args.seconds, threads=args.d_threads)
                runs["handwritten"].append(d)
                print(
                    f"(d)  hand-written loop, no Ray, {d['runners']} sampler process(es) + learner "
                    f"({d['threads']} torch thread(s)): {d['steps_per_s']:,.0f} env steps/s over "
                    f"{d['batches']} train batches (first skipped)",
                    flush=True,
                )
    for name, got in runs.items():
        if got:
            result[name] = got[0] if len(got) == 1 else {**got[0], "steps_per_s": _mean(got), "runs": got}
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
        for b, d in zip(runs["rlq"], runs["handwritten"], strict=False):
            compare_work(b, d, p)
        if args.repeat > 1:
            print(
                "(b) runs: "
                + ", ".join(f"{r['steps_per_s']:,.0f}" for r in runs["rlq"])
                + "; (d) runs: "
                + ", ".join(f"{r['steps_per_s']:,.0f}" for r in runs["handwritten"])
                + " env steps/s (means below)"
            )
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
