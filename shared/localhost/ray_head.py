"""A local Ray head for one-machine mode, with Ray's token authentication left on.

Why a module of its own: the Ray Jobs backend talks to *a* cluster through an address; only local
mode has to create that cluster, keep it to itself (its own temp dir and ports, so it never trips
over another Ray on the same machine) and stop exactly the processes it started (``ray stop``
would kill every Ray process of the user, so it is never used here).

Authentication (Ray 2.60; see docs/ray.md): a head started with ``RAY_AUTH_MODE=token`` makes its
dashboard / Jobs API refuse any request without ``Authorization: Bearer <token>`` (401 without a
token, 403 with a wrong one). Ray resolves the token in each of its processes from
``RAY_AUTH_TOKEN``, else the file named by ``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``.
The head started here always reads it from ``<data_dir>/ray/auth_token`` (mode 0600) through
``RAY_AUTH_TOKEN_PATH``; the token itself never enters an argv, a log line or an error text.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from shared.errors import PermanentError, TransientError

log = logging.getLogger(__name__)

DEFAULT_DASHBOARD_PORT = 8265
DEFAULT_GCS_PORT = 6379
# `ray start`'s worker ports (--min-worker-port / --max-worker-port defaults, ray/scripts/scripts.py):
# Ray reserves the whole range, and refuses a head whose other ports fall inside it
# (ray/_private/parameter.py, "is trying to use a port number … used by other components").
RAY_WORKER_PORTS = range(10002, 19999 + 1)
LOOPBACK = "127.0.0.1"

# Ray's own token sources, highest precedence first (ray/_private/authentication, Ray 2.60).
TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
AUTH_MODE_ENV = "RAY_AUTH_MODE"
# Variables that would point `ray start` (and the Jobs client) at some other cluster or token.
_SCRUBBED_ENV = (TOKEN_ENV, "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")
# Set in the environment of `ray start`; every process of the head inherits it.
HEAD_MARK_ENV = "RLQ_RAY_HEAD"
# Ray's worker_niceness (RayConfig, read from the raylet's environment): added to the raylet's own.
WORKER_NICENESS_ENV = "RAY_worker_niceness"
# Ray (ray/_private/services.py get_node_ip_address, Ray 2.60) replaces --node-ip-address=127.0.0.1
# by the machine's address unless this is 0; with it, GCS, raylet, agents, workers and the client
# server take 127.0.0.1 as the node address and bind to loopback (see docs/ray.md).
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}

# Heads this process started, so stop_local_head() without arguments stops what it started.
_STARTED: dict[Path, HeadInfo] = {}
# Heads this process uses: data_dir -> the descriptor holding its user lock (see head_users).
_USERS: dict[Path, int] = {}


@dataclass(frozen=True)
class HeadInfo:
    """What rlq records about a local head it started (``<data_dir>/ray/head.json``)."""

    address: str
    dashboard_port: int
    gcs_port: int
    temp_dir: str
    started_by: int | None = None  # pid of the process that started it


def recorded_head(data_dir: Path) -> HeadInfo | None:
    """The head rlq last started for ``data_dir``, as recorded in ``<data_dir>/ray/head.json``
    (None when there is no readable record)."""
    try:
        data = json.loads((Path(data_dir).resolve() / "ray" / "head.json").read_text())
        return HeadInfo(**data)
    except (OSError, ValueError, TypeError):
        return None


def local_head_address(data_dir: Path, dashboard_port: int) -> str:
    """The Jobs API address of the local head of ``data_dir``: the one its service recorded when it
    started the head, else the address it would start one on. A command run beside ``rlq serve``
    (``rlq cancel``) thus asks that head, not whatever Ray answers on the default port."""
    head = recorded_head(data_dir)
    return head.address if head is not None else f"http://{LOOPBACK}:{dashboard_port}"


# --- tokens ----------------------------------------------------------------------------------


def default_token_path() -> Path:
    """Ray's default token file (``ray get-auth-token --generate`` writes it)."""
    return Path.home() / ".ray" / "auth_token"


