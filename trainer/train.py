"""rlq trainer entry script (seed-article compatible command line): parse → plan → run.

    python trainer/train.py --run IMPALA --env PongNoFrameskip-v4 \
        --config '{"num_gpus": 1, "num_workers": 13}' \
        --stop '{"episode_reward_mean": 18, "time_total_s": 3600}' --output-dir ./outputs

    python -m trainer.train --argv-from-env RLQ_TRAINER_ARGV   # argv as a JSON list

1. parse: :class:`Args`, the command line as typed (strings);
2. plan: :class:`trainer.plan.Plan`, every value checked before Ray starts;
3. run: :class:`trainer.run.Trainer`, configure → restore → loop → finish, with
   :class:`trainer.cancel.CancelToken` turning SIGTERM/SIGINT into a cancel.

Writes DIR/metrics.jsonl (one row per iteration, also printed as ``RLQ_METRICS <json>``),
DIR/checkpoints/ and DIR/summary.json (also printed last as ``RLQ_SUMMARY <json>``).

Exit codes: 0 a stop criterion was met, 1 training failed (summary.json has ``error``),
2 bad arguments (one line on stderr), 130 interrupted (SIGINT), 143 canceled (SIGTERM).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: python trainer/train.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainer.cancel import CancelToken
from trainer.config_map import UsageError
from trainer.console import PROG, error
from trainer.plan import Plan
from trainer.run import Trainer


def _flag(default: Any, help: str, **argparse_kwargs: Any) -> Any:
    return field(default=default, metadata={"help": help, **argparse_kwargs})


@dataclass
class Args:
    """The command line, one field per flag (``output_dir`` is ``--output-dir``), as typed."""

    run: str = _flag("IMPALA", "algorithm: IMPALA (default), APPO, PPO, SAC or DQN")
    env: str = _flag(
        "PongNoFrameskip-v4",
        "Gymnasium env id: any ALE game (PongNoFrameskip-v4, ALE/Pong-v5), classic control, toy text,"
        " MuJoCo (HalfCheetah-v5) or a catalogued namespace/Name-vN (with --env-module)",
    )
    env_config: str | None = _flag(
        None, "JSON object of the environment's keyword arguments (gymnasium.make)"
    )
    env_module: str | None = _flag(
        None, "module whose import registers --env with gymnasium (a catalogued package)"
    )
    config: str = _flag("{}", "JSON object of RLlib settings (today's or article-era names)")
    stop: str | None = _flag(None, "JSON object of stop criteria; the first one met stops")
    output_dir: str = _flag("./outputs", "where metrics.jsonl, checkpoints/ and summary.json go")
    ray_address: str | None = _flag(None, "Ray cluster to join (Azure ML head: localhost:6379)")
    restore: str | None = _flag(None, "checkpoint dir or file:// URI to warm-start from")
    checkpoint_freq: str = _flag("10", "save a checkpoint every N iterations (0: only final)")
    checkpoint_every_s: str = _flag(
        "300", "also save one after S seconds of training since the last (0: off)"
    )
    checkpoint_keep: str = _flag("3", "keep the newest K checkpoints of the run (the final one besides)")
    resume: bool = _flag(
        False,
        "start from this output dir's newest checkpoint that loads (older ones, then --restore, if not)",
        action="store_true",
    )
    seed: str | None = _flag(None, "seed of RLlib and of the evaluation episodes")
    evaluate_episodes: str = _flag("0", "greedy evaluation episodes after training")
    evaluate_gif: bool = _flag(False, "also write DIR/replay.gif of the evaluation", action="store_true")
    model_eval_episodes: str = _flag(
        "0", "play the final checkpoint (and --champion) on N greedy episodes of fixed seeds"
    )
    champion: str | None = _flag(None, "the model's champion checkpoint (dir or file:// URI) to play against")
    champion_version: str | None = _flag(None, "the champion's version number, echoed in summary.json")
    argv_from_env: str | None = _flag(
        None, "read the whole argument vector as a JSON list of strings from env var VAR", metavar="VAR"
    )


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, no usage dump
        raise UsageError("arguments", message, "", message=f"arguments: {message} (see --help)") from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Train an RLlib agent (rlq trainer job).")
    for arg in dataclasses.fields(Args):
        parser.add_argument("--" + arg.name.replace("_", "-"), default=arg.default, **arg.metadata)
    return parser


def parse_args(argv: list[str] | None = None) -> Args:
    """The command line, or with ``--argv-from-env VAR`` the JSON list in ``$VAR`` plus the other flags."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = Args(**vars(parser.parse_args(argv)))
    if args.argv_from_env:
        var = args.argv_from_env
        rest = [a for a in argv if a != "--argv-from-env" and a != var]
        args = Args(**vars(parser.parse_args(_argv_from_env(var) + rest)))
    return args


def _argv_from_env(var: str) -> list[str]:
    raw = os.environ.get(var)
    if raw is None:
        raise UsageError("--argv-from-env", var, "the name of a set environment variable")
    try:
        inner = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise UsageError(f"${var}", raw, "a JSON list of strings", f"malformed JSON: {exc.msg}") from None
    if not isinstance(inner, list) or not all(isinstance(a, str) for a in inner):
        raise UsageError(f"${var}", inner, "a JSON list of strings")
    if "--argv-from-env" in inner:
        raise UsageError(f"${var}", "--argv-from-env", "arguments other than --argv-from-env")
    return inner


def main(argv: list[str] | None = None) -> int:
    try:
        plan = Plan(parse_args(argv))
    except UsageError as exc:
        error(str(exc))
        return 2
    cancel = CancelToken()
    cancel.install()
    return Trainer(plan, cancel).run()


if __name__ == "__main__":
    sys.exit(main())
