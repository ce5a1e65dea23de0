"""Ray Jobs compute backend: runs the trainer as a Ray job on a local head or any Ray cluster.

The same class serves both: with no address (``RLQ_RAY_ADDRESS`` unset) it keeps a private local
head running (:mod:`shared.localhost.ray_head`) and the trainer writes under ``runs_dir``; with an
address (KubeRay, a VM cluster) it only talks HTTP to that cluster's Jobs API and reads what the
trainer prints (``RLQ_METRICS`` / ``RLQ_SUMMARY`` lines) from the job logs.

Safety: the entrypoint is a constant string. Ray runs it through a shell, so no request field may
ever reach it; the trainer's argument vector travels as JSON in an environment variable of the
job's runtime env and the trainer reads it back with ``--argv-from-env``.

Idempotency: the submission id is derived from ``request_id``, Ray refuses a second job with the
same submission id, and :meth:`RayJobsBackend.submit` looks the id up first; a redelivered
request therefore finds the first job instead of starting another.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import unquote, urlparse

from pydantic import SecretStr
from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from shared.adapters._redact import scrub
from shared.contracts.environments import CatalogEntry
from shared.contracts.request import TrainingRequest
from shared.contracts.run import Progress
from shared.contracts.trainer import (
    ARGV_ENV,
    CHECKPOINT_EVERY_S,
    CHECKPOINT_FREQ,
    ENTRYPOINT,
    METRICS_MARK,
    SUMMARY_MARK,
    JobEnd,
    TrainerSummary,
    build_argv,
    end_of_exit,
    trainer_time_budget_s,
)
from shared.errors import PermanentError, TransientError
from shared.localhost import ray_head
from shared.ports import Checkpoint, JobState, JobStatus
from shared.settings import Settings

log = logging.getLogger(__name__)

REVIVE_INTERVAL_S = 30.0  # local mode: the least time between two restarts of a silent head


_STATES: dict[str, JobState] = {
    "PENDING": "pending",
    "RUNNING": "running",
    "SUCCEEDED": "succeeded",
    "FAILED": "failed",
    "STOPPED": "stopped",
}
_TERMINAL: frozenset[JobState] = frozenset({"succeeded", "failed", "stopped"})

T = TypeVar("T")


class JobsClient(Protocol):
    """The part of ``ray.job_submission.JobSubmissionClient`` this backend uses."""

    def get_version(self) -> str: ...
    def submit_job(self, **kwargs: Any) -> str: ...
    def get_job_info(self, job_id: str) -> Any: ...
    def get_job_logs(self, job_id: str) -> str: ...
    def stop_job(self, job_id: str) -> bool: ...
    def list_jobs(self) -> list[Any]: ...


ClientFactory = Callable[[str, dict[str, str]], JobsClient]


class RayHttpError(Exception):
    """A non-200 answer from the Jobs API, with its status code (Ray raises a bare RuntimeError)."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.text = text


# --- pure helpers ----------------------------------------------------------------------------


def submission_id_for(request_id: str, attempt: int = 1) -> str:
    """``rlq-<sanitised request_id>-<8 hex>``: unique per request_id, safe in paths and URLs;
    ``-a<attempt>`` after it for a later attempt (a run resumed after its job was lost).

    Sanitising alone could map two ids to one name (``a.b`` / ``a:b``); the hash suffix keeps
    them apart.
    """
    safe = re.sub(r"[^A-Za-z0-9_-]", "-", request_id)[:64]
    digest = hashlib.sha256(request_id.encode("utf-8")).hexdigest()[:8]
    return f"rlq-{safe}-{digest}" + (f"-a{attempt}" if attempt > 1 else "")


def restore_path(uri: str) -> str:
    """A local path from a ``file://`` checkpoint URI (the only scheme a Ray cluster can read)."""
    parsed = urlparse(uri)
    if parsed.scheme != "file":
        raise PermanentError(
            f"restore_from: {parsed.scheme}:// checkpoints cannot be restored on the Ray backend; "
            "use a file:// path the cluster can read",
            reason="InvalidRequest",
        )
    if parsed.netloc not in ("", "localhost"):
        raise PermanentError(
            f"restore_from: file:// URI names a host ({parsed.netloc!r}); use file:///path",
            reason="InvalidRequest",
        )
    path = unquote(parsed.path)
    if not path.startswith("/"):
        raise PermanentError("restore_from: file:// URI must hold an absolute path", reason="InvalidRequest")
    return path


