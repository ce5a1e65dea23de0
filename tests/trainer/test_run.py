"""The run's steps around an algorithm (a stand-in for RLlib's, no Ray): what each ending writes
and exits with. The same endings with real RLlib runs: test_training.py."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from test_metrics import result

from trainer.cancel import CancelToken
from trainer.plan import Plan
from trainer.run import Trainer, error_paragraph
from trainer.sinks import Sinks
from trainer.train import parse_args


class Algorithm:
    """What the loop and the finish call of an RLlib ``Algorithm``."""

    def __init__(self, results: list[dict], during_train=None, during_save=None):
        self.results = iter(results)
        self.during_train = during_train or (lambda calls: None)
        self.during_save = during_save or (lambda: None)
        self.calls = 0
        self.returned = 0  # train() calls that returned a result
        self.saved: list[str] = []
        self.stopped = False

    def train(self) -> dict:
        self.calls += 1
        self.during_train(self.calls)
        self.returned += 1
        return next(self.results)

    def save_to_path(self, path: str) -> None:
        self.during_save()
        Path(path).mkdir(parents=True)
        self.saved.append(Path(path).name.removeprefix(".partial-"))  # written there, then renamed

    def stop(self) -> None:
        self.stopped = True


@pytest.fixture(autouse=True)
def _signals(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def run(tmp_path: Path, algo: Algorithm, *argv: str) -> tuple[int, dict, list[dict]]:
    out = tmp_path / "o"
    plan = Plan(parse_args(["--env", "CartPole-v1", "--output-dir", str(out), *argv]))
    cancel = CancelToken()
    cancel.install()
    trainer = Trainer(plan, cancel)

    def configure() -> None:  # Ray and RLlib left out
        trainer.sinks = Sinks.open(str(out / "metrics.jsonl"))
        trainer.algo = algo

    trainer.configure = configure
    exit_code = trainer.run()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return exit_code, json.loads((out / "summary.json").read_text()), rows


def steps(*timesteps: int) -> list[dict]:
    return [result(ts, ts // 10, mean=float(ts), completed=1) for ts in timesteps]


def test_a_met_stop_criterion_exits_0_with_the_final_checkpoint(tmp_path, capsys):
    algo = Algorithm(steps(100, 200, 300))
    exit_code, summary, rows = run(
        tmp_path, algo, "--stop", '{"training_iteration": 2}', "--checkpoint-freq", "2"
    )
    assert exit_code == 0
    assert [row["iteration"] for row in rows] == [1, 2]
    assert algo.saved == ["iter_000002", "final"] and algo.stopped
    assert summary["stop_reason"] == "iterations_limit"
    assert (summary["iterations"], summary["timesteps"], summary["best_reward"]) == (2, 200, 150.0)
    assert summary["checkpoint_path"] == (tmp_path / "o" / "checkpoints" / "final").as_uri()
    meta = json.loads((tmp_path / "o" / "checkpoints" / "final" / "rlq_meta.json").read_text())
    assert (meta["iteration"], meta["timesteps"], meta["episodes_total"]) == (2, 200, 20)
    stdout = capsys.readouterr().out.splitlines()
    assert [line.split(" ")[0] for line in stdout] == ["RLQ_METRICS", "RLQ_METRICS", "RLQ_SUMMARY"]


def test_sigterm_during_an_iteration_exits_143_after_it_with_the_final_checkpoint(tmp_path):
    def cancel_in_second(calls: int) -> None:
        if calls == 2:
            signal.raise_signal(signal.SIGTERM)  # recorded only: train() returns

    algo = Algorithm(steps(100, 200, 300), during_train=cancel_in_second)
    exit_code, summary, rows = run(tmp_path, algo, "--stop", '{"training_iteration": 3}')
    assert exit_code == 143
    assert algo.returned == 2  # the iteration the signal came in finished
    assert [row["iteration"] for row in rows] == [1]  # and its result is dropped
    assert algo.saved == ["final"] and algo.stopped
    assert summary["stop_reason"] == "canceled" and summary["iterations"] == 1
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN  # a second cancel cannot cut the summary


def test_a_signal_while_finishing_is_only_recorded(tmp_path):
    algo = Algorithm(steps(100), during_save=lambda: signal.raise_signal(signal.SIGTERM))
    exit_code, summary, _ = run(tmp_path, algo, "--stop", '{"training_iteration": 1}')
    assert exit_code == 0 and algo.saved == ["final"]
    assert summary["stop_reason"] == "iterations_limit" and summary["checkpoint_path"].endswith("/final")


def test_a_failure_exits_1_with_the_error_and_no_final_checkpoint(tmp_path):
    def fail(calls: int) -> None:
        if calls == 2:
            raise ValueError("the env exploded")

    algo = Algorithm(steps(100, 200), during_train=fail)
    exit_code, summary, rows = run(tmp_path, algo, "--stop", '{"training_iteration": 3}')
    assert exit_code == 1
    assert len(rows) == 1 and algo.saved == [] and algo.stopped
    assert summary["stop_reason"] == "error" and summary["error"] == "ValueError: the env exploded"
    assert summary["checkpoint_path"] is None


def test_warm_up_iterations_only_meet_the_time_limit(tmp_path):
    algo = Algorithm(steps(0, 0, 0))
    exit_code, summary, rows = run(tmp_path, algo, "--stop", '{"time_total_s": 0}')
    assert exit_code == 0 and rows == [] and algo.calls == 1
    assert summary["stop_reason"] == "time_limit" and summary["iterations"] == 0
    assert algo.saved == ["final"]


def test_error_paragraph_drops_traceback():
    text = (
        'ray::SingleAgentEnvRunner.sample() (pid=1)\n  File "x.py", line 3, in f\n    boom()\n'
        "ValueError: the env exploded"
    )
    msg = error_paragraph(RuntimeError(text))
    assert msg == "ValueError: the env exploded"
    assert "File" not in msg and "\n" not in msg


# --- checkpoints that bound a lost job's loss -------------------------------------------------------


class Restorable(Algorithm):
    """An algorithm whose ``restore_from_path`` fails for the checkpoints named in ``broken``."""

    def __init__(self, results: list[dict], broken: tuple[str, ...] = (), **kwargs):
        super().__init__(results, **kwargs)
        self.broken = broken
        self.restored: list[str] = []

    def restore_from_path(self, path: str) -> None:
        if Path(path).name in self.broken:
            raise ValueError(f"damaged checkpoint {path}")
        self.restored.append(Path(path).name)


def checkpoint(out: Path, name: str, iteration: int, timesteps: int, time_total_s: float = 0.0) -> Path:
    path = out / "checkpoints" / name
    (path / "learner_group").mkdir(parents=True)
    meta = {"iteration": iteration, "timesteps": timesteps, "time_total_s": time_total_s}
    (path / "rlq_meta.json").write_text(json.dumps(meta))
    return path


def test_a_checkpoint_killed_while_written_is_never_the_latest(tmp_path):
    from trainer.run import checkpoints

    class DiesWhileSaving(Algorithm):
        def save_to_path(self, path: str) -> None:
            super().save_to_path(path)
            if len(self.saved) == 2:
                raise KeyboardInterrupt("killed while saving")  # half written: no rlq_meta.json yet

    algo = DiesWhileSaving(steps(100, 200, 300))
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, algo, "--stop", '{"training_iteration": 3}', "--checkpoint-freq", "1")
    out = tmp_path / "o"
    assert (out / "checkpoints" / ".partial-iter_000002").is_dir()  # what the kill left
    assert [p.name for p in checkpoints(out)] == ["iter_000001"]


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    algo = Algorithm(steps(100, 200, 300, 400, 500))
    run(
        tmp_path,
        algo,
        "--stop",
        '{"training_iteration": 5}',
        "--checkpoint-freq",
        "1",
        "--checkpoint-keep",
        "2",
    )
    kept = sorted(p.name for p in (tmp_path / "o" / "checkpoints").iterdir())
    assert kept == ["final", "iter_000004", "iter_000005"]


def test_checkpoints_by_wall_time_between_iteration_checkpoints(tmp_path, monkeypatch):
    import trainer.run as run_module

    now = [1000.0]
    monkeypatch.setattr(run_module.time, "time", lambda: now[0])

    def tick(calls: int) -> None:
        now[0] += 40.0  # each iteration takes 40 s

    algo = Algorithm(steps(100, 200, 300, 400, 500), during_train=tick)
    run(
        tmp_path,
        algo,
        "--stop",
        '{"training_iteration": 5}',
        "--checkpoint-freq",
        "0",
        "--checkpoint-every-s",
        "100",
    )
    assert algo.saved == ["iter_000003", "final"]  # 120 s after the start; then 80 s to the end


def test_resume_falls_back_to_the_checkpoint_before_a_damaged_one_and_counts_on(tmp_path):
    out = tmp_path / "o"
    checkpoint(out, "iter_000002", 2, 200, time_total_s=30.0)
    checkpoint(out, "iter_000003", 3, 300, time_total_s=45.0)
    algo = Restorable(steps(300, 400), broken=("iter_000003",))
    exit_code, summary, rows = run(tmp_path, algo, "--stop", '{"training_iteration": 4}', "--resume")
    assert exit_code == 0 and algo.restored == ["iter_000002"]
    assert [r["iteration"] for r in rows] == [3, 4]  # the counters go on from the checkpoint
    assert rows[0]["time_total_s"] >= 30.0  # so does the training time, the time limit's clock
    assert summary["resumed_from"].endswith("/checkpoints/iter_000002")


def test_a_warm_start_from_another_runs_checkpoint_starts_its_clock_at_zero(tmp_path):
    parent = checkpoint(tmp_path / "parent", "final", 3, 300, time_total_s=3000.0)
    algo = Restorable(steps(400))
    _, _, rows = run(tmp_path, algo, "--stop", '{"training_iteration": 4}', "--restore", str(parent))
    assert [r["iteration"] for r in rows] == [4] and rows[0]["time_total_s"] < 60