def local_token_path(data_dir: Path) -> Path:
    """The token file of the local head rlq runs for ``data_dir``."""
    return Path(data_dir).resolve() / "ray" / "auth_token"


def _read_token_file(path: Path) -> SecretStr | None:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return SecretStr(text) if text else None


def _as_secret(token: SecretStr | str | None) -> SecretStr | None:
    if token is None:
        return None
    value = token.get_secret_value() if isinstance(token, SecretStr) else str(token)
    return SecretStr(value.strip()) if value.strip() else None


def ray_token(explicit: SecretStr | str | None = None) -> SecretStr | None:
    """The token a client should present: rlq's setting, else Ray's own sources in Ray's order.

    ``RLQ_RAY_AUTH_TOKEN`` → ``RAY_AUTH_TOKEN`` → the file in ``RAY_AUTH_TOKEN_PATH`` →
    ``~/.ray/auth_token``; None when there is none (a cluster with auth off needs none).
    """
    for candidate in (_as_secret(explicit), _as_secret(os.environ.get(TOKEN_ENV))):
        if candidate is not None:
            return candidate
    path = os.environ.get(TOKEN_PATH_ENV)
    if path:
        return _read_token_file(Path(path).expanduser())
    return _read_token_file(default_token_path())


def local_head_token(data_dir: Path, explicit: SecretStr | str | None = None) -> SecretStr | None:
    """The token of the local head for ``data_dir``: the file it was started with, if any, else
    rlq's setting. Never Ray's shared ``~/.ray/auth_token``: that is another head's token."""
    return _read_token_file(local_token_path(data_dir)) or _as_secret(explicit)


def head_token(data_dir: Path, explicit: SecretStr | str | None = None) -> SecretStr:
    """The token a local head for ``data_dir`` starts with: rlq's setting (``RLQ_RAY_AUTH_TOKEN``),
    else the one this data dir already had, else a fresh one (256 bits, Ray's own format). Each
    data dir's head has its own: a job submitter holding another head's token (the shared
    ``~/.ray/auth_token``, ``RAY_AUTH_TOKEN``) is refused by this one."""
    return (
        _as_secret(explicit)
        or _read_token_file(local_token_path(data_dir))
        or SecretStr(secrets.token_hex(32))
    )


def auth_headers(token: SecretStr | None) -> dict[str, str]:
    """HTTP headers that authenticate to a Ray dashboard / Jobs API (empty without a token)."""
    if token is None:
        return {}
    return {"Authorization": f"Bearer {token.get_secret_value()}"}