def ray_job_argv(
    request: TrainingRequest,
    *,
    output_dir: str,
    checkpoint_freq: int = CHECKPOINT_FREQ,
    default_run_duration_s: int = 3600,
    max_run_duration_s: int = 4 * 3600,
    env_module: str | None = None,
    checkpoint_every_s: int = CHECKPOINT_EVERY_S,
    resume: bool = False,
) -> list[str]:
    """:func:`shared.contracts.trainer.build_argv` with what a Ray job adds: a time budget, a local restore path.

    ``stop.time_total_s`` is always present (:func:`shared.contracts.trainer.trainer_time_budget_s`), so
    every run is bounded; a ``file://`` checkpoint becomes the path the cluster reads.
    """
    restore = restore_path(request.restore_from) if request.restore_from else None
    # a champion trained elsewhere (azureml://) is not readable here: the run is compared with none
    champion = (
        restore_path(request.champion.checkpoint_path)
        if request.champion and request.champion.checkpoint_path.startswith("file://")
        else None
    )
    return build_argv(
        request,
        output_dir=output_dir,
        checkpoint_freq=checkpoint_freq,
        time_budget_s=trainer_time_budget_s(
            request, default_run_duration_s=default_run_duration_s, max_run_duration_s=max_run_duration_s
        ),
        restore=restore,
        env_module=env_module,
        checkpoint_every_s=checkpoint_every_s,
        resume=resume,
        champion=champion,
    )


def package_runtime_env(entry: CatalogEntry | None) -> dict[str, Any]:
    """What a job's runtime environment adds for a catalogued environment package (Ray's own
    mechanisms, cached by Ray between jobs): a pinned requirement goes to ``pip`` (a virtualenv per
    distinct list, reused by later jobs with the same list); a local wheel or project directory to
    ``py_modules`` (uploaded once under a content hash: a second job with the same files reuses the
    package). Nothing for a built-in or Atari environment."""
    if entry is None:
        return {}
    if entry.requirement is not None:
        return {"pip": [entry.requirement]}
    assert entry.path is not None  # CatalogEntry: exactly one of requirement, path
    path = Path(entry.path)
    if path.is_dir():  # a project: its importable top-level package, flat or src/ layout
        path = next((p for p in (path / entry.top_level, path / "src" / entry.top_level) if p.is_dir()), path)
    return {"py_modules": [str(path)]}


def job_end(state: JobState, *, exit_code: int | None, message: str | None) -> JobEnd | None:
    """How an ended Ray job ended: the trainer's own exit, else lost with its machines.

    A failed job whose runtime env could not be set up never ran the trainer: that is a request
    the cluster cannot run (``bad_request``), not a loss. Ray reports a driver killed by a signal
    as its negative number, an out-of-memory kill as 137 or -9, and a job whose supervisor actor
    or node died with no exit code at all: each ``lost``.
    """
    if state == "succeeded":
        return JobEnd.stopped
    if state == "stopped":
        return JobEnd.canceled
    if state != "failed":
        return None
    if exit_code is None and message and "runtime env" in message.lower().replace("_", " "):
        return JobEnd.bad_request
    return end_of_exit(exit_code)


def latest_checkpoint(output_dir: Path) -> Checkpoint | None:
    """The newest complete checkpoint under ``output_dir/checkpoints`` (renamed from its
    ``.partial-`` name, ``rlq_meta.json`` inside): what a lost job's next attempt resumes from."""
    best: Checkpoint | None = None
    for meta_file in (output_dir / "checkpoints").glob("*/rlq_meta.json"):
        if meta_file.parent.name.startswith(".partial-"):
            continue
        meta = _fresh_json_file(meta_file, 0.0) or {}
        try:
            found = Checkpoint(
                uri=meta_file.parent.resolve().as_uri(),
                iteration=int(meta.get("iteration") or 0),
                timesteps=int(meta.get("timesteps") or 0),
            )
        except (TypeError, ValueError):
            continue
        if best is None or found.iteration > best.iteration:
            best = found
    return best


