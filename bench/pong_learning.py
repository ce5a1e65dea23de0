"""Pong learning proof: train the Pong preset for a budget of agent steps and draw the curve.

    .venv/bin/python bench/pong_learning.py [--steps 2000000] [--run IMPALA] [--out DIR]
    .venv/bin/python bench/pong_learning.py --plot-only DIR/curve.csv      # redraw a (partial) run

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


def plot(rows: list[dict[str, float]], png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [r for r in rows if r["episode_reward_mean"] is not None]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    ax1.plot(
        [r["env_steps"] / 1e6 for r in pts], [r["episode_reward_mean"] for r in pts], label="rlq (this run)"
    )
    for (label, ref), marker in zip(REFERENCE.items(), ("o", "s"), strict=True):
        ax1.plot([s / 1e6 for s, _ in ref], [v for _, v in ref], marker, linestyle="none", label=label)
    ax1.axhline(0, color="grey", lw=0.5)
    ax1.set_xlabel("agent steps (millions; 4 frames each)")
    ax1.set_ylabel("mean episode reward (last 100 episodes)")
    ax1.set_ylim(-22, 22)
    ax1.legend(fontsize=8, loc="lower right")
    ax1.set_title(title, fontsize=9)
    ax2.plot([r["wall_s"] / 60 for r in pts], [r["episode_reward_mean"] for r in pts])
    ax2.axhline(0, color="grey", lw=0.5)
    ax2.set_xlabel("wall time (minutes)")
    ax2.set_ylim(-22, 22)
    ax2.set_title("same run against wall time", fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)


def report(csv_path: Path, title: str) -> dict:
    rows = read_curve(csv_path)
    if not rows:
        print("no iterations recorded")
        return {}
    png = csv_path.with_suffix(".png")
    plot(rows, png, title)
    s = summary(rows)
    print(
        f"reached {s['env_steps']:,} agent steps in {s['wall_s'] / 60:.1f} min; "
        f"mean reward {s['final_reward']} (best {s['best_reward']})"
    )
    for level in (0, 18):
        if s[f"steps_to_{level}"] is None:
            print(f"mean reward {level}: not reached")
        else:
            print(
                f"mean reward {level}: at {s[f'steps_to_{level}']:,} steps, "
                f"{s[f'wall_s_to_{level}'] / 60:.1f} min"
            )
    print(f"curve: {csv_path}  figure: {png}")
    print("BENCH_RESULT " + json.dumps(s))
    return s


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
                    f"{rec[1] / 60:6.1f} min  {rec[0]:>9,} steps  reward {rec[2]}  entropy {rec[4]}",
                    flush=True,
                )
        except KeyboardInterrupt:
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=120)
    print(f"trainer exited with {p.returncode} after {(time.time() - t0) / 60:.1f} min", flush=True)
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
    args = ap.parse_args()
    if args.plot_only:
        report(Path(args.plot_only), f"{args.run} Pong preset (from {args.plot_only})")
        return 0
    csv_path = train(args)
    report(csv_path, f"rlq {args.run} Pong preset, {os.cpu_count()} CPU cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
