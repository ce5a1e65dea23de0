"""Pong learning proof: train the Pong preset for a budget of agent steps and draw the curve.

    .venv/bin/python bench/pong_learning.py [--steps 2000000] [--run IMPALA] [--out DIR]
    .venv/bin/python bench/pong_learning.py --plot-only DIR/curve.csv      # redraw a (partial) run
    .venv/bin/python bench/pong_learning.py --median-of D1/curve.csv D2/curve.csv D3/curve.csv  # seeds
    .venv/bin/python bench/pong_learning.py --peer cleanrl-envpool         # rlq, then the peer
    .venv/bin/python bench/pong_learning.py --peer cleanrl-envpool --peer-only --max-minutes 2  # peer smoke

With ``--peer cleanrl-envpool`` the same budget (``--steps``, ``--max-minutes``) then trains the
peer a user would pick instead, CleanRL's PPO + EnvPool (``ppo_atari_envpool.py``, its defaults;
see ``cleanrl_envpool`` below for the source and commit), on the same cores right after rlq, into
``DIR/peer-cleanrl-envpool.csv``; the figure draws both curves against agent steps and against
wall time, and the summary prints both rewards at the same wall times and at the same step count.

Runs ``python -m trainer.train --run IMPALA --env PongNoFrameskip-v4`` with the preset (plus any
``--config`` overrides) until ``--steps`` agent steps (one agent step = 4 frames) and, as every
iteration arrives, appends a row to ``DIR/curve.csv``: env steps, wall-clock seconds, the mean
episode reward over the last 100 episodes (the trainer's ``episode_reward_mean``) and the policy
entropy. A run cut short still leaves its data. At the end (or on Ctrl-C) it writes
``DIR/curve.png`` -- the reward against env steps beside the reference curve, and against wall
time -- and prints the reward reached, the steps (and wall time) to a mean reward of 0 and of 18
where they were reached, and the wall time. Target on CPU: mean reward >= 0 within 2M steps.

Reference curve (same kind of agent: an asynchronous actor-critic with V-trace on Pong, 4 frames
per agent step, clipped rewards): RLlib's own tuned APPO Pong example
(``rllib/tuned_examples/appo/pong-appo.yaml`` in ray-project/ray, 32 EnvRunners x 8 envs, 42x42
frames): "APPO can also solve Pong in 2.5 million timesteps, which is 2x more efficient than that
of IMPALA" -- i.e. mean reward 18 at 2.5M agent steps (APPO) and at ~5M (IMPALA). Those two points
plus the common start (-21 at 0 steps) are drawn as the reference; the published text gives the
end points, not the shape in between, so the reference is drawn as markers, not as a line. For
a full published curve of an on-policy actor-critic on the same env see CleanRL's PPO Atari
benchmark (docs.cleanrl.dev, "ppo_atari.py" section, the PongNoFrameskip-v4 learning-curve
figure over 10M agent steps).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from machine import describe as describe_machine  # bench/machine.py: the script's own folder is on sys.path

REPO = Path(__file__).resolve().parent.parent
ENV_ID = "PongNoFrameskip-v4"
FIELDS = ("env_steps", "wall_s", "episode_reward_mean", "episodes_total", "entropy", "env_steps_per_s")
# (agent steps, mean reward) from ray-project/ray rllib/tuned_examples/appo/pong-appo.yaml (see above).
REFERENCE = {
    "RLlib tuned APPO (pong-appo.yaml): 18 at 2.5M steps": [(0, -21.0), (2_500_000, 18.0)],
    "RLlib tuned IMPALA (same file: 2x APPO's steps)": [(0, -21.0), (5_000_000, 18.0)],
}


def read_curve(path: Path) -> list[dict[str, float]]:
    rows = []
    with path.open() as f:
        for r in csv.DictReader(f):
            rows.append({k: (float(v) if v not in ("", "None") else None) for k, v in r.items()})
    return rows


def first_reaching(rows: list[dict[str, float]], level: float) -> dict[str, float] | None:
    for r in rows:
        if r["episode_reward_mean"] is not None and r["episode_reward_mean"] >= level:
            return r
    return None


def summary(rows: list[dict[str, float]]) -> dict:
    rewards = [r for r in rows if r["episode_reward_mean"] is not None]
    out = {
        "env_steps": int(rows[-1]["env_steps"]) if rows else 0,
        "wall_s": round(rows[-1]["wall_s"], 1) if rows else 0.0,
        "final_reward": rewards[-1]["episode_reward_mean"] if rewards else None,
        "best_reward": max(r["episode_reward_mean"] for r in rewards) if rewards else None,
    }
    for level in (0, 18):
        hit = first_reaching(rows, level)
        out[f"steps_to_{level}"] = int(hit["env_steps"]) if hit else None
        out[f"wall_s_to_{level}"] = round(hit["wall_s"], 1) if hit else None
    return out


def plot(
    rows: list[dict[str, float]],
    png: Path,
    title: str,
    peers: dict[str, list[dict[str, float]]] | None = None,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [r for r in rows if r["episode_reward_mean"] is not None]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    ax1.plot([r["env_steps"] / 1e6 for r in pts], [r["episode_reward_mean"] for r in pts], label="rlq")
    for name, prow in (peers or {}).items():
        pp = [r for r in prow if r["episode_reward_mean"] is not None]
        ax1.plot([r["env_steps"] / 1e6 for r in pp], [r["episode_reward_mean"] for r in pp], label=name)
    for (label, ref), marker in zip(REFERENCE.items(), ("o", "s"), strict=True):
        ax1.plot([s / 1e6 for s, _ in ref], [v for _, v in ref], marker, linestyle="none", label=label)
    ax1.axhline(0, color="grey", lw=0.5)
    ax1.set_xlabel("agent steps (millions; 4 frames each)")
    ax1.set_ylabel("mean episode reward (last 100 episodes)")
    ax1.set_ylim(-22, 22)
    ax1.legend(fontsize=8, loc="lower right")
    ax1.set_title(title, fontsize=9)
    ax2.plot([r["wall_s"] / 60 for r in pts], [r["episode_reward_mean"] for r in pts], label="rlq")
    for name, prow in (peers or {}).items():
        pp = [r for r in prow if r["episode_reward_mean"] is not None]
        ax2.plot([r["wall_s"] / 60 for r in pp], [r["episode_reward_mean"] for r in pp], label=name)
    if peers:
        ax2.legend(fontsize=8, loc="lower right")
    ax2.axhline(0, color="grey", lw=0.5)
    ax2.set_xlabel("wall time (minutes)")
    ax2.set_ylim(-22, 22)
    ax2.set_title("against wall time" + (", same cores, one after the other" if peers else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)


def _print_summary(name: str, s: dict) -> None:
    print(
        f"{name}: reached {s['env_steps']:,} agent steps in {s['wall_s'] / 60:.1f} min; "
        f"mean reward {s['final_reward']} (best {s['best_reward']})"
    )
    for level in (0, 18):
        if s[f"steps_to_{level}"] is None:
            print(f"{name}: mean reward {level}: not reached")
        else:
            print(
                f"{name}: mean reward {level}: at {s[f'steps_to_{level}']:,} steps, "
                f"{s[f'wall_s_to_{level}'] / 60:.1f} min"
            )


def reward_at(rows: list[dict[str, float]], key: str, value: float) -> float | None:
    """The mean reward of the last row at or before ``value`` of ``key`` (wall_s or env_steps)."""
    before = [r for r in rows if r[key] <= value and r["episode_reward_mean"] is not None]
    return before[-1]["episode_reward_mean"] if before else None


def peer_csvs(csv_path: Path) -> dict[str, Path]:
    """The peers' curves beside rlq's: DIR/peer-<name>.csv."""
    return {
        f.stem.removeprefix("peer-"): f for f in sorted(csv_path.parent.glob("peer-*.csv")) if f != csv_path
    }


def report(csv_path: Path, title: str, rlq: str = "rlq") -> dict:
    """Draw the figure beside ``csv_path`` and print each curve's summary; ``rlq`` names rlq's
    curve in the printout (with ``--peer-only`` it is the one an earlier run left in DIR)."""
    rows = read_curve(csv_path) if csv_path.exists() else []
    peers = {name: read_curve(path) for name, path in peer_csvs(csv_path).items()}
    peers = {name: r for name, r in peers.items() if r}
    if not rows and not peers:
        print("no iterations recorded")
        return {}
    png = csv_path.with_suffix(".png")
    plot(rows, png, title, peers)
    s = summary(rows) if rows else {}
    if rows:
        _print_summary(rlq, s)
    for name, prow in peers.items():
        ps = summary(prow)
        s[f"peer:{name}"] = ps
        _print_summary(name, ps)
        if rows:  # side by side: the same wall times and the same step counts
            for minutes in (5, 10, 20, 30, 40, 60):
                if minutes * 60 <= min(rows[-1]["wall_s"], prow[-1]["wall_s"]):
                    print(
                        f"at {minutes} min: {rlq} {reward_at(rows, 'wall_s', minutes * 60)}, "
                        f"{name} {reward_at(prow, 'wall_s', minutes * 60)}"
                    )
            steps = min(rows[-1]["env_steps"], prow[-1]["env_steps"])
            print(
                f"at {steps:,.0f} steps: {rlq} {reward_at(rows, 'env_steps', steps)}, "
                f"{name} {reward_at(prow, 'env_steps', steps)}"
            )
    print(f"curve: {csv_path}  figure: {png}")
    print("BENCH_RESULT " + json.dumps(s))
    return s


def median_of_runs(csv_paths: list[Path]) -> dict:
    """Several runs of the same preset (one seed each): each run's mean reward at 5, 10, 20 and
    30 minutes, its steps and steps/s at the end and the steps and minutes it took to -15, 0 and
    18, then the
    median and the range (lowest, highest) of each over the runs; a level a run never reached
    counts as above every step count (the median says "not reached" when half the runs did not)."""
    runs = {str(p): read_curve(p) for p in csv_paths}
    rows_out: dict[str, list] = {}
    for rows in runs.values():
        last = rows[-1]
        figures = {  # a run that ended before that wall time has no value there
            f"reward at {m} min": reward_at(rows, "wall_s", m * 60) if last["wall_s"] >= m * 60 else None
            for m in (5, 10, 20, 30)
        }
        figures["steps at the end"] = last["env_steps"]
        figures["minutes at the end"] = round(last["wall_s"] / 60, 1)
        figures["steps/s"] = round(last["env_steps"] / last["wall_s"])
        figures["reward at the end"] = next(
            (r["episode_reward_mean"] for r in reversed(rows) if r["episode_reward_mean"] is not None), None
        )
        for level in (-15, 0, 18):
            hit = first_reaching(rows, level)
            figures[f"steps to {level}"] = hit["env_steps"] if hit else float("inf")
            figures[f"minutes to {level}"] = round(hit["wall_s"] / 60, 1) if hit else float("inf")
        for name, value in figures.items():
            rows_out.setdefault(name, []).append(value)
    out = {}
    print(f"{len(runs)} runs: " + ", ".join(runs))
    for name, values in rows_out.items():
        known = sorted(v for v in values if v is not None)
        if len(known) < len(values):
            print(f"{name}: a run has no value: {values}")
            continue
        median = (
            known[len(known) // 2]
            if len(known) % 2
            else (known[len(known) // 2 - 1] + known[len(known) // 2]) / 2
        )
        shown = ["not reached" if v == float("inf") else f"{v:,.1f}" for v in (median, known[0], known[-1])]
        each = ", ".join("not reached" if v == float("inf") else f"{v:,.1f}" for v in values)
        print(f"{name}: median {shown[0]} (range {shown[1]} to {shown[2]}; each: {each})")
        out[name] = {  # "not reached" as null
            k: None if v == float("inf") else v
            for k, v in {"median": median, "low": known[0], "high": known[-1]}.items()
        } | {"each": [None if v == float("inf") else v for v in values]}
    print("BENCH_RESULT " + json.dumps(out))
    return out


def train(args) -> Path:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "curve.csv"
    stop = {"timesteps_total": args.steps}
    if args.max_minutes:
        stop["time_total_s"] = args.max_minutes * 60
    cmd = [
        sys.executable,
        "-m",
        "trainer.train",
        "--run",
        args.run,
        "--env",
        ENV_ID,
        "--config",
        args.config,
        "--stop",
        json.dumps(stop),
        "--checkpoint-freq",
        str(args.checkpoint_freq),
        "--output-dir",
        str(out / "trainer"),
    ]
    if args.seed is not None:
        cmd += ["--seed", str(args.seed)]
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    print("running: " + " ".join(cmd), flush=True)
    t0 = time.time()
    with (
        csv_path.open("w", newline="") as f,
        (out / "trainer.log").open("w") as log,
        subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True, env=env) as p,
    ):
        w = csv.writer(f)
        w.writerow(FIELDS)
        f.flush()
        try:
            for line in p.stdout:
                if not line.startswith("RLQ_METRICS "):
                    continue
                row = json.loads(line[len("RLQ_METRICS ") :])
                rec = (
                    row["timesteps"],
                    round(time.time() - t0, 1),
                    row.get("episode_reward_mean"),
                    row.get("episodes_total"),
                    row.get("learner/entropy"),
                    row.get("env_steps_per_s"),
                )
                w.writerow(rec)
                f.flush()
                print(
                    f"{rec[1] / 60:6.1f} min  {rec[0]:>9,} steps  reward {rec[2]}  entropy {rec[4]}  "
                    f"load {_load()}",
                    flush=True,
                )
        except KeyboardInterrupt:
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=120)
    print(f"trainer exited with {p.returncode} after {(time.time() - t0) / 60:.1f} min", flush=True)
    return csv_path


# --- Peer: CleanRL's PPO + EnvPool on Atari -----------------------------------------------------
# What a user reaches for to "train an agent on Pong on the machine I have". The loop below is
# CleanRL's ``cleanrl/ppo_atari_envpool.py`` (github.com/vwxyzjn/cleanrl, read at commit
# 6220645d06db0c3dfa0fb7cf6f1d0d864ccb5d3e) with its defaults: EnvPool ``Pong-v5`` (84x84
# grayscale, 4 stacked frames, frameskip 4, noop 30, FIRE reset, episodic life, clipped rewards,
# seed 1), 8 envs x 128 steps, 4 epochs x 4 minibatches of 256, Adam lr 2.5e-4 (eps 1e-5)
# annealed linearly to 0 over the step budget (CleanRL's ``--total-timesteps``), gamma 0.99,
# GAE lambda 0.95, advantage normalisation, clip 0.1 (policy and value), entropy 0.01, value
# coefficient 0.5, gradient norm 0.5, the Nature CNN with orthogonal init on frames / 255, torch's
# default threads. Written here rather than run from CleanRL's file: that file needs ``gym``
# (EnvPool's gym API), tyro and tensorboard; this one uses EnvPool's gymnasium API (5-tuple step)
# and writes the same CSV as rlq's curve. Episodes are counted as CleanRL counts them: a game
# (all lives) ends, its unclipped score (``info["reward"]`` summed) is the episode's return.
CLEANRL_COMMIT = "6220645d06db0c3dfa0fb7cf6f1d0d864ccb5d3e"
CLEANRL_SOURCE = f"vwxyzjn/cleanrl cleanrl/ppo_atari_envpool.py @ {CLEANRL_COMMIT[:10]}"


def cleanrl_envpool(  # noqa: C901 - CleanRL's single-file PPO loop, kept in its shape to compare with the original
    csv_path: Path, steps: int, max_minutes: float | None, seed: int = 1
) -> Path:
    import collections
    import random

    import envpool
    import numpy as np
    import torch
    from torch import nn, optim
    from torch.distributions.categorical import Categorical

    num_envs, num_steps, num_minibatches, update_epochs = 8, 128, 4, 4
    lr, gamma, gae_lambda, clip_coef = 2.5e-4, 0.99, 0.95, 0.1
    ent_coef, vf_coef, max_grad_norm = 0.01, 0.5, 0.5
    batch_size = num_envs * num_steps
    minibatch_size = batch_size // num_minibatches
    num_iterations = max(1, steps // batch_size)

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    envs = envpool.make(
        "Pong-v5",
        env_type="gymnasium",
        num_envs=num_envs,
        episodic_life=True,
        reward_clip=True,
        seed=seed,
    )
    n_actions = envs.action_space.n

    def layer_init(layer, std=np.sqrt(2), bias_const=0.0):
        torch.nn.init.orthogonal_(layer.weight, std)
        torch.nn.init.constant_(layer.bias, bias_const)
        return layer

    class Agent(nn.Module):
        def __init__(self):
            super().__init__()
            self.network = nn.Sequential(
                layer_init(nn.Conv2d(4, 32, 8, stride=4)),
                nn.ReLU(),
                layer_init(nn.Conv2d(32, 64, 4, stride=2)),
                nn.ReLU(),
                layer_init(nn.Conv2d(64, 64, 3, stride=1)),
                nn.ReLU(),
                nn.Flatten(),
                layer_init(nn.Linear(64 * 7 * 7, 512)),
                nn.ReLU(),
            )
            self.actor = layer_init(nn.Linear(512, n_actions), std=0.01)
            self.critic = layer_init(nn.Linear(512, 1), std=1)

        def get_value(self, x):
            return self.critic(self.network(x / 255.0))

        def get_action_and_value(self, x, action=None):
            hidden = self.network(x / 255.0)
            probs = Categorical(logits=self.actor(hidden))
            if action is None:
                action = probs.sample()
            return action, probs.log_prob(action), probs.entropy(), self.critic(hidden)

    agent = Agent().to(device)
    optimizer = optim.Adam(agent.parameters(), lr=lr, eps=1e-5)
    obs = torch.zeros((num_steps, num_envs, *envs.observation_space.shape)).to(device)
    actions = torch.zeros((num_steps, num_envs)).to(device)
    logprobs = torch.zeros((num_steps, num_envs)).to(device)
    rewards = torch.zeros((num_steps, num_envs)).to(device)
    dones = torch.zeros((num_steps, num_envs)).to(device)
    values = torch.zeros((num_steps, num_envs)).to(device)
    # CleanRL's RecordEpisodeStatistics: unclipped score, summed over lives, per game.
    episode_returns = np.zeros(num_envs, dtype=np.float32)
    returns_window: collections.deque = collections.deque(maxlen=100)  # rlq's metric: last 100
    episodes = 0
    print(
        f"peer cleanrl-envpool ({CLEANRL_SOURCE}): {num_envs} envs x {num_steps} steps, "
        f"{update_epochs} epochs x {num_minibatches} minibatches of {minibatch_size}, lr {lr} annealed over "
        f"{num_iterations * batch_size:,} steps, torch threads {torch.get_num_threads()}, device {device}",
        flush=True,
    )
    global_step = 0
    start = time.time()
    next_obs_np, _ = envs.reset()
    next_obs = torch.Tensor(next_obs_np).to(device)
    next_done = torch.zeros(num_envs).to(device)
    with csv_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(FIELDS)
        for iteration in range(1, num_iterations + 1):
            optimizer.param_groups[0]["lr"] = (1.0 - (iteration - 1.0) / num_iterations) * lr
            for step in range(num_steps):
                global_step += num_envs
                obs[step] = next_obs
                dones[step] = next_done
                with torch.no_grad():
                    action, logprob, _, value = agent.get_action_and_value(next_obs)
                    values[step] = value.flatten()
                actions[step] = action
                logprobs[step] = logprob
                next_obs_np, reward, term, trunc, info = envs.step(action.cpu().numpy())
                done = np.logical_or(term, trunc)
                rewards[step] = torch.tensor(reward).to(device).view(-1)
                next_obs, next_done = torch.Tensor(next_obs_np).to(device), torch.Tensor(done).to(device)
                episode_returns += info["reward"]
                for idx in np.flatnonzero(done & (info["lives"] == 0)):
                    returns_window.append(float(episode_returns[idx]))
                    episodes += 1
                episode_returns *= 1 - info["terminated"]
            with torch.no_grad():
                next_value = agent.get_value(next_obs).reshape(1, -1)
                advantages = torch.zeros_like(rewards).to(device)
                lastgaelam = 0
                for t in reversed(range(num_steps)):
                    if t == num_steps - 1:
                        nextnonterminal, nextvalues = 1.0 - next_done, next_value
                    else:
                        nextnonterminal, nextvalues = 1.0 - dones[t + 1], values[t + 1]
                    delta = rewards[t] + gamma * nextvalues * nextnonterminal - values[t]
                    advantages[t] = lastgaelam = delta + gamma * gae_lambda * nextnonterminal * lastgaelam
                returns = advantages + values
            b_obs = obs.reshape((-1, *envs.observation_space.shape))
            b_logprobs, b_actions = logprobs.reshape(-1), actions.reshape(-1)
            b_advantages, b_returns, b_values = (
                advantages.reshape(-1),
                returns.reshape(-1),
                values.reshape(-1),
            )
            b_inds = np.arange(batch_size)
            for _epoch in range(update_epochs):
                np.random.shuffle(b_inds)
                for lo in range(0, batch_size, minibatch_size):
                    mb = b_inds[lo : lo + minibatch_size]
                    _, newlogprob, entropy, newvalue = agent.get_action_and_value(
                        b_obs[mb], b_actions.long()[mb]
                    )
                    ratio = (newlogprob - b_logprobs[mb]).exp()
                    mb_adv = b_advantages[mb]
                    mb_adv = (mb_adv - mb_adv.mean()) / (mb_adv.std() + 1e-8)
                    pg_loss = torch.max(
                        -mb_adv * ratio, -mb_adv * torch.clamp(ratio, 1 - clip_coef, 1 + clip_coef)
                    ).mean()
                    newvalue = newvalue.view(-1)
                    v_clipped = b_values[mb] + torch.clamp(newvalue - b_values[mb], -clip_coef, clip_coef)
                    v_loss = (
                        0.5
                        * torch.max((newvalue - b_returns[mb]) ** 2, (v_clipped - b_returns[mb]) ** 2).mean()
                    )
                    entropy_loss = entropy.mean()
                    loss = pg_loss - ent_coef * entropy_loss + v_loss * vf_coef
                    optimizer.zero_grad()
                    loss.backward()
                    nn.utils.clip_grad_norm_(agent.parameters(), max_grad_norm)
                    optimizer.step()
            wall = time.time() - start
            mean = round(sum(returns_window) / len(returns_window), 3) if returns_window else None
            w.writerow(
                (
                    global_step,
                    round(wall, 1),
                    mean,
                    episodes,
                    round(entropy_loss.item(), 4),
                    round(global_step / wall, 1),
                )
            )
            f.flush()
            if iteration % 10 == 0 or iteration == num_iterations:
                print(
                    f"{wall / 60:6.1f} min  {global_step:>9,} steps  reward {mean}  entropy {entropy_loss.item():.3f}  "
                    f"{global_step / wall:,.0f} steps/s  load {_load()}  (cleanrl-envpool)",
                    flush=True,
                )
            if max_minutes and wall >= max_minutes * 60:
                break
    envs.close()
    return csv_path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2_000_000, help="agent-step budget (4 frames each)")
    ap.add_argument("--run", default="IMPALA", help="algorithm (the preset of this algorithm is trained)")
    ap.add_argument("--config", default="{}", help="--config overrides on top of the preset")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--max-minutes", type=float, default=None, help="also stop after this much training time")
    ap.add_argument("--checkpoint-freq", type=int, default=50)
    ap.add_argument("--out", default=str(REPO / "outputs" / "pong_learning"))
    ap.add_argument("--plot-only", default=None, metavar="CSV", help="only redraw and summarise this curve")
    ap.add_argument(
        "--peer",
        choices=["cleanrl-envpool"],
        default=None,
        help="also train this peer for the same budget, after rlq, on the same cores; both curves in one figure",
    )
    ap.add_argument(
        "--peer-only", action="store_true", help="train only the peer (rlq's curve in DIR is kept)"
    )
    ap.add_argument(
        "--median-of",
        nargs="+",
        default=None,
        metavar="CSV",
        help="only summarise these runs (one seed each): median and range at the same wall times",
    )
    args = ap.parse_args()
    if args.median_of:
        median_of_runs([Path(p) for p in args.median_of])
        return 0
    if args.plot_only:
        report(Path(args.plot_only), f"rlq {args.run} Pong preset (redrawn from {Path(args.plot_only).name})")
        return 0
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "curve.csv"
    print(f"machine: {describe_machine()}; load average {_load()} at the start", flush=True)
    if not args.peer_only:
        csv_path = train(args)
    if args.peer or args.peer_only:
        if not args.peer:
            ap.error("--peer-only needs --peer NAME")
        try:
            cleanrl_envpool(out / f"peer-{args.peer}.csv", args.steps, args.max_minutes, seed=args.seed or 1)
        except KeyboardInterrupt:
            print("peer interrupted; its curve so far is kept")
    earlier = f"rlq (the earlier run's {csv_path.name})"
    report(
        csv_path,
        f"rlq {args.run} Pong preset, {os.cpu_count()} CPU cores",
        earlier if args.peer_only else "rlq",
    )
    print(f"machine: {describe_machine()}; load average {_load()} at the end", flush=True)
    return 0


def _load() -> str:
    """The load average over 1, 5 and 15 minutes, as ``uptime`` prints it."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    sys.exit(main())
