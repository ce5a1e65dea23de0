"""The compute twin: an instant compute backend with the semantics the service relies on.

It keeps the promises of the real backends (``tests/contract/compute_backend_contract.py``): a
job is found by its request, ``submit`` of a request already submitted returns that job (as Ray's
submission ids and Azure ML's job names do), cancel can be repeated. Because ``submit`` deduplicates
by itself, the number of jobs cannot show a service that submits twice: ``submits`` counts every
``submit`` call (recorded in the same transaction as the job it creates, so a SIGKILL leaves both
or neither), and the guarantee suites assert one call per request. State lives in SQLite (a file,
or ``:memory:``) so it survives a SIGKILL of the process under test, which the crash-matrix tests
rely on.

Nothing the twin reports was trained: a finished job's summary carries ``simulated: true``, which
the service copies into the completion message, and the settings refuse ``RLQ_BACKEND=twin``
outside local mode unless ``RLQ_ALLOW_TWIN`` is set.
"""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
import uuid
from pathlib import Path

from shared.contracts.models import Evaluation
from shared.contracts.request import TrainingRequest
from shared.contracts.run import Progress
from shared.contracts.trainer import MODEL_EVAL_SEED, ModelEval, TrainerSummary
from shared.errors import TransientError
from shared.ports import JobStatus

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
  run_id TEXT PRIMARY KEY, request_id TEXT NOT NULL, polls INTEGER NOT NULL DEFAULT 0,
  state TEXT NOT NULL, target REAL, created_at REAL NOT NULL, canceled INTEGER NOT NULL DEFAULT 0,
  episodes INTEGER, champion TEXT, champion_version INTEGER);