def _marked_json(lines: Iterable[str], mark: str) -> dict[str, Any] | None:
    """The JSON object after the last ``mark`` among ``lines`` (given newest first)."""
    for line in lines:
        at = line.find(mark)
        if at < 0:
            continue
        try:
            value = json.loads(line[at + len(mark) :])
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def last_marked(text: str, mark: str) -> dict[str, Any] | None:
    """Scan ``text`` from the end for the last ``mark {json}`` line."""
    return _marked_json(reversed(text.splitlines()), mark)


def _tail_line(path: Path, *, chunk: int = 64 * 1024) -> str | None:
    """The last complete non-empty line of a file, reading only its end."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - chunk))
            data = fh.read()
    except OSError:
        return None
    lines = [ln for ln in data.decode("utf-8", "replace").splitlines() if ln.strip()]
    if size > chunk and lines:
        lines = lines[1:]  # the first line of the chunk may be cut
    return lines[-1] if lines else None


_NOISE = re.compile(
    r"^(Traceback|File \"|During handling|The above exception|\^|~|Running entrypoint|"
    r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d|\(\w+ pid=|rlq-trainer: \w+ on |RLQ_)"
)


def last_meaningful_line(text: str) -> str | None:
    """The line a person wants from a log or a traceback: the final ``Error: reason``, not the frames."""
    lines = [ln.strip() for ln in text.splitlines()]
    keep = [ln for ln in lines if ln and not _NOISE.match(ln) and not ln.startswith(("at ", "|"))]
    for ln in reversed(keep):
        head = ln.split(" ", 1)[0]
        if head.endswith(":") and ("Error" in head or "Exception" in head or head[:1].isupper()):
            return ln
    return keep[-1] if keep else None


def readable_error(*, message: str | None, exit_code: int | None, trainer_error: str | None) -> str:
    """One readable sentence for a failed job: what happened to the process, and why if known."""
    message = (message or "").strip()
    head_line = message.splitlines()[0] if message else ""
    if exit_code is None:
        found = re.search(r"failed with exit code (-?\d+)", head_line)
        exit_code = int(found.group(1)) if found else None
    if exit_code in (-9, 137):
        what = "the trainer process was killed (SIGKILL: out of memory, or stopped from outside)"
    elif exit_code in (-15, 143):
        what = "the trainer process was terminated (SIGTERM)"
    elif exit_code == 2:
        what = "the trainer rejected its arguments (exit code 2)"
    elif exit_code == 1:
        what = "training failed (exit code 1)"
    elif exit_code is not None:
        what = f"the trainer exited with code {exit_code}"
    else:
        what = head_line.rstrip(".") or "the Ray job failed"
    detail = trainer_error
    if not detail and message:
        # Ray appends the last logs after the first line; the final error line says why.
        rest = "\n".join(message.splitlines()[1:]) if exit_code is not None else message
        detail = last_meaningful_line(rest)
        if detail and detail.rstrip(".") == what:
            detail = None
    text = f"{what}: {detail}" if detail else what
    return " ".join(text.split())[:600]


# --- the backend -----------------------------------------------------------------------------


_CALL_TIMEOUT = threading.local()  # this thread's current call's timeout (see RayJobsBackend._call)
MIN_CALL_TIMEOUT_S = 2.0  # a local Jobs API answers in milliseconds; a loaded one in well under this


def call_timeout_s(settings: Settings) -> float:
    """How long one Jobs API read of the poller (status, logs, version; with its retries) may take:
    ``status_timeout_s``, but no longer than one poll period (at least ``MIN_CALL_TIMEOUT_S``). A
    head that died mid-run then costs each tick one short wait, and its runs end within a few
    periods, not a few 20 s timeouts. A submit (which uploads the trainer) keeps ``status_timeout_s``."""
    from shared.localhost.config import LocalHostError, Schedule

    try:
        period = Schedule(settings.poll_schedule).period_s()
    except LocalHostError:
        return settings.status_timeout_s
    return max(MIN_CALL_TIMEOUT_S, min(settings.status_timeout_s, period))


def _default_client_factory(timeout_s: float) -> ClientFactory:
    """Builds Ray's own client, adjusted in two places (Ray is imported on first use only).

    Ray's client sends requests without a timeout (a hung head would hang the poller) and turns
    every non-200 answer into a bare RuntimeError (so 404, 400 and 503 look alike).
    """

    def make(address: str, headers: dict[str, str]) -> JobsClient:
        from ray.job_submission import JobSubmissionClient

        class _Client(JobSubmissionClient):
            def __init__(self) -> None:
                self._rlq_timeout_s = timeout_s  # read by the version checks inside __init__
                super().__init__(address, headers=headers)

            def _do_request(self, method: str, endpoint: str, **kwargs: Any) -> Any:
                kwargs.setdefault("timeout", getattr(_CALL_TIMEOUT, "s", None) or self._rlq_timeout_s)
                return super()._do_request(method, endpoint, **kwargs)

            def _raise_error(self, r: Any) -> None:
                raise RayHttpError(r.status_code, r.text)

        return _Client()

    return make


class RayJobsBackend:
    """:class:`shared.ports.ComputeBackend` on the Ray Jobs API."""

    name = "ray"

    def __init__(
        self,
        *,
        address: str | None,
        settings: Settings,
        client_factory: ClientFactory | None = None,
        trainer_package: Path | None = None,
        checkpoint_freq: int = CHECKPOINT_FREQ,
        retry_attempts: int = 3,
    ) -> None:
        self.settings = settings
        self.local = (address or settings.ray_address) is None
        self.address = (
            address
            or settings.ray_address
            or ray_head.local_head_address(settings.data_dir, settings.ray_dashboard_port)
        ).rstrip("/")
        self.call_timeout_s = call_timeout_s(settings)
        self._factory = client_factory or _default_client_factory(settings.status_timeout_s)
        self._client_obj: JobsClient | None = None
        self._token: SecretStr | None = None
        self._trainer_package = Path(trainer_package) if trainer_package else _trainer_package_dir()
        self._checkpoint_freq = checkpoint_freq
        self._retry_attempts = retry_attempts
        # Local mode: one restart of a head that stopped answering at a time, and not every tick.
        self._revive_lock = threading.Lock()
        self._revived_at = float("-inf")

    # -- plumbing ---------------------------------------------------------------------------

    def _resolve_token(self) -> SecretStr | None:
        if self.local:
            return ray_head.local_head_token(self.settings.data_dir, self.settings.ray_auth_token)
        return ray_head.ray_token(self.settings.ray_auth_token)

    def _client(self) -> JobsClient:
        if self._client_obj is None:
            self._token = self._resolve_token()
            self._client_obj = self._guard(
                lambda: self._factory(self.address, ray_head.auth_headers(self._token)), what="connect"
            )
        return self._client_obj

    def _scrub(self, text: str) -> str:
        return scrub(text, self._token.get_secret_value() if self._token is not None else None)

    def _guard(self, fn: Callable[[], T], *, what: str, submit: bool = False) -> T:
        """Call the SDK and translate what it raises into shared.errors (token scrubbed)."""
        from ray.exceptions import AuthenticationError

        try:
            return fn()
        except RayHttpError:
            raise  # callers decide on 404 / 400 first; see _http_error
        except AuthenticationError as err:
            # A deployment problem, not a bad request: keep the request (transient) and say what to fix.
            raise TransientError(
                f"Ray at {self.address} refused rlq's credentials during {what}: set RLQ_RAY_AUTH_TOKEN "
                "(or RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH) to the cluster's token"
            ) from err
        except (ValueError, TypeError) as err:
            if not submit:  # a garbled answer to a read: try again later
                text = f"unreadable answer from Ray during {what}: {err}"[:500]
                raise TransientError(self._scrub(text)) from err
            # Ray's client validates the runtime env before sending it: this job can never start.
            raise PermanentError(
                self._scrub(f"Ray rejected the job during {what}: {err}"), reason="ComputeRejected"
            ) from err
        except OSError as err:  # requests' ConnectionError / Timeout and the builtin ConnectionError
            raise TransientError(
                self._scrub(
                    f"Ray at {self.address} is unreachable during {what}: {type(err).__name__}: {err}"[:500]
                )
            ) from err
        except RuntimeError as err:  # Ray's client: "Version check returned 404", version mismatch…
            raise TransientError(
                self._scrub(f"Ray at {self.address} answered unexpectedly during {what}: {err}"[:500])
            ) from err

    def _http_error(self, err: RayHttpError, *, what: str) -> Exception:
        detail = last_meaningful_line(self._scrub(err.text)) or "no detail"
        text = f"Ray Jobs API answered HTTP {err.status} during {what}: {detail}"[:600]
        if err.status in (408, 425, 429) or err.status >= 500:
            return TransientError(text)
        return PermanentError(text, reason="ComputeRejected")

    def _call(self, fn: Callable[[JobsClient], T], *, what: str, submit: bool = False) -> T:
        """One SDK call with bounded retries (exponential backoff + jitter) on transient faults."""

        timeout_s = self.settings.status_timeout_s if submit else self.call_timeout_s

        def once() -> T:
            client = self._client()
            try:
                return self._guard(lambda: fn(client), what=what, submit=submit)
            except RayHttpError as err:
                if err.status in (408, 425, 429) or err.status >= 500:
                    raise self._http_error(err, what=what) from err
                raise

        retrying = Retrying(
            retry=retry_if_exception_type(TransientError),
            stop=stop_after_attempt(self._retry_attempts) | stop_after_delay(timeout_s),
            wait=wait_exponential_jitter(initial=0.2, max=2.0),
            reraise=True,
        )
        _CALL_TIMEOUT.s = timeout_s
        try:
            return retrying(once)
        finally:
            _CALL_TIMEOUT.s = None

    def output_dir_for(self, request_id: str) -> str:
        """Local mode: absolute, under runs_dir. A remote cluster: relative to the job's working dir."""
        if self.local:
            return str((self.settings.runs_dir / request_id).resolve())
        return f"outputs/{request_id}"

    def portal_url(self, run_id: str) -> str:
        return f"{self.address}/#/jobs/{run_id}"

    # -- ComputeBackend ---------------------------------------------------------------------

    def ensure_compute(self, request: TrainingRequest) -> None:
        """Local mode: start the private head if it is down. Remote: check the cluster answers."""
        if self.local:
            self._ensure_local_head()
        self._call(lambda c: c.get_version(), what="version check")

    def check(self) -> str:
        """:class:`shared.ports.ReadinessProbe`: the Jobs API answers, in one call without retries
        (a health check says how things are now; it never starts or restarts the head)."""
        client = self._client()
        try:
            version = self._guard(client.get_version, what="a health check")
        except RayHttpError as err:
            raise self._http_error(err, what="a health check") from err
        return f"Ray {version} at {self.address}"

    def _ensure_local_head(self) -> None:
        address = ray_head.ensure_local_head(
            data_dir=self.settings.data_dir,
            dashboard_port=self.settings.ray_dashboard_port,
            num_cpus=self.settings.ray_num_cpus,
            token=self.settings.ray_auth_token,
        ).rstrip("/")
        if address != self.address or self._resolve_token() != self._token:
            self._client_obj = None  # the head was (re)started elsewhere or with another token
        self.address = address

    def _revive_local_head(self, err: TransientError) -> bool:
        """Local mode: the head stopped answering. Start it again — one thread at a time, at most
        once per ``REVIVE_INTERVAL_S`` — and say True when it answers. The jobs it ran are gone
        with it: their next status is a 404, a job lost with its machines, so each of their runs
        resumes from its checkpoint as its next attempt."""
        if not self.local or not self._revive_lock.acquire(blocking=False):
            return False
        try:
            if time.monotonic() - self._revived_at < REVIVE_INTERVAL_S:
                return False
            self._revived_at = time.monotonic()
            log.warning("the local Ray head does not answer (%s); starting it again", err)
            self._ensure_local_head()
            return True
        except TransientError as again:
            log.warning("could not start the local Ray head again: %s", again)
            return False
        finally:
            self._revive_lock.release()

    def find(self, request_id: str, attempt: int = 1) -> str | None:
        run_id = submission_id_for(request_id, attempt)
        try:
            self._call(lambda c: c.get_job_info(run_id), what="job lookup")
        except RayHttpError as err:
            if err.status == 404:
                return None
            raise self._http_error(err, what="job lookup") from err
        return run_id

    def submit(self, request: TrainingRequest, attempt: int = 1) -> str:
        existing = self.find(request.request_id, attempt)
        if existing is not None:
            return existing
        run_id = submission_id_for(request.request_id, attempt)
        output_dir = self.output_dir_for(request.request_id)
        package = self.settings.environment_catalog.entry_for(request.env)
        argv = ray_job_argv(
            request,
            output_dir=output_dir,
            checkpoint_freq=self._checkpoint_freq,
            default_run_duration_s=self.settings.default_run_duration_s,
            max_run_duration_s=self.settings.max_run_duration_s,
            env_module=package.module if package else None,
            checkpoint_every_s=self.settings.checkpoint_every_s,
            resume=attempt > 1,
        )
        metadata = {
            "request_id": request.request_id,
            "attempt": str(attempt),
            "experiment": request.experiment,
            "output_dir": output_dir,
            "submitted_by": "rlq",
        }
        with tempfile.TemporaryDirectory(prefix="rlq-job-") as tmp:
            working_dir = _stage_trainer(self._trainer_package, Path(tmp))
            runtime_env = {
                "working_dir": str(working_dir),
                "env_vars": {ARGV_ENV: json.dumps(argv)},
                **package_runtime_env(package),
            }

            def submit_once(client: JobsClient) -> str:
                try:
                    return client.submit_job(
                        entrypoint=ENTRYPOINT,
                        submission_id=run_id,
                        runtime_env=runtime_env,
                        metadata=metadata,
                    )
                except RayHttpError as err:
                    # Another submitter (or a retry after a submit that landed) won: that job is ours too.
                    # Ray answers 400 from its job manager, 500 when the head relays the agent's error.
                    if err.status in (400, 500) and "already exists" in err.text:
                        return run_id
                    raise

            try:
                self._call(submit_once, what="submit", submit=True)
            except RayHttpError as err:
                raise self._http_error(err, what="submit") from err
        log.info("submitted Ray job %s for request %s", run_id, request.request_id)
        return run_id

    def status(self, run_id: str) -> JobStatus:
        try:
            try:
                info = self._call(lambda c: c.get_job_info(run_id), what="status")
            except TransientError as err:
                if not self._revive_local_head(err):
                    raise
                info = self._call(lambda c: c.get_job_info(run_id), what="status")
        except RayHttpError as err:
            if err.status == 404:
                return JobStatus(
                    state="failed",
                    portal_url=self.portal_url(run_id),
                    error=f"Ray has no job {run_id}: the cluster was restarted or the job deleted",
                    end=JobEnd.lost,
                    checkpoint=self._checkpoint_of(run_id),
                )
            raise self._http_error(err, what="status") from err
        raw = getattr(info.status, "value", info.status)
        state = _STATES.get(str(raw))
        if state is None:
            raise TransientError(f"Ray reported an unknown job status {raw!r} for {run_id}")
        meta = info.metadata or {}
        # Files older than the job's start belong to an earlier job; a job not started has none.
        since_s = info.start_time / 1000.0 if info.start_time else float("inf")
        out_dir = self._local_output_dir(meta.get("output_dir"))
        logs: str | None = None

        def job_logs() -> str:
            nonlocal logs
            if logs is None:
                try:
                    logs = self._call(lambda c: c.get_job_logs(run_id), what="job logs")
                except RayHttpError:
                    logs = ""
            return logs

        progress = None
        if out_dir is not None:
            row = _fresh_json_line(out_dir / "metrics.jsonl", since_s)
            progress = _progress(row)
        elif state != "pending":
            progress = _progress(last_marked(job_logs(), METRICS_MARK))

        summary = error = end = checkpoint = None
        if state in _TERMINAL:
            end = job_end(state, exit_code=info.driver_exit_code, message=info.message)
            if out_dir is not None:
                summary = TrainerSummary.read(_fresh_json_file(out_dir / "summary.json", since_s))
            if summary is None:
                summary = TrainerSummary.read(last_marked(job_logs(), SUMMARY_MARK))
            if progress is None and out_dir is not None:
                progress = _progress(last_marked(job_logs(), METRICS_MARK))
            if state == "failed":
                why = summary.error if summary else None
                error = self._scrub(
                    readable_error(
                        message=info.message,
                        exit_code=info.driver_exit_code,
                        trainer_error=str(why) if why else None,
                    )
                )
                if why:  # the trainer said why it failed: its own failure, whatever the exit code
                    end = JobEnd.training_failed
            if end is JobEnd.lost and out_dir is not None:
                checkpoint = latest_checkpoint(out_dir)
        return JobStatus(
            state=state,
            progress=progress,
            summary=summary,
            error=error,
            portal_url=self.portal_url(run_id),
            end=end,
            checkpoint=checkpoint,
        )

    def cancel(self, run_id: str) -> None:
        """Ask Ray to stop the job (SIGTERM, then SIGKILL after RAY_JOB_STOP_WAIT_TIME_S)."""
        try:
            self._call(lambda c: c.stop_job(run_id), what="cancel")
        except RayHttpError as err:
            if err.status == 404:
                return  # nothing to stop
            raise self._http_error(err, what="cancel") from err

    # -- helpers ----------------------------------------------------------------------------

    def _checkpoint_of(self, run_id: str) -> Checkpoint | None:
        """Local mode: the newest checkpoint of the run a (forgotten) job belonged to."""
        if not self.local:
            return None
        for out_dir in self.settings.runs_dir.resolve().glob("*"):
            base = submission_id_for(out_dir.name)
            if run_id == base or run_id.startswith(base + "-a"):
                return latest_checkpoint(out_dir)
        return None

    def _local_output_dir(self, value: str | None) -> Path | None:
        if not self.local or not value:
            return None
        path = Path(value)
        return path if path.is_absolute() else None


