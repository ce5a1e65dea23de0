"""rlq trainer entry script (seed-article compatible command line).

    python trainer/train.py --run IMPALA --env PongNoFrameskip-v4 \
        --config '{"num_gpus": 1, "num_workers": 13}' \
        --stop '{"episode_reward_mean": 18, "time_total_s": 3600}' --output-dir ./outputs

    python -m trainer.train --argv-from-env RLQ_TRAINER_ARGV   # argv as a JSON list

Exit codes: 0 a stop criterion was met, 1 training failed (summary.json has ``error``),
2 bad arguments (one line on stderr), 130 interrupted (SIGINT), 143 canceled (SIGTERM).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: python trainer/train.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainer import bootstrap, config_map, envs, presets
from trainer.config_map import UsageError
from trainer.sinks import Sinks, clean, dumps

PROG = "rlq-trainer"
# The trainer's side of the log markers; rlq's side is shared/trainer_args.py (trainer/ is shipped
# alone, so it imports nothing from shared/; tests/contract/test_trainer_contract.py checks they agree).
METRICS_MARK = "RLQ_METRICS "
SUMMARY_MARK = "RLQ_SUMMARY "
REPO_ROOT = str(Path(__file__).resolve().parent.parent)
SMOOTHING_EPISODES = 100
LEARNER_STAT_KEYS = ("entropy", "vf_explained_var", "curr_kl_coeff", "mean_kl_loss")


class _Canceled(BaseException):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, no usage dump
        raise UsageError("arguments", message, "", message=f"arguments: {message} (see --help)") from None


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Train an RLlib agent (rlq trainer job).")
    p.add_argument("--run", default="IMPALA", help="algorithm: IMPALA (default), APPO or PPO")
    p.add_argument(
        "--env",
        default="PongNoFrameskip-v4",
        help="Gymnasium env id: any ALE game (PongNoFrameskip-v4, ALE/Pong-v5) or classic control",
    )
    p.add_argument(
        "--config", default="{}", help="JSON object of RLlib settings (today's or article-era names)"
    )
    p.add_argument("--stop", default=None, help="JSON object of stop criteria; the first one met stops")
    p.add_argument("--output-dir", default="./outputs")
    p.add_argument("--ray-address", default=None, help="Ray cluster to join (Azure ML head: localhost:6379)")
    p.add_argument("--restore", default=None, help="checkpoint dir or file:// URI to warm-start from")
    p.add_argument(
        "--checkpoint-freq", default="10", help="save a checkpoint every N iterations (0: only final)"
    )
    p.add_argument("--seed", default=None)
    p.add_argument("--evaluate-episodes", default="0", help="greedy evaluation episodes after training")
    p.add_argument("--evaluate-gif", action="store_true", help="also write DIR/replay.gif of the evaluation")
    p.add_argument(
        "--argv-from-env",
        default=None,
        metavar="VAR",
        help="read the whole argument vector as a JSON list of strings from env var VAR",
    )
    return p


def _int_arg(name: str, text: str | None, lo: int, hi: int) -> int | None:
    if text is None:
        return None
    try:
        v = int(text)
    except ValueError:
        raise UsageError(name, text, f"an integer between {lo} and {hi}") from None
    if not lo <= v <= hi:
        raise UsageError(name, v, f"an integer between {lo} and {hi}")
    return v


def _json_arg(name: str, text: str) -> Any:
    t = text.strip()
    # The article wraps the JSON in an extra pair of single quotes for the shell.
    if len(t) >= 2 and t[0] == t[-1] == "'":
        t = t[1:-1]
    try:
        return json.loads(t)
    except json.JSONDecodeError as exc:
        raise UsageError(
            name, text, "a JSON object", f"malformed JSON: {exc.msg} at column {exc.colno}"
        ) from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if args.argv_from_env:
        var = args.argv_from_env
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
        rest = [a for a in argv if a != "--argv-from-env" and a != var]
        args = parser.parse_args(inner + rest)
    return args


class Plan:
    """Everything validated before Ray starts."""

    def __init__(self, args: argparse.Namespace):
        run = str(args.run).upper()
        if run not in config_map.ALGORITHMS:
            raise UsageError("--run", args.run, "one of " + ", ".join(config_map.ALGORITHMS))
        self.algorithm = run
        self.env_id = args.env
        if envs.env_spec(self.env_id) is None:
            raise UsageError(
                "--env",
                args.env,
                "a registered Gymnasium env id such as CartPole-v1, PongNoFrameskip-v4 or ALE/Pong-v5",
            )
        self.atari = envs.is_atari(self.env_id)
        self.mapped = config_map.map_config(_json_arg("--config", args.config), self.algorithm)
        if args.stop is None:
            self.stop = config_map.map_stop(presets.default_stop(self.env_id, self.atari))
        else:
            self.stop = config_map.map_stop(_json_arg("--stop", args.stop))
            if not self.stop:
                raise UsageError(
                    "--stop",
                    args.stop,
                    "at least one stop criterion",
                    "accepted: " + ", ".join(config_map.STOP_KEYS),
                )
        self.output_dir = Path(args.output_dir).resolve()
        if self.output_dir.exists() and not self.output_dir.is_dir():
            raise UsageError("--output-dir", args.output_dir, "a directory path")
        self.ray_address = args.ray_address
        self.restore = None
        if args.restore:
            path = args.restore[len("file://") :] if args.restore.startswith("file://") else args.restore
            if "://" in path or not Path(path).is_dir():
                raise UsageError(
                    "--restore", args.restore, "an existing local checkpoint directory or file:// URI"
                )
            if not (Path(path) / "learner_group").is_dir():
                raise UsageError(
                    "--restore", args.restore, "an RLlib checkpoint directory (with learner_group/)"
                )
            self.restore = Path(path).resolve()
        self.checkpoint_freq = _int_arg("--checkpoint-freq", args.checkpoint_freq, 0, 10**6)
        self.seed = _int_arg("--seed", args.seed, 0, 2**31 - 1)
        self.evaluate_episodes = _int_arg("--evaluate-episodes", args.evaluate_episodes, 0, 10_000)
        self.evaluate_gif = bool(args.evaluate_gif)
        if self.evaluate_gif and not self.evaluate_episodes:
            self.evaluate_episodes = 1


def log(msg: str) -> None:
    print(f"{PROG}: {msg}", file=sys.stderr, flush=True)


def _file_uri(path: Path) -> str:
    return path.resolve().as_uri()


def _error_paragraph(exc: BaseException) -> str:
    """A readable one-paragraph reason, without the traceback Ray embeds in its errors."""
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines()]
    keep = [
        ln
        for ln in lines
        if ln and not ln.startswith(("Traceback", 'File "', "^", "~")) and not ln.startswith("ray::")
    ]
    # Ray task errors end with the original "ExcType: message"; prefer that line.
    best = keep[-1] if keep else ""
    for ln in reversed(keep):
        if ":" in ln.split(" ")[0] and ln[0].isupper():
            best = ln
            break
    msg = best or type(exc).__name__
    if not msg.startswith(type(exc).__name__) and ":" not in msg.split(" ")[0]:
        msg = f"{type(exc).__name__}: {msg}"
    return " ".join(msg.split())[:600]


class RewardWindow:
    """Mean/min/max episode return over the last ``n`` completed episodes.

    RLlib 2.60 reports the returns of the episodes completed in *this* iteration; the
    article-era ``episode_reward_mean`` was smoothed over the last 100 episodes, which is
    what the stop criterion and the metrics use. Built from (mean, count, min, max) per
    iteration (min/max are over the iterations the window touches)."""

    def __init__(self, n: int = SMOOTHING_EPISODES):
        self.n = n
        self.items: collections.deque = collections.deque()

    def add(self, mean: Any, count: Any, lo: Any, hi: Any) -> None:
        mean, count = clean(mean), clean(count)
        if mean is None or not count:
            return
        self.items.append((float(mean), int(count), clean(lo), clean(hi)))
        while len(self.items) > self.n:
            self.items.popleft()

    def stats(self):
        total, n, lo, hi = 0.0, 0, None, None
        for mean, count, mn, mx in reversed(self.items):
            take = min(count, self.n - n)
            total += mean * take
            n += take
            if mn is not None:
                lo = mn if lo is None else min(lo, mn)
            if mx is not None:
                hi = mx if hi is None else max(hi, mx)
            if n >= self.n:
                break
        if not n:
            return None, None, None
        return total / n, lo, hi


def _learner_stats(result: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for module, stats in (result.get("learners") or {}).items():
        if module == "__all_modules__" or not isinstance(stats, dict):
            continue
        prefix = "learner/" if module == "default_policy" else f"learner/{module}/"
        for k, v in stats.items():
            if (k.endswith("loss") or k in LEARNER_STAT_KEYS) and isinstance(clean(v), (int, float)):
                out[prefix + k] = clean(v)
    return dict(sorted(out.items()))


def _build_algo_config(plan: Plan, settings: dict[str, Any], env_name: str, env_config: dict[str, Any]):
    from ray.rllib.algorithms.appo import APPOConfig
    from ray.rllib.algorithms.impala import IMPALAConfig
    from ray.rllib.algorithms.ppo import PPOConfig

    cls = {"IMPALA": IMPALAConfig, "APPO": APPOConfig, "PPO": PPOConfig}[plan.algorithm]
    cfg = cls().framework("torch")
    section = lambda m: {k: v for k, v in settings.items() if config_map.SETTINGS[k][0] == m}  # noqa: E731
    env_kwargs = section("environment")
    cfg.environment(env_name, env_config=env_config, **env_kwargs)
    if section("env_runners"):
        cfg.env_runners(**section("env_runners"))
    if section("learners"):
        cfg.learners(**section("learners"))
    if section("training"):
        cfg.training(**section("training"))
    if section("model"):
        cfg.rl_module(model_config=section("model"))
    rep = section("reporting")
    rep.setdefault("metrics_num_episodes_for_smoothing", SMOOTHING_EPISODES)
    cfg.reporting(**rep)
    dbg = section("debugging")
    if plan.seed is not None:
        dbg["seed"] = plan.seed
    if dbg:
        cfg.debugging(**dbg)
    if section("resources"):
        cfg.resources(**section("resources"))
    if not _env_runner_state_server(plan, settings):
        cfg.use_env_runner_state_server = False
    return cfg


def _env_runner_state_server(plan: Plan, settings: dict[str, Any]) -> bool:
    """Whether IMPALA/APPO keep RLlib's pull-based ``EnvRunnerStateServer`` (default on in 2.60).

    Off for classic control with at most one EnvRunner: the server is one more actor process
    (a full RLlib import, about 5 CPU seconds) started after the Learner, and the first sample
    waits for it; for one EnvRunner RLlib's push sync (``set_state`` after each weight update,
    asynchronous) hands over the same weights without it. Atari runs keep RLlib's default."""
    if plan.algorithm not in ("IMPALA", "APPO") or plan.atari:
        return True
    return settings.get("num_env_runners", 0) > 1


