"""One training run, in four steps: configure (Ray, settings, the algorithm built), restore (a
checkpoint's weights and counters), loop (``algo.train()`` until a stop criterion is met) and
finish (final checkpoint, Ray down, ``summary.json``).

:meth:`Trainer.run` returns the exit code: 0 a stop criterion was met, 1 training failed
(``summary.json`` has ``error``), 2 a request the cluster cannot place, 130 interrupted (SIGINT),
143 canceled (SIGTERM).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from trainer import config_map, configure, envs, metrics
from trainer.cancel import Canceled, CancelToken
from trainer.config_map import UsageError
from trainer.console import error, log
from trainer.metrics import Offsets, Progress
from trainer.plan import Plan
from trainer.sinks import Sinks, clean

PARTIAL = ".partial-"  # a checkpoint being written; renamed to its name once complete
# Tests only: a file; while it exists a checkpoint written in full waits under its .partial- name
# before the rename, so a test can SIGKILL the job in the middle of writing one.
HOLD_ENV = "RLQ_TEST_CHECKPOINT_HOLD"
SAVES_FINAL = (0, 143, 130)  # exit codes after which the final checkpoint is saved: stop met, canceled


class Trainer:
    def __init__(self, plan: Plan, cancel: CancelToken):
        self.plan = plan
        self.cancel = cancel
        self.t0 = time.time()
        self.ray: Any = None
        self.sinks: Sinks | None = None
        self.algo: Any = None
        self.progress = Progress(Offsets())
        self.last_checkpoint: Path | None = None
        self.saved_at: float | None = None  # when the last checkpoint was saved (wall clock)
        self.summary = metrics.new_summary(plan.algorithm, plan.env_id)
        self.meta: dict[str, Any] = {}  # written beside every checkpoint (rlq_meta.json)
        # Start-up seconds (from the arguments validated): Ray up, algorithm built, first metrics row.
        self.timing: dict[str, float] = {}

    def run(self) -> int:
        self.plan.output_dir.mkdir(parents=True, exist_ok=True)
        exit_code = 1
        try:
            exit_code = self._train()
        finally:
            self.finish(exit_code)
        if exit_code == 0 and self.plan.evaluate_episodes and self.last_checkpoint is not None:
            exit_code = self.evaluate()
        if exit_code == 0 and self.plan.model_eval_episodes and self.last_checkpoint is not None:
            self.compare()
        self.summary["duration_s"] = round(time.time() - self.t0, 3)
        self.summary = metrics.write_summary(self.plan.output_dir, self.summary)
        return exit_code

    def _train(self) -> int:
        try:
            self.configure()
            return self.loop(self.restore())
        except UsageError as exc:
            error(str(exc))
            self.summary.update(stop_reason="error", error=str(exc))
            return 2
        except Canceled as exc:
            self.summary["stop_reason"] = "canceled"
            self.cancel.ignore()
            return exc.exit_code
        except Exception as exc:  # noqa: BLE001 - any training failure becomes a summary with the error
            traceback.print_exc(file=sys.stderr)
            self.summary.update(stop_reason="error", error=error_paragraph(exc))
            return 1

    # -- configure ----------------------------------------------------------------------------------
    def configure(self) -> None:
        """Sinks open, Ray up, the settings resolved against the cluster, the algorithm built."""
        plan = self.plan
        for note in plan.mapped.notes:
            log(note)
        self.sinks = Sinks.open(str(plan.output_dir / "metrics.jsonl"), append=self._continues_metrics())
        self.cancel.check()
        self.timing["before_ray_init_s"] = round(time.time() - self.t0, 2)
        with self._timed("ray_init_s"):
            self.ray = configure.start_ray(plan)
        self.cancel.install()  # Ray's core worker replaces SIGTERM with an abort
        self.cancel.check()
        with self._timed("imports_s"):
            configure.import_framework(plan.algorithm)
        with self._timed("algorithm_build_s"):  # config, EnvRunner/Learner actors started and ready
            self.algo = self._algo_config().build_algo()
        self.cancel.install()
        self.cancel.check()

    def _continues_metrics(self) -> bool:
        """Restoring a checkpoint of this output dir: its metrics.jsonl goes on."""
        out, restore = self.plan.output_dir, self.plan.restore
        if not (out / "metrics.jsonl").exists():
            return False
        return self.plan.resume or (restore is not None and restore.is_relative_to(out))

    def _algo_config(self) -> Any:
        plan = self.plan
        cluster = configure.Cluster.of(self.ray)
        settings = configure.resolve_settings(plan, cluster)
        configure.check_resources(settings, cluster, plan.algorithm)
        configure.set_torch_threads(plan, settings)
        env_config = (
            envs.env_config_for(plan.env_id, settings, plan.env_module, plan.env_kwargs)
            if plan.atari
            else envs.env_config_for(plan.env_id, {}, plan.env_module, plan.env_kwargs)
        )
        env_name = envs.register(plan.env_id)
        self.meta = {
            "algorithm": plan.algorithm,
            "env": plan.env_id,
            "env_config": env_config,
            "settings": settings,
        }
        log(f"{plan.algorithm} on {plan.env_id}: " + json.dumps(clean(settings), sort_keys=True))
        config = configure.algo_config(plan, settings, env_name, env_config)
        configure.place(config, cluster.placement)
        return config

    @contextmanager
    def _timed(self, phase: str) -> Iterator[None]:
        started = time.time()
        yield
        self.timing[phase] = round(time.time() - started, 2)

    # -- restore ------------------------------------------------------------------------------------
    def restore(self) -> Offsets:
        """The checkpoint's weights and optimizer state, and the counters it reached; zeros without one.

        With ``--resume`` (a later attempt of a run whose job was lost) this output dir's own
        checkpoints come first, newest first: one that fails to load falls back to the one before,
        then to ``--restore``, then to a fresh start. Only a run's own checkpoint carries its
        training seconds on (a warm start from another run's checkpoint starts its clock at zero).
        """
        own = checkpoints(self.plan.output_dir) if self.plan.resume else []
        candidates = [*own, *([self.plan.restore] if self.plan.restore is not None else [])]
        for checkpoint in candidates:
            try:
                self.algo.restore_from_path(str(checkpoint))
                offsets = Offsets.of_checkpoint(checkpoint)
            except Exception as exc:  # noqa: BLE001 - a damaged checkpoint falls back to the one before
                log(f"checkpoint {checkpoint} did not load ({error_paragraph(exc)}); trying the one before")
                continue
            if checkpoint not in own:
                offsets.time_s = 0.0
            else:
                self.summary["resumed_from"] = checkpoint.resolve().as_uri()
            log(f"restored {checkpoint} (iteration {offsets.iteration}, {offsets.timesteps} timesteps)")
            return offsets
        if candidates:
            log("no checkpoint loaded: training starts from the beginning")
        return Offsets()

    # -- loop ---------------------------------------------------------------------------------------
    def loop(self, offsets: Offsets) -> int:
        """``algo.train()`` until a stop criterion is met (0); a cancel raises from ``cancel.check()``."""
        plan = self.plan
        self.progress = Progress(offsets)
        while True:
            iteration_started = time.time()
            self.cancel.check()
            with self.cancel.deferred():
                result = self.algo.train()
            self.cancel.check()
            row = self.progress.row(result, iteration_started)
            if row is None:  # warm-up: only the time limit applies
                if self.progress.elapsed() >= plan.stop.get("time_total_s", float("inf")):
                    self.summary["stop_reason"] = "time_limit"
                    return 0
                continue
            self._report(row)
            if self._checkpoint_due(row["iteration"]):
                self.save(f"iter_{row['iteration']:06d}")
            reason = config_map.check_stop(plan.stop, row)
            if reason:
                self.summary["stop_reason"] = reason
                return 0

    def _report(self, row: dict[str, Any]) -> None:
        assert self.sinks is not None
        self.sinks.log(row)
        if not self.timing.get("first_metrics_s"):
            self.timing["first_iteration_s"] = round(time.time() - self.progress.started, 2)
            self.timing["first_metrics_s"] = round(time.time() - self.t0, 2)
            log("start-up: " + ", ".join(f"{phase} {seconds}" for phase, seconds in self.timing.items()))
        metrics.print_row(row)
        self.summary.update(
            final_reward=row["episode_reward_mean"],
            best_reward=self.progress.best,
            iterations=row["iteration"],
            timesteps=row["timesteps"],
        )

    def _checkpoint_due(self, iteration: int) -> bool:
        """Every ``--checkpoint-freq`` iterations, and after ``--checkpoint-every-s`` seconds of
        training since the last checkpoint: a lost job loses at most that much."""
        plan = self.plan
        if plan.checkpoint_freq and iteration % plan.checkpoint_freq == 0:
            return True
        since = time.time() - (self.saved_at or self.progress.started)
        return bool(plan.checkpoint_every_s) and since >= (plan.checkpoint_every_s or 0)

    def save(self, name: str) -> Path:
        """``DIR/checkpoints/<name>``: RLlib's checkpoint and ``rlq_meta.json`` (settings, counters).

        Written under a ``.partial-`` name and renamed when complete, so a job killed while saving
        never leaves a half-written checkpoint under a name :func:`checkpoints` lists; then only
        the newest ``--checkpoint-keep`` ``iter_*`` checkpoints are kept.
        """
        path = self.plan.output_dir / "checkpoints" / name
        partial = path.with_name(PARTIAL + name)
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(partial, ignore_errors=True)
        self.algo.save_to_path(str(partial))
        last = self.progress.rows[-1] if self.progress.rows else {}
        meta = {
            **self.meta,
            "iteration": last.get("iteration", 0),
            "timesteps": last.get("timesteps", 0),
            "episodes_total": last.get("episodes_total", 0),
            "time_total_s": last.get("time_total_s", 0.0),
        }
        (partial / "rlq_meta.json").write_text(json.dumps(clean(meta), indent=1))
        _hold_before_rename()
        shutil.rmtree(path, ignore_errors=True)  # "final" saved again by a later attempt
        partial.rename(path)
        self.last_checkpoint = path
        self.saved_at = time.time()
        for old in [c for c in checkpoints(self.plan.output_dir) if c.name.startswith("iter_")][
            self.plan.checkpoint_keep :
        ]:
            shutil.rmtree(old, ignore_errors=True)
        return path

    # -- finish -------------------------------------------------------------------------------------
    def finish(self, exit_code: int) -> None:
        """Whatever the run got to: the final checkpoint (stop met or canceled), then the algorithm,
        Ray and the sinks closed. A signal from here on is only recorded: the summary is written."""
        self.cancel.defer()
        if self.algo is not None and exit_code in SAVES_FINAL:
            try:
                self.save("final")
            except BaseException as exc:  # noqa: BLE001 - a cancel must still write its summary
                log(f"final checkpoint not saved: {error_paragraph(exc)}")
        if self.last_checkpoint is not None:
            self.summary["checkpoint_path"] = self.last_checkpoint.resolve().as_uri()
        if self.algo is not None:
            _quietly(self.algo.stop)
        if self.ray is not None:
            _quietly(self.ray.shutdown)
        if self.sinks is not None:
            self.sinks.close()

    def evaluate(self) -> int:
        """Greedy episodes of the final checkpoint (Ray is down by now); 1 if it fails."""
        from trainer import evaluate

        plan = self.plan
        gif = plan.output_dir / "replay.gif" if plan.evaluate_gif else None
        checkpoint, episodes = self.last_checkpoint, plan.evaluate_episodes
        assert checkpoint is not None and episodes, "run() evaluates only with a checkpoint and episodes"
        try:
            result = evaluate.evaluate(checkpoint, episodes, gif=gif, seed=plan.seed)
        except Exception as exc:  # noqa: BLE001 - a failed evaluation never discards the trained run
            traceback.print_exc(file=sys.stderr)
            self.summary["error"] = "evaluation failed: " + error_paragraph(exc)
            return 1
        self.summary["eval_reward"] = result["mean_return"]
        if gif is not None:
            self.summary["replay_path"] = gif.resolve().as_uri()
        return 0

    def compare(self) -> None:
        """The model comparison (:func:`trainer.evaluate.compare`) into ``summary["model_eval"]``.

        Never fails the trained run: an evaluation that cannot run is reported in its ``error``.
        """
        from trainer import evaluate

        plan = self.plan
        assert self.last_checkpoint is not None and plan.model_eval_episodes
        try:
            result = evaluate.compare(
                self.last_checkpoint, plan.model_eval_episodes, plan.champion, plan.champion_version
            )
        except Exception as exc:  # noqa: BLE001 - a failed evaluation never discards the trained run
            traceback.print_exc(file=sys.stderr)
            result = {
                "candidate": None,
                "champion": None,
                "champion_version": plan.champion_version,
                "error": "evaluation failed: " + error_paragraph(exc),
            }
        self.summary["model_eval"] = result
        log(
            "model comparison: candidate "
            + _mean(result["candidate"])
            + (f", champion v{plan.champion_version} " + _mean(result["champion"]) if plan.champion else "")
        )


def _mean(evaluation: dict[str, Any] | None) -> str:
    return "—" if evaluation is None else f"{evaluation['mean']:.2f} ± {evaluation['std']:.2f}"


def _hold_before_rename() -> None:
    """Wait while the file ``$RLQ_TEST_CHECKPOINT_HOLD`` exists (unset: at once)."""
    hold = os.environ.get(HOLD_ENV)
    while hold and Path(hold).exists():
        time.sleep(0.2)


def checkpoints(output_dir: Path) -> list[Path]:
    """``DIR/checkpoints``' complete checkpoints, newest first (by the iteration they reached).

    Complete: renamed from its ``.partial-`` name with ``rlq_meta.json`` inside; ``final`` counts
    as the iteration it was saved at.
    """
    found: list[tuple[int, float, Path]] = []
    for path in (output_dir / "checkpoints").glob("*"):
        meta = path / "rlq_meta.json"
        if path.name.startswith(PARTIAL) or not meta.is_file():
            continue
        try:
            iteration = int(json.loads(meta.read_text()).get("iteration") or 0)
        except (OSError, ValueError, AttributeError):
            continue
        found.append((iteration, meta.stat().st_mtime, path))
    return [path for *_, path in sorted(found, reverse=True)]


def _quietly(shutdown: Callable[[], Any]) -> None:
    try:
        shutdown()
    except BaseException:  # noqa: BLE001 - shutdown is best effort; the summary is written next
        pass


def error_paragraph(exc: BaseException) -> str:
    """A readable one-paragraph reason, without the traceback Ray embeds in its errors."""
    text = str(exc).strip()
    lines = [line.strip() for line in text.splitlines()]
    keep = [
        line
        for line in lines
        if line and not line.startswith(("Traceback", 'File "', "^", "~")) and not line.startswith("ray::")
    ]
    # Ray task errors end with the original "ExcType: message"; prefer that line.
    best = keep[-1] if keep else ""
    for line in reversed(keep):
        if ":" in line.split(" ")[0] and line[0].isupper():
            best = line
            break
    message = best or type(exc).__name__
    if not message.startswith(type(exc).__name__) and ":" not in message.split(" ")[0]:
        message = f"{type(exc).__name__}: {message}"
    return " ".join(message.split())[:600]
