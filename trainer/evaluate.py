"""Greedy evaluation of a trainer checkpoint (no Ray cluster needed).

    python -m trainer.evaluate --checkpoint PATH_OR_FILE_URI --episodes N [--gif FILE]

Loads the RLModule from ``<ckpt>/learner_group/learner/rl_module/default_policy``, builds the
env with the same creator and preprocessing as training (``trainer.envs.make_env`` with the
env_config stored in ``<ckpt>/rlq_meta.json``; Atari frame stacking happens inside that env,
so no env-to-module connector has to be reproduced), plays N episodes taking the greedy
action (:func:`greedy_action`; a Box action rescaled as RLlib's connector does), prints the mean return and a final line ``RLQ_EVAL {json}``.
Exit codes: 0 ok, 1 evaluation failed, 2 bad arguments.

:func:`compare` is the model comparison a run ends with (``--model-eval-episodes``): the candidate
(the run's final checkpoint) and the model's champion (``--champion``) played on the same greedy
episodes — the candidate's environment and ``env_config``, reset seeds ``MODEL_EVAL_SEED + i`` —
each summed up by :func:`stats` (rlq's ``shared.contracts.models.Evaluation``). Greedy actions on
seeded resets make it deterministic for a fixed checkpoint and seeds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainer import envs

PROG = "rlq-evaluate"
# The first reset seed of the model comparison's episodes; the same for every run of every model,
# so each version is played on the same episodes (rlq's copy: shared/contracts/trainer.py).
MODEL_EVAL_SEED = 1_000_000
MAX_GIF_FRAMES = 300
GIF_WIDTH = 160


def _local_path(path: str | Path) -> Path:
    text = str(path)
    if text.startswith("file://"):
        from urllib.parse import unquote, urlparse

        text = unquote(urlparse(text).path)
    return Path(text).resolve()


def module_path(ckpt: Path) -> Path:
    return ckpt / "learner_group" / "learner" / "rl_module" / "default_policy"


def load_meta(ckpt: Path, env_id: str | None = None) -> dict[str, Any]:
    meta_file = ckpt / "rlq_meta.json"
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    if env_id:
        meta["env"] = env_id
        if meta.get("env_config", {}).get("env_id") != env_id:
            meta["env_config"] = {"env_id": env_id}
    if not meta.get("env"):
        raise ValueError(f"{ckpt} has no rlq_meta.json; pass --env")
    meta.setdefault("env_config", {"env_id": meta["env"]})
    return meta


def _downscale(frame):
    from PIL import Image

    img = Image.fromarray(frame)
    if img.width > GIF_WIDTH:
        img = img.resize((GIF_WIDTH, max(1, round(img.height * GIF_WIDTH / img.width))), Image.BILINEAR)
    return img


def _render(env, fallback: list[bool]):
    """``env.render()``; CartPole without pygame is drawn from its state with PIL instead."""

    if not fallback[0]:
        try:
            return env.render()
        except Exception as exc:  # gymnasium.error.DependencyNotInstalled (pygame)
            if (
                getattr(env.unwrapped, "state", None) is None
                or "CartPole" not in type(env.unwrapped).__name__
            ):
                raise
            fallback[0] = True
            print(f"{PROG}: note: {exc}; drawing CartPole frames with PIL", file=sys.stderr)
    return _draw_cartpole(env.unwrapped)


def _draw_cartpole(cp):
    import numpy as np
    from PIL import Image, ImageDraw

    w, h = 300, 200
    x, _, theta, _ = [float(v) for v in cp.state]
    scale = w / (2 * cp.x_threshold)
    img = Image.new("RGB", (w, h), (255, 255, 255))
    d = ImageDraw.Draw(img)
    ground = 150
    d.line([(0, ground), (w, ground)], fill=(0, 0, 0))
    cx = x * scale + w / 2
    d.rectangle([cx - 25, ground - 15, cx + 25, ground + 5], fill=(40, 40, 40))
    import math

    length = 2 * cp.length * scale
    tip = (cx + length * math.sin(theta), ground - 10 - length * math.cos(theta))
    d.line([(cx, ground - 10), tip], fill=(202, 152, 101), width=8)
    d.ellipse([cx - 4, ground - 14, cx + 4, ground - 6], fill=(129, 132, 203))
    return np.asarray(img)


def greedy_action(module: Any, out: dict[str, Any], action_space: Any) -> Any:
    """The module's deterministic action for one observation: the actions it computed (DQN's
    greedy Q), else its action distribution made deterministic (the argmax of a categorical, the
    mean of a Gaussian, SAC's squashed mean within the Box's bounds)."""
    import numpy as np
    from gymnasium.spaces import Box, Discrete
    from ray.rllib.core.columns import Columns

    if Columns.ACTIONS in out:
        action = out[Columns.ACTIONS]
    else:
        dist = module.get_inference_action_dist_cls().from_logits(out[Columns.ACTION_DIST_INPUTS])
        action = dist.to_deterministic().sample()
    action = action[0].cpu().numpy()
    if isinstance(action_space, Discrete):
        return int(action)
    # RLlib's module acts in [-1, 1] in a Box; its module-to-env connector rescales (normalize_actions)
    if isinstance(action_space, Box):
        low, high = action_space.low, action_space.high
        return (low + (np.clip(action, -1.0, 1.0) + 1.0) * (high - low) / 2.0).astype(action_space.dtype)
    return action


def evaluate(
    checkpoint: str | Path,
    episodes: int,
    gif: str | Path | None = None,
    env_id: str | None = None,
    seed: int | None = None,
    max_steps_per_episode: int = 108_000,
    env_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Play ``episodes`` greedy episodes of ``checkpoint`` (reset seeds ``seed + i`` when ``seed``
    is set); ``env_config`` replaces the environment stored with the checkpoint."""
    import numpy as np
    import torch
    from ray.rllib.core.columns import Columns
    from ray.rllib.core.rl_module.rl_module import RLModule

    ckpt = _local_path(checkpoint)
    meta = load_meta(ckpt, env_id)
    module = RLModule.from_checkpoint(str(module_path(ckpt)))
    module.eval()  # type: ignore[attr-defined]  # a TorchRLModule (a torch Module) here; RLModule declares no eval()
    env_config = dict(meta["env_config"] if env_config is None else env_config)
    if gif:
        env_config["render_mode"] = "rgb_array"
    env = envs.make_env(env_config)
    returns: list[float] = []
    lengths: list[int] = []
    frames: list[Any] = []
    fallback = [False]
    t0 = time.time()
    for ep in range(episodes):
        obs, _ = env.reset(seed=None if seed is None else seed + ep)
        total, steps, done = 0.0, 0, False
        while not done and steps < max_steps_per_episode:
            if gif and ep == 0 and len(frames) < MAX_GIF_FRAMES:
                frame = _render(env, fallback)
                if frame is not None:
                    frames.append(_downscale(np.asarray(frame)))
            with torch.no_grad():
                batch = {Columns.OBS: torch.as_tensor(np.asarray(obs, dtype=np.float32)[None])}
                out = module.forward_inference(batch)
            obs, reward, terminated, truncated, _ = env.step(greedy_action(module, out, env.action_space))
            total += float(reward)
            steps += 1
            done = terminated or truncated
        returns.append(total)
        lengths.append(steps)
    env.close()
    result: dict[str, Any] = {
        "checkpoint": str(ckpt),
        "env": meta["env"],
        "episodes": episodes,
        "mean_return": float(np.mean(returns)) if returns else None,
        "min_return": float(np.min(returns)) if returns else None,
        "max_return": float(np.max(returns)) if returns else None,
        "returns": returns,
        "mean_length": float(np.mean(lengths)) if lengths else None,
        "duration_s": round(time.time() - t0, 3),
    }
    if gif:
        gif_path = Path(gif).resolve()
        gif_path.parent.mkdir(parents=True, exist_ok=True)
        if len(frames) < 2 and frames:
            frames.append(frames[0])
        frames[0].save(gif_path, save_all=True, append_images=frames[1:], duration=40, loop=0, optimize=False)
        result["gif"] = str(gif_path)
        result["gif_frames"] = len(frames)
    return result