def _progress(row: dict[str, Any] | None) -> Progress | None:
    if not row:
        return None
    try:
        return Progress.model_validate(row)
    except ValueError:
        return None


def _fresh(path: Path, since_s: float) -> bool:
    # A file left by an earlier job of the same request id (a restarted head forgets its jobs)
    # must not be read as this job's.
    try:
        return path.stat().st_mtime >= since_s - 2.0
    except OSError:
        return False


def _fresh_json_line(path: Path, since_s: float) -> dict[str, Any] | None:
    if not _fresh(path, since_s):
        return None
    line = _tail_line(path)
    try:
        value = json.loads(line) if line else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _fresh_json_file(path: Path, since_s: float) -> dict[str, Any] | None:
    if not _fresh(path, since_s):
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _trainer_package_dir() -> Path:
    """Where the ``trainer`` package lives, found without importing it (shared never imports trainer)."""
    import importlib.util

    spec = importlib.util.find_spec("trainer")
    if spec is None or not spec.submodule_search_locations:
        raise PermanentError("the trainer package is not installed next to rlq", reason="ComputeUnavailable")
    return Path(next(iter(spec.submodule_search_locations)))


def _stage_trainer(package: Path, tmp: Path) -> Path:
    """A working dir holding only ``trainer/`` (the repository also holds a virtualenv and state)."""
    working_dir = tmp / "job"
    shutil.copytree(
        package,
        working_dir / "trainer",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*", "outputs"),
    )
    return working_dir


__all__ = [
    "ARGV_ENV",
    "ENTRYPOINT",
    "RayHttpError",
    "RayJobsBackend",
    "last_marked",
    "last_meaningful_line",
    "package_runtime_env",
    "ray_job_argv",
    "readable_error",
    "restore_path",
    "submission_id_for",
]