def _ray_init(plan: Plan):
    import ray

    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
    address = plan.ray_address or os.environ.get("RAY_ADDRESS")
    if plan.ray_address:
        kwargs["address"] = plan.ray_address
    inside_job = bool(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"))
    if address and not inside_job:
        # Joining a cluster whose workers may not have this code (e.g. Azure ML workers):
        # ship the trainer package with the job so env creators can be imported.
        kwargs["runtime_env"] = {"py_modules": [str(Path(__file__).resolve().parent)]}
    elif not address:
        # A local cluster started here: make sure worker processes can import `trainer`.
        pp = os.environ.get("PYTHONPATH", "")
        if REPO_ROOT not in pp.split(os.pathsep):
            os.environ["PYTHONPATH"] = REPO_ROOT + (os.pathsep + pp if pp else "")
        # Ray starts worker processes at niceness 15; here the EnvRunner actors are the
        # workload, not background work: on a busy machine they starved behind every other
        # process while the Learner (in this process, niceness 0) waited for their samples.
        os.environ.setdefault("RAY_worker_niceness", "0")
    ray.init(**kwargs)
    return ray


def _import_framework(algorithm: str) -> None:
    """torch and the algorithm's RLlib modules: the driver's largest start-up cost of its own."""
    import importlib

    import torch  # noqa: F401

    importlib.import_module(f"ray.rllib.algorithms.{algorithm.lower()}")


def _check_resources(settings: dict[str, Any], cpus: float, gpus: float, algorithm: str) -> None:
    """Refuse a request the cluster can never place (Ray would wait forever for it)."""
    runners = settings.get("num_env_runners", 0)
    runner_cpus = runners * settings.get("num_cpus_per_env_runner", 1)
    learners = settings.get("num_learners", _default_num_learners(algorithm))
    gpu_per_learner = settings.get("num_gpus_per_learner", 0)
    learner_cpus = learners * settings.get("num_cpus_per_learner", 0 if gpu_per_learner else 1)
    if runner_cpus + learner_cpus > cpus:
        most = int(max(0, cpus - learner_cpus) // max(settings.get("num_cpus_per_env_runner", 1), 1e-9))
        raise UsageError(
            "--config.num_workers",
            runners,
            f"at most {most} EnvRunners (the Ray cluster has {cpus:g} CPUs"
            + (f" and {learners} remote Learner(s) take {learner_cpus:g})" if learner_cpus else ")"),
        )
    need_gpu = max(learners, 1) * gpu_per_learner
    if need_gpu > gpus:
        raise UsageError("--config.num_gpus", need_gpu, f"at most {gpus:g} (GPUs in the Ray cluster)")


def _default_num_learners(algorithm: str) -> int:
    # IMPALA/APPO default to one remote Learner actor in Ray 2.60, PPO to the local one.
    return 1 if algorithm in ("IMPALA", "APPO") else 0


def _set_torch_threads(plan: Plan, settings: dict[str, Any]) -> None:
    """Intra-op threads of the driver process (the local Learner and, with 0 EnvRunners, the
    sampler). Tiny MLPs are fastest on one thread; with more threads on a busy 2-core machine
    one Adam step of a 64x64 MLP went from 0.45 ms to 21 ms. Atari: the cores the EnvRunners
    leave free on this machine. RLQ_TORCH_THREADS overrides. (Ray sets OMP_NUM_THREADS for
    EnvRunner actors itself.)"""
    import torch

    env = os.environ.get("RLQ_TORCH_THREADS")
    if env and env.isdigit() and int(env) > 0:
        n = int(env)
    elif not plan.atari or settings.get("num_gpus_per_learner"):
        n = 1
    else:
        local = os.cpu_count() or 1
        remote = plan.ray_address or os.environ.get("RAY_ADDRESS")
        n = max(1, local // 2) if remote else max(1, local - settings.get("num_env_runners", 0))
    torch.set_num_threads(n)
    log(f"torch intra-op threads in the driver: {n}")


class Trainer:
    def __init__(self, plan: Plan):
        self.plan = plan
        self.t0 = time.time()
        self.algo = None
        self.rows: list[dict[str, Any]] = []
        self.best: float | None = None
        self.last_checkpoint: Path | None = None
        self.summary: dict[str, Any] = {}
        self.meta: dict[str, Any] = {}
        # Start-up seconds (from the arguments validated): Ray up, algorithm built, first metrics row.
        self.timing: dict[str, float] = {}

    # -- checkpoints ------------------------------------------------------------------
    def save(self, name: str) -> Path:
        path = self.plan.output_dir / "checkpoints" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        self.algo.save_to_path(str(path))
        last = self.rows[-1] if self.rows else {}
        meta = {
            **self.meta,
            "iteration": last.get("iteration", self.meta.get("iteration", 0)),
            "timesteps": last.get("timesteps", self.meta.get("timesteps", 0)),
            "episodes_total": last.get("episodes_total", self.meta.get("episodes_total", 0)),
        }
        (path / "rlq_meta.json").write_text(json.dumps(clean(meta), indent=1))
        self.last_checkpoint = path
        return path

    # -- main -------------------------------------------------------------------------
    def run(self) -> int:
        plan = self.plan
        out = plan.output_dir
        out.mkdir(parents=True, exist_ok=True)
        self.summary = {
            "algorithm": plan.algorithm,
            "env": plan.env_id,
            "stop_reason": None,
            "final_reward": None,
            "best_reward": None,
            "iterations": 0,
            "timesteps": 0,
            "duration_s": 0.0,
            "checkpoint_path": None,
        }
        exit_code = 1
        sinks = None
        ray = None
        try:
            for note in plan.mapped.notes:
                log(note)
            sinks = Sinks.open(
                str(out / "metrics.jsonl"),
                append=plan.restore is not None
                and (out / "metrics.jsonl").exists()
                and plan.restore.is_relative_to(out),
            )
            _check_cancel()
            self.timing["before_ray_init_s"] = round(time.time() - self.t0, 2)
            t = time.time()
            ray = _ray_init(plan)
            self.timing["ray_init_s"] = round(time.time() - t, 2)
            _install_signal_handlers()  # Ray's core worker replaces SIGTERM with an abort
            _check_cancel()
            t = time.time()
            _import_framework(plan.algorithm)
            self.timing["imports_s"] = round(time.time() - t, 2)
            t = time.time()  # algorithm build: config, EnvRunner/Learner actors started and ready
            res = ray.cluster_resources()
            cpus, gpus = float(res.get("CPU", 1)), float(res.get("GPU", 0))
            # A cluster started by trainer/bootstrap.py: Learner on the head node, EnvRunners on workers.
            place = bootstrap.placement(ray.nodes())
            preset_settings = presets.preset(plan.algorithm, plan.env_id, plan.atari, gpus)
            settings = {**preset_settings, **plan.mapped.settings}
            fitted = presets.fit_minibatch(plan.algorithm, preset_settings, settings, plan.mapped.settings)
            if fitted:
                log(f"config: {fitted}")
            if "num_env_runners" not in settings and place and place.get("worker_cpus"):
                settings["num_env_runners"] = place["worker_cpus"]
                log(f"config: num_env_runners={settings['num_env_runners']} (the worker nodes' CPUs)")
            if "num_env_runners" not in settings:
                settings["num_env_runners"] = config_map.default_num_env_runners(cpus)
                log(
                    f"config: num_env_runners={settings['num_env_runners']} "
                    f"(default: {cpus:g} CPUs in the Ray cluster minus one)"
                )
            _check_resources(settings, cpus, gpus, plan.algorithm)
            _set_torch_threads(plan, settings)
            env_config = envs.env_config_for(plan.env_id, settings) if plan.atari else {"env_id": plan.env_id}
            env_name = envs.register(plan.env_id)
            self.meta = {
                "algorithm": plan.algorithm,
                "env": plan.env_id,
                "env_config": env_config,
                "settings": settings,
            }
            log(f"{plan.algorithm} on {plan.env_id}: " + json.dumps(clean(settings), sort_keys=True))
            cfg = _build_algo_config(plan, settings, env_name, env_config)
            if place:
                if "custom_resources_per_env_runner" in place:
                    cfg.env_runners(custom_resources_per_env_runner=place["custom_resources_per_env_runner"])
                if "custom_resources_per_learner" in place:
                    cfg.learners(custom_resources_per_learner=place["custom_resources_per_learner"])
                log("placement: Learner on the rlq_head node, EnvRunners on rlq_worker nodes")
            self.algo = cfg.build_algo()
            self.timing["algorithm_build_s"] = round(time.time() - t, 2)
            _install_signal_handlers()
            _check_cancel()
            offset_ts = offset_it = offset_eps = 0
            if plan.restore is not None:
                self.algo.restore_from_path(str(plan.restore))
                meta_file = plan.restore / "rlq_meta.json"
                prev = json.loads(meta_file.read_text()) if meta_file.exists() else {}
                offset_ts = int(prev.get("timesteps") or 0)
                offset_it = int(prev.get("iteration") or 0)
                offset_eps = int(prev.get("episodes_total") or 0)
                log(f"restored {plan.restore} (iteration {offset_it}, {offset_ts} timesteps)")
            exit_code = self._loop(sinks, offset_ts, offset_it, offset_eps)
        except UsageError as exc:
            print(f"{PROG}: error: {exc}", file=sys.stderr, flush=True)
            self.summary.update(stop_reason="error", error=str(exc))
            exit_code = 2
        except _Canceled as exc:
            self.summary["stop_reason"] = "canceled"
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            exit_code = 143 if exc.signum == signal.SIGTERM else 130
        except Exception as exc:  # noqa: BLE001 - any training failure becomes a summary with the error
            traceback.print_exc(file=sys.stderr)
            self.summary.update(stop_reason="error", error=_error_paragraph(exc))
            exit_code = 1
        finally:
            _IN_TRAIN[0] = True  # from here on a signal is only recorded: finish the summary
            if self.algo is not None and exit_code in (0, 143, 130):
                try:
                    self.save("final")
                except BaseException as exc:  # noqa: BLE001 - a cancel must still write its summary
                    log(f"final checkpoint not saved: {_error_paragraph(exc)}")
            if self.last_checkpoint is not None:
                self.summary["checkpoint_path"] = _file_uri(self.last_checkpoint)
            if self.algo is not None:
                try:
                    self.algo.stop()
                except BaseException:  # noqa: BLE001 - shutdown is best effort; the summary is written next
                    pass
            if ray is not None:
                try:
                    ray.shutdown()
                except BaseException:  # noqa: BLE001 - shutdown is best effort; the summary is written next
                    pass
            if sinks is not None:
                sinks.close()
        if exit_code == 0 and plan.evaluate_episodes and self.last_checkpoint is not None:
            exit_code = self._evaluate()
        self.summary["duration_s"] = round(time.time() - self.t0, 3)
        self.summary = clean(self.summary)
        (out / "summary.json").write_text(json.dumps(self.summary, indent=1, allow_nan=False) + "\n")
        print(SUMMARY_MARK + dumps(self.summary), flush=True)
        return exit_code

    def _loop(self, sinks: Sinks, offset_ts: int, offset_it: int, offset_eps: int) -> int:
        plan = self.plan
        window = RewardWindow()
        t_train = time.time()
        prev_ts = offset_ts
        while True:
            t_iter = time.time()
            _check_cancel()
            _IN_TRAIN[0] = True
            try:
                result = self.algo.train()
            finally:
                _IN_TRAIN[0] = False
            _check_cancel()
            er = result.get("env_runners") or {}
            it = offset_it + len(self.rows) + 1
            raw_ts = int(
                clean(
                    result.get("num_env_steps_sampled_lifetime")
                    or er.get("num_env_steps_sampled_lifetime")
                    or 0
                )
            )
            raw_eps = int(clean(er.get("num_episodes_lifetime")) or 0)
            if not self.rows and (offset_ts or offset_eps):
                # RLlib 2.60 restores its lifetime counters with the checkpoint; only add the
                # checkpoint's own figures if they did not come back (e.g. older checkpoints).
                if raw_ts >= offset_ts:
                    offset_ts = 0
                if raw_eps >= offset_eps:
                    offset_eps = 0
            ts = offset_ts + raw_ts
            if not self.rows and ts <= prev_ts:
                # Warm-up: IMPALA/APPO EnvRunners take a few seconds before their first
                # sample arrives. Such empty iterations are not reported or counted; only
                # the time limit applies to them.
                warm = round(time.time() - t_train, 3)
                if "time_total_s" in plan.stop and warm >= plan.stop["time_total_s"]:
                    self.summary["stop_reason"] = "time_limit"
                    return 0
                continue
            window.add(
                er.get("episode_return_mean"),
                er.get("num_episodes"),
                er.get("episode_return_min"),
                er.get("episode_return_max"),
            )
            mean, lo, hi = window.stats()
            dt = max(time.time() - t_iter, 1e-9)
            row = {
                "iteration": it,
                "time_total_s": round(time.time() - t_train, 3),
                "timesteps": ts,
                "episode_reward_mean": mean,
                "episode_reward_min": lo,
                "episode_reward_max": hi,
                "episodes": int(clean(er.get("num_episodes")) or 0),
                "episodes_total": offset_eps + raw_eps,
                "env_steps_per_s": round((ts - prev_ts) / dt, 2),
                **_learner_stats(result),
            }
            prev_ts = ts
            row = clean(row)
            self.rows.append(row)
            if mean is not None:
                self.best = mean if self.best is None else max(self.best, mean)
            sinks.log(row)
            if not self.timing.get("first_metrics_s"):
                self.timing["first_iteration_s"] = round(time.time() - t_train, 2)
                self.timing["first_metrics_s"] = round(time.time() - self.t0, 2)
                log("start-up: " + ", ".join(f"{k} {v}" for k, v in self.timing.items()))
            print(METRICS_MARK + dumps(row), flush=True)
            self.summary.update(final_reward=mean, best_reward=self.best, iterations=it, timesteps=ts)
            if plan.checkpoint_freq and it % plan.checkpoint_freq == 0:
                self.save(f"iter_{it:06d}")
            reason = config_map.check_stop(plan.stop, row)
            if reason:
                self.summary["stop_reason"] = reason
                return 0

    def _evaluate(self) -> int:
        from trainer import evaluate

        gif = self.plan.output_dir / "replay.gif" if self.plan.evaluate_gif else None
        try:
            res = evaluate.evaluate(
                self.last_checkpoint, self.plan.evaluate_episodes, gif=gif, seed=self.plan.seed
            )
        except Exception as exc:  # noqa: BLE001 - a failed evaluation never discards the trained run
            traceback.print_exc(file=sys.stderr)
            self.summary["error"] = "evaluation failed: " + _error_paragraph(exc)
            return 1
        self.summary["eval_reward"] = res["mean_return"]
        if gif is not None:
            self.summary["replay_path"] = _file_uri(gif)
        return 0


_SIGNALLED: list[int] = []


_IN_TRAIN: list[bool] = [False]


def _on_signal(signum, _frame):
    # Inside algo.train() only record it (the loop checks after the iteration, so a cancel
    # takes effect within one iteration); elsewhere (Ray start, algorithm build, which can
    # wait for resources) stop at once.
    _SIGNALLED.append(signum)
    if not _IN_TRAIN[0]:
        raise _Canceled(signum)
    log(f"received signal {signum}; stopping after the current iteration")


def _install_signal_handlers() -> None:
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)


def _check_cancel() -> None:
    if _SIGNALLED:
        raise _Canceled(_SIGNALLED[0])


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        plan = Plan(args)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr, flush=True)
        return 2
    _install_signal_handlers()
    return Trainer(plan).run()


if __name__ == "__main__":
    sys.exit(main())