def stats(returns: list[float], seeds: list[int]) -> dict[str, Any]:
    """Episode returns as rlq's ``Evaluation``: episodes, mean, std (population), min, max, seeds."""
    import numpy as np

    return {
        "episodes": len(returns),
        "mean": float(np.mean(returns)),
        "std": float(np.std(returns)),
        "min": float(np.min(returns)),
        "max": float(np.max(returns)),
        "seeds": list(seeds),
    }


def compare(
    candidate: str | Path,
    episodes: int,
    champion: str | Path | None = None,
    champion_version: int | None = None,
) -> dict[str, Any]:
    """The model comparison: ``candidate`` and ``champion`` on the same greedy episodes.

    Both play the candidate's environment and ``env_config`` (its ``rlq_meta.json``), reset seeds
    ``MODEL_EVAL_SEED`` … ``MODEL_EVAL_SEED + episodes - 1``. A champion that cannot be played
    (gone, or a policy for other observations) leaves ``champion`` None and says why in ``error``;
    the candidate's own failure raises.
    """
    ckpt = _local_path(candidate)
    env_config = dict(load_meta(ckpt)["env_config"])
    seeds = [MODEL_EVAL_SEED + i for i in range(episodes)]
    mine = evaluate(ckpt, episodes, seed=MODEL_EVAL_SEED, env_config=env_config)
    out: dict[str, Any] = {
        "candidate": stats(mine["returns"], seeds),
        "champion": None,
        "champion_version": champion_version,
        "error": None,
    }
    if champion is not None:
        try:
            theirs = evaluate(champion, episodes, seed=MODEL_EVAL_SEED, env_config=env_config)
            out["champion"] = stats(theirs["returns"], seeds)
        except Exception as exc:  # noqa: BLE001 - a champion that cannot play is reported, not fatal
            out["error"] = f"the champion could not be evaluated: {type(exc).__name__}: {exc}"[:500]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description="Greedy evaluation of an rlq checkpoint.")
    parser.add_argument("--checkpoint", required=True, help="checkpoint dir or file:// URI")
    parser.add_argument("--episodes", type=int, default=5)
    parser.add_argument("--gif", default=None, help="write a short GIF of the first episode here")
    parser.add_argument("--env", default=None, help="env id (only for checkpoints without rlq_meta.json)")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    checkpoint = _local_path(args.checkpoint)
    if not module_path(checkpoint).is_dir():
        print(
            f"{PROG}: error: --checkpoint: {args.checkpoint!r} is not allowed; expected an RLlib "
            f"checkpoint directory containing learner_group/learner/rl_module/default_policy",
            file=sys.stderr,
        )
        return 2
    if not 1 <= args.episodes <= 10_000:
        print(
            f"{PROG}: error: --episodes: {args.episodes} is not allowed; expected an integer "
            f"between 1 and 10000",
            file=sys.stderr,
        )
        return 2
    try:
        result = evaluate(checkpoint, args.episodes, gif=args.gif, env_id=args.env, seed=args.seed)
    except Exception as exc:  # noqa: BLE001 - the CLI reports any failure as an exit code
        import traceback

        traceback.print_exc()
        print(f"{PROG}: error: evaluation failed: {exc}", file=sys.stderr)
        return 1
    print(f"mean return over {result['episodes']} episodes: {result['mean_return']:.2f}")
    print("RLQ_EVAL " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