def _write_token(path: Path, token: SecretStr) -> None:
    """Write the token 0600, atomically (a reader never sees half a token)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, token.get_secret_value().encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


# --- probing ---------------------------------------------------------------------------------


def probe_dashboard(address: str, token: SecretStr | None, *, timeout_s: float = 2.0) -> int | None:
    """HTTP status of ``GET /api/version`` with the token; None when nothing answers.

    200: a Ray Jobs API that accepts the token; 401/403: a Ray that refuses it.
    """
    try:
        r = httpx.get(
            f"{address.rstrip('/')}/api/version",
            headers=auth_headers(token),
            timeout=timeout_s,
            follow_redirects=False,
        )
    except httpx.HTTPError:
        return None
    return r.status_code


def _port_free(port: int) -> bool:
    """Whether a server could bind ``port`` on loopback now (as Ray's servers do: SO_REUSEADDR, so
    connections of an earlier server still in TIME_WAIT do not count as taking the port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def head_temp_dir(data_dir: Path) -> str:
    """The private Ray temp dir (sessions, logs, sockets) of the local head for ``data_dir``."""
    # Ray puts unix sockets under its temp dir and a socket path must stay under 107 bytes,
    # so the temp dir is short and derived from data_dir (the same data_dir: the same head).
    digest = hashlib.sha256(str(data_dir).encode("utf-8")).hexdigest()[:12]
    return f"/tmp/rlq-ray-{digest}"


def _ray_executable() -> str:
    """The ``ray`` script of this interpreter's environment (never whatever PATH finds first)."""
    candidate = Path(sys.executable).parent / "ray"
    if not candidate.exists():
        raise TransientError(
            f"the ray command was not found next to {sys.executable}; install rlq with the [ray] extra"
        )
    return str(candidate)


@contextlib.contextmanager
def _locked(path: Path, *, timeout_s: float) -> Iterator[None]:
    """An exclusive file lock, so two processes never start (or stop) one data_dir's head at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TransientError(f"another process is starting the local Ray head ({path})") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


# --- who uses a head -------------------------------------------------------------------------
#
# Every process that asks for the local head of a data_dir holds an exclusive lock on its own
# file ``<data_dir>/ray/users/<pid>.lock`` for as long as it lives (the kernel drops the lock when
# the process ends, however it ends, SIGKILL included). A process stopping the head first looks
# for other live users: while there is one, the head stays up for it (shared ownership, last one
# out stops it). A file whose lock can be taken belongs to a process that is gone.


def _users_dir(data_dir: Path) -> Path:
    return Path(data_dir).resolve() / "ray" / "users"


def _register_user(data_dir: Path) -> None:
    data_dir = Path(data_dir).resolve()
    if data_dir in _USERS:
        return
    users = _users_dir(data_dir)
    users.mkdir(parents=True, exist_ok=True)
    path = users / f"{os.getpid()}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # a forked child of this process still holds it: the parent is the user
        os.close(fd)
        return
    what = " ".join(Path(a).name if i == 0 else a for i, a in enumerate(sys.argv))[:200] or sys.executable
    os.ftruncate(fd, 0)
    os.write(fd, what.encode("utf-8", "replace"))
    _USERS[data_dir] = fd


def _unregister_user(data_dir: Path) -> None:
    data_dir = Path(data_dir).resolve()
    fd = _USERS.pop(data_dir, None)
    if fd is None:
        return
    with contextlib.suppress(OSError):
        (_users_dir(data_dir) / f"{os.getpid()}.lock").unlink()
    os.close(fd)


def head_users(data_dir: Path) -> dict[int, str]:
    """Other live processes using the local head of ``data_dir``: pid → their command line."""
    users = _users_dir(data_dir)
    found: dict[int, str] = {}
    for path in sorted(users.glob("*.lock")) if users.is_dir() else []:
        try:
            pid = int(path.stem)
        except ValueError:
            continue
        if pid == os.getpid():
            continue
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # held: that process is alive
            found[pid] = os.pread(fd, 400, 0).decode("utf-8", "replace").strip()
        else:  # nobody holds it: the process is gone
            with contextlib.suppress(OSError):
                path.unlink()
        finally:
            os.close(fd)
    return found


def _describe_users(users: dict[int, str]) -> str:
    return ", ".join(f"pid {pid} ({what or '?'})" for pid, what in sorted(users.items()))


# --- start / stop ----------------------------------------------------------------------------


def ensure_local_head(
    *,
    data_dir: Path,
    dashboard_port: int = DEFAULT_DASHBOARD_PORT,
    num_cpus: int | None = None,
    timeout_s: float = 60.0,
    token: SecretStr | str | None = None,
    object_store_memory_bytes: int | None = None,
) -> str:
    """Return the Jobs API address of a local Ray head, starting one when none answers.

    Idempotent, and safe when several processes call it at once (a file lock under data_dir).
    A Ray that already answers on ``dashboard_port`` and accepts the token is used as it is (a
    head left by an earlier process — an ``rlq serve`` that was SIGKILLed — is taken over). The
    calling process counts as a user of the head until it ends or calls :func:`stop_local_head`.

    What is left of a head that lost its dashboard (a crash, a killed process, a stop that did
    not finish: ``monitor.py``, the Ray client server…) is stopped and a new head started; a
    dashboard that is there but too busy to answer is left alone (it may still run jobs).
    """
    check_dashboard_port(dashboard_port)
    data_dir = Path(data_dir).resolve()
    ray_dir = data_dir / "ray"
    address = f"http://{LOOPBACK}:{dashboard_port}"
    _register_user(data_dir)
    with _locked(ray_dir / "head.lock", timeout_s=timeout_s):
        status = probe_dashboard(address, local_head_token(data_dir, token))
        if status == 200:
            return address
        if status in (401, 403):
            raise TransientError(
                f"a Ray dashboard on {address} refuses rlq's token (HTTP {status}); stop it, or point "
                "RLQ_RAY_DASHBOARD_PORT at a free port, or set RLQ_RAY_AUTH_TOKEN to its token"
            )
        temp_dir = head_temp_dir(data_dir)
        leftovers = _head_processes(temp_dir)
        listeners = _listeners(dashboard_port)
        ours = {p.pid for p in leftovers}
        if listeners and not set(listeners) & ours:
            if any(_mark_of(pid) for pid in listeners):  # another data dir's head, slow to answer
                raise TransientError(
                    f"the Ray head on {address} (started by rlq for another data dir) did not answer "
                    "within 2 s; it is busy or starting"
                )
            raise TransientError(
                f"port {dashboard_port} on {LOOPBACK} is taken by {_describe_pids(listeners)}, "
                "which is not this data dir's Ray head; set RLQ_RAY_DASHBOARD_PORT to a free port"
            )
        if status is not None and not ours:
            raise TransientError(
                f"port {dashboard_port} on {LOOPBACK} is taken by a server answering HTTP {status} that is "
                "not this data dir's Ray head; set RLQ_RAY_DASHBOARD_PORT to a free port"
            )
        if listeners or status is not None:
            # Our dashboard holds the port but does not answer in time: busy, not dead. Never kill
            # it automatically; say exactly what to end.
            raise TransientError(
                f"the local Ray head for {data_dir} is running but its dashboard does not answer on "
                f"{address}; if it stays so, end it with `kill {' '.join(str(p) for p in sorted(ours))}` "
                "and rlq starts a new one"
            )
        if leftovers:
            log.warning(
                "the local Ray head for %s has lost its dashboard; stopping what is left of it "
                "(%d processes: %s) and starting a new one",
                data_dir,
                len(leftovers),
                _describe_pids([p.pid for p in leftovers]),
            )
            _kill_head_processes(temp_dir, grace_s=2)
        if not _wait_port_free(dashboard_port, timeout_s=10):
            raise TransientError(
                f"port {dashboard_port} on {LOOPBACK} is still in use by {_describe_pids(_listeners(dashboard_port))}; "
                "set RLQ_RAY_DASHBOARD_PORT to a free port"
            )
        head = _start_head(
            data_dir=data_dir,
            dashboard_port=dashboard_port,
            num_cpus=num_cpus,
            timeout_s=timeout_s,
            token=token,
            object_store_memory_bytes=object_store_memory_bytes,
        )
        _STARTED[data_dir] = head
        return head.address


def check_dashboard_port(port: int) -> None:
    """Refuse, as permanent, a dashboard port no local head can ever start on."""
    lo, hi = RAY_WORKER_PORTS.start, RAY_WORKER_PORTS.stop - 1
    if port in RAY_WORKER_PORTS or not 1 <= port <= 65535:
        raise PermanentError(
            f"RLQ_RAY_DASHBOARD_PORT={port} can never work: ports {lo}-{hi} are Ray's worker ports, which "
            f"`ray start` reserves. Allowed: 1-{lo - 1} or {hi + 1}-65535 "
            "(permanent: change the setting; retrying will not help)",
            reason="InvalidSetting",
        )


def _wait_port_free(port: int, *, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not _port_free(port):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.25)
    return True


def _start_head(
    *,
    data_dir: Path,
    dashboard_port: int,
    num_cpus: int | None,
    timeout_s: float,
    token: SecretStr | str | None,
    object_store_memory_bytes: int | None,
) -> HeadInfo:
    ray_dir = data_dir / "ray"
    ray_dir.mkdir(parents=True, exist_ok=True)
    resolved = head_token(data_dir, token)
    token_file = local_token_path(data_dir)
    _write_token(token_file, resolved)

    temp_dir = head_temp_dir(data_dir)
    gcs_port = DEFAULT_GCS_PORT if _port_free(DEFAULT_GCS_PORT) else free_port()
    argv = [
        _ray_executable(),
        "start",
        "--head",
        f"--node-ip-address={LOOPBACK}",
        f"--port={gcs_port}",
        f"--dashboard-host={LOOPBACK}",
        f"--dashboard-port={dashboard_port}",
        # Defaults (52365, 10001) would collide with any other Ray on the machine.
        f"--dashboard-agent-listen-port={free_port()}",
        f"--ray-client-server-port={free_port()}",
        f"--temp-dir={temp_dir}",
        "--include-dashboard=true",
        "--disable-usage-stats",
    ]
    if num_cpus is not None:
        argv.append(f"--num-cpus={int(num_cpus)}")
    if object_store_memory_bytes is not None:
        argv.append(f"--object-store-memory={int(object_store_memory_bytes)}")

    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
    env[AUTH_MODE_ENV] = "token"
    env[TOKEN_PATH_ENV] = str(token_file)
    env.update(LOOPBACK_ENV)
    # Every process of this head (and every job it runs) inherits the mark: stop_local_head finds
    # them all by it, the ones whose command line does not name the temp dir included.
    env[HEAD_MARK_ENV] = temp_dir
    # Job entrypoints run `python …` through a shell: make it this environment's python.
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    # Give a canceled trainer time to save its final checkpoint and summary (Ray's default: 3 s).
    env.setdefault("RAY_JOB_STOP_WAIT_TIME_S", "30")
    # Ray starts worker processes 15 niceness steps below the raylet (RayConfig worker_niceness):
    # on a local head the actors (EnvRunners, Learner) are the workload, not background work. At
    # niceness 15 the run's EnvRunner took minutes to start on a busy machine while the job
    # driver, at the raylet's niceness, waited for it.
    env.setdefault(WORKER_NICENESS_ENV, "0")

    log_path = ray_dir / "ray-start.log"
    with open(log_path, "wb") as out:
        # Output goes to a file, not a pipe: the daemons `ray start` leaves behind would hold a
        # pipe open and block the wait.
        proc = subprocess.run(
            argv,
            env=env,
            cwd=str(data_dir),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=timeout_s,
            check=False,
        )
    head = HeadInfo(
        address=f"http://{LOOPBACK}:{dashboard_port}",
        dashboard_port=dashboard_port,
        gcs_port=gcs_port,
        temp_dir=temp_dir,
        started_by=os.getpid(),
    )
    (ray_dir / "head.json").write_text(json.dumps(head.__dict__, indent=1))
    if proc.returncode != 0:
        _kill_head_processes(temp_dir, grace_s=2)
        raise TransientError(
            f"`ray start --head` failed with exit code {proc.returncode}: "
            f"{_last_line(log_path, resolved)} (full output: {log_path})"
        )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if probe_dashboard(head.address, resolved) == 200:
            log.info("started a local Ray head for %s on %s", data_dir, head.address)
            return head
        time.sleep(0.25)
    _kill_head_processes(temp_dir, grace_s=2)
    raise TransientError(
        f"the local Ray head did not answer on {head.address} within {timeout_s:g} s (see {log_path})"
    )


def _last_line(path: Path, token: SecretStr) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no output"
    text = lines[-1] if lines else "no output"
    return text.replace(token.get_secret_value(), "***")[:300]


def stop_local_head(
    *, data_dir: Path | None = None, grace_s: float = 5.0, keep_logs: bool = False, force: bool = False
) -> bool:
    """Stop the local head of ``data_dir`` (None: every head this process started or used).

    The calling process stops being a user of the head. While another live process still uses it
    (another ``rlq serve`` on the same data dir), the head stays up for that process and this
    says so in the log — never a silent kill; ``force`` stops it regardless.

    Only the processes of that head (every process carrying its mark, and their children) are
    signalled: other Ray clusters on the machine are left alone. SIGTERM first, SIGKILL for what
    is still alive after ``grace_s`` (gcs_server and raylet routinely outlive a SIGTERM by many
    seconds, ``monitor.py`` ignores it, and a local head has no state worth waiting for). Ray's
    temp dir (sockets, session and job logs) goes with it unless ``keep_logs``. True when
    something was stopped.
    """
    dirs = list(dict.fromkeys([*_STARTED, *_USERS])) if data_dir is None else [Path(data_dir).resolve()]
    stopped = False
    for d in dirs:
        with _locked(d / "ray" / "head.lock", timeout_s=60):
            _unregister_user(d)
            _STARTED.pop(d, None)
            others = head_users(d)
            if others and not force:
                log.warning(
                    "left the local Ray head for %s running: %s still use it", d, _describe_users(others)
                )
                continue
            state = d / "ray" / "head.json"
            try:
                temp_dir = json.loads(state.read_text())["temp_dir"]
            except (OSError, ValueError, KeyError):
                temp_dir = head_temp_dir(d)
            stopped |= _kill_head_processes(temp_dir, grace_s=grace_s)
            state.unlink(missing_ok=True)
            if keep_logs is False and temp_dir.startswith("/tmp/rlq-ray-"):
                _remove_temp_dir(temp_dir)
    return stopped


def _remove_temp_dir(path: str, *, tries: int = 10) -> None:
    """Remove a stopped head's temp dir; a process killed a moment ago may still write a last log
    line into it while the first pass runs, so look again until it is gone (about 2 s at most)."""
    for _ in range(tries):
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.lexists(path):
            return
        time.sleep(0.2)
    log.warning("could not remove Ray's temp dir %s of a stopped head", path)


def ray_psutil() -> Any:
    """``psutil``: the copy Ray bundles, which ``import ray`` puts on ``sys.path``."""
    import importlib

    import ray  # noqa: F401  (puts Ray's bundled psutil on sys.path)

    return importlib.import_module("psutil")


def _head_processes(temp_dir: str) -> list[Any]:
    """The processes of the head with this private temp dir: those carrying its mark in their
    environment (every daemon and worker it started), and any whose command line names the dir."""
    psutil = ray_psutil()
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if proc.pid == os.getpid():
            continue
        try:
            cmd = proc.info["cmdline"] or []
            if any(arg.endswith(temp_dir) or f"{temp_dir}/" in arg for arg in cmd):
                found.append(proc)
                continue
            if proc.environ().get(HEAD_MARK_ENV) == temp_dir:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def head_pids(data_dir: Path) -> list[int]:
    """Pids of every process of the local head of ``data_dir`` and their children (the agents the
    raylet starts, workers, jobs); empty when it is not running."""
    return sorted(_with_children(_head_processes(head_temp_dir(Path(data_dir).resolve()))))


def _with_children(procs: list[Any]) -> dict[int, Any]:
    psutil = ray_psutil()
    out: dict[int, Any] = {}
    for proc in procs:
        out[proc.pid] = proc
        with contextlib.suppress(psutil.Error):
            for child in proc.children(recursive=True):
                out[child.pid] = child
    out.pop(os.getpid(), None)
    return out


def _listeners(port: int) -> list[int]:
    """Pids listening on TCP ``port`` (any address) that this user may see; [] when none."""
    psutil = ray_psutil()
    try:
        conns = psutil.net_connections(kind="tcp")
    except psutil.Error:
        return []
    return sorted(
        {
            c.pid
            for c in conns
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid
        }
    )


def _mark_of(pid: int) -> str | None:
    psutil = ray_psutil()
    try:
        return psutil.Process(pid).environ().get(HEAD_MARK_ENV)
    except psutil.Error:
        return None


def _describe_pids(pids: list[int]) -> str:
    psutil = ray_psutil()
    parts = []
    for pid in pids[:8]:
        try:
            parts.append(f"pid {pid} ({psutil.Process(pid).name()})")
        except psutil.Error:
            parts.append(f"pid {pid}")
    return ", ".join(parts) or "a process of another user"


def _kill_head_processes(temp_dir: str, *, grace_s: float) -> bool:
    psutil = ray_psutil()
    killed = False
    for _round in range(3):  # a raylet may start a worker while the first round runs
        victims = _with_children(_head_processes(temp_dir))
        if not victims:
            break
        killed = True
        procs = list(victims.values())
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGTERM)
        _gone, alive = psutil.wait_procs(procs, timeout=grace_s)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(alive, timeout=5)
        grace_s = min(grace_s, 1.0)
    return killed