CREATE INDEX IF NOT EXISTS jobs_request ON jobs(request_id);
CREATE TABLE IF NOT EXISTS ensure_calls (request_id TEXT NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS submit_calls (request_id TEXT NOT NULL, at REAL NOT NULL);
"""


class ComputeTwin:
    """Jobs finish after ``polls_to_finish`` status calls, each status call taking ``status_latency_s``.

    ``status_error_rate`` makes that share of status calls raise TransientError (poll soak tests);
    ``outcome`` is what finished jobs report ("succeeded" or "failed").
    """

    name = "twin"

    def __init__(
        self,
        path: str | Path = ":memory:",
        *,
        polls_to_finish: int = 2,
        status_latency_s: float = 0.0,
        status_error_rate: float = 0.0,
        outcome: str = "succeeded",
        seed: int | None = None,
    ) -> None:
        self.polls_to_finish = polls_to_finish
        self.status_latency_s = status_latency_s
        self.status_error_rate = status_error_rate
        self.outcome = outcome
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=30000")
        self._db.executescript(_SCHEMA)
        for column in ("episodes INTEGER", "champion TEXT", "champion_version INTEGER"):
            try:  # a twin file from before the model comparison: add its columns
                self._db.execute(f"ALTER TABLE jobs ADD COLUMN {column}")
            except sqlite3.OperationalError:
                pass  # the column is there already

    def check(self) -> str:
        """:class:`shared.ports.ReadinessProbe`: the twin's own database answers."""
        with self._lock:
            self._db.execute("SELECT COUNT(*) FROM ensure_calls").fetchone()
        return "the compute twin answers"

    # --- ComputeBackend ----------------------------------------------------------------------
    def ensure_compute(self, request: TrainingRequest) -> None:
        with self._lock:
            self._db.execute("INSERT INTO ensure_calls VALUES (?, ?)", (request.request_id, time.time()))

    def find(self, request_id: str, attempt: int = 1) -> str | None:
        key = attempt_key(request_id, attempt)
        with self._lock:
            row = self._db.execute(
                "SELECT run_id FROM jobs WHERE request_id=? ORDER BY created_at LIMIT 1", (key,)
            ).fetchone()
        return row[0] if row else None

    def submit(self, request: TrainingRequest, attempt: int = 1) -> str:
        run_id = f"twin-{uuid.uuid4().hex[:12]}"
        key = attempt_key(request.request_id, attempt)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")  # the call and its job: both or neither
            try:
                self._db.execute("INSERT INTO submit_calls VALUES (?, ?)", (key, time.time()))
                self._db.execute(
                    "INSERT INTO jobs (run_id, request_id, state, target, created_at, episodes, champion,"
                    " champion_version) SELECT ?,?,?,?,?,?,?,? WHERE NOT EXISTS"
                    " (SELECT 1 FROM jobs WHERE request_id=?)",
                    (
                        run_id,
                        key,
                        "pending",
                        request.stop.episode_reward_mean,
                        time.time(),
                        request.eval_episodes,
                        request.champion.checkpoint_path if request.champion else None,
                        request.champion.version if request.champion else None,
                        key,
                    ),
                )
                row = self._db.execute(
                    "SELECT run_id FROM jobs WHERE request_id=? ORDER BY created_at LIMIT 1", (key,)
                ).fetchone()
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return str(row[0])

    def status(self, run_id: str) -> JobStatus:
        if self.status_latency_s:
            time.sleep(self.status_latency_s)
        if self.status_error_rate and self._rng.random() < self.status_error_rate:
            raise TransientError("twin: status temporarily unavailable (injected)")
        with self._lock:
            row = self._db.execute(
                "SELECT polls, state, target, canceled, episodes, champion, champion_version FROM jobs"
                " WHERE run_id=?",
                (run_id,),
            ).fetchone()
            if row is None:
                return JobStatus(state="failed", error=f"no job {run_id}")
            polls, state, target, canceled, episodes, champion, champion_version = row
            if state in ("pending", "running"):
                polls += 1
                state = (
                    "stopped" if canceled else (self.outcome if polls >= self.polls_to_finish else "running")
                )
                self._db.execute("UPDATE jobs SET polls=?, state=? WHERE run_id=?", (polls, state, run_id))
        reward = target if target is not None else 1.0
        progress = Progress(
            iteration=polls,
            time_total_s=float(polls),
            timesteps=polls * 1000,
            episode_reward_mean=reward * min(1.0, polls / max(1, self.polls_to_finish)),
        )
        summary = None
        if state == "succeeded":
            summary = TrainerSummary(
                final_reward=reward,
                best_reward=reward,
                iterations=polls,
                timesteps=polls * 1000,
                duration_s=float(polls),
                stop_reason="reward_reached",
                checkpoint_path=f"file:///twin/{run_id}/checkpoints/final",
                model_eval=self._model_eval(reward, episodes, champion, champion_version),
                simulated=True,
            )
        elif state == "failed":
            summary = TrainerSummary(
                error="twin: the job failed (injected)", stop_reason="error", simulated=True
            )
        elif state == "stopped":
            summary = TrainerSummary(stop_reason="canceled", simulated=True)
        return JobStatus(
            state=state, progress=progress, summary=summary, error=summary.error if summary else None
        )

    def _model_eval(
        self, reward: float, episodes: int | None, champion: str | None, version: int | None
    ) -> ModelEval:
        """The model comparison a finished job reports: every episode returns the job's target
        (``stop.episode_reward_mean``, else 1.0); the champion's, its own job's target."""
        n = episodes or 1
        seeds = [MODEL_EVAL_SEED + i for i in range(n)]

        def played(mean: float) -> Evaluation:
            return Evaluation(episodes=n, mean=mean, std=0.0, min=mean, max=mean, seeds=seeds)

        theirs = None
        if champion is not None:
            their_run = champion.removeprefix("file:///twin/").split("/", 1)[0]
            with self._lock:
                found = self._db.execute("SELECT target FROM jobs WHERE run_id=?", (their_run,)).fetchone()
            if found is not None:
                theirs = played(found[0] if found[0] is not None else 1.0)
        return ModelEval(candidate=played(reward), champion=theirs, champion_version=version)

    def cancel(self, run_id: str) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET canceled=1, state=CASE WHEN state IN ('pending','running') "
                "THEN 'stopped' ELSE state END WHERE run_id=?",
                (run_id,),
            )

    # --- inspection (tests, benchmarks) ------------------------------------------------------
    def jobs_per_request(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT request_id, COUNT(*) FROM jobs GROUP BY request_id").fetchall()
        return dict(rows)

    def submits(self) -> dict[str, int]:
        """``submit`` calls per request: what the service asked for, not what the twin kept (a job is
        created by the first call only, so ``jobs_per_request`` stays 1 however often it is asked)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT request_id, COUNT(*) FROM submit_calls GROUP BY request_id"
            ).fetchall()
        return dict(rows)

    def job(self, run_id: str) -> dict[str, object] | None:
        with self._lock:
            cur = self._db.execute("SELECT * FROM jobs WHERE run_id=?", (run_id,))
            row = cur.fetchone()
            return dict(zip([c[0] for c in cur.description], row, strict=True)) if row else None

    def close(self) -> None:
        self._db.close()

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"ComputeTwin({json.dumps(self.jobs_per_request())[:80]})"


def attempt_key(request_id: str, attempt: int) -> str:
    """The twin's job key: the request id, ``~a<attempt>`` after it for a later attempt."""
    return request_id if attempt == 1 else f"{request_id}~a{attempt}"
