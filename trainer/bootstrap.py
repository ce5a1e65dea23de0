"""Start Ray on an Azure ML node (or any MPI-launched node), then the trainer or a worker.

Imports nothing from ``shared/`` (``trainer/`` is uploaded alone as the job's code). One process per
node (``MpiDistribution(process_count_per_instance=1)``); each reads its rank from the MPI launcher.

``--role head`` (the head job):
  rank 0 runs ``ray start --head`` with token authentication on and this node's custom resource
  (``{"rlq_head": 1}``), publishes the head's address (``<node ip>:<port>``, never the token) as the
  MLflow tag ``rlq.ray_head_address`` on its own job, then runs ``trainer/train.py`` with the argv in
  ``RLQ_TRAINER_ARGV``; when the trainer ends, this node's Ray stops and the exit code is the
  trainer's. Other ranks of the head job join rank 0 (``AZ_BATCHAI_MPI_MASTER_NODE`` / ``MASTER_ADDR``).
``--role worker`` (the worker job):
  every rank joins ``RLQ_RAY_HEAD_ADDRESS`` with ``{"rlq_worker": 1}``, then blocks until the head
  is gone (the training ended) and exits 0; a node whose own Ray dies exits 1.

The trainer places its Learner on the ``rlq_head`` node and its EnvRunners on ``rlq_worker`` nodes
(:func:`placement`), the seed's topology: the GPU head trains, the CPU workers simulate.

The Ray token (``RAY_AUTH_MODE=token`` on every node), first found of:
``RAY_AUTH_TOKEN``; the file in ``RAY_AUTH_TOKEN_PATH``; the secret ``RLQ_RAY_TOKEN_SECRET`` in the Key
Vault ``RLQ_RAY_TOKEN_VAULT``, read with the node's managed identity (``RLQ_IDENTITY_CLIENT_ID`` picks
a user-assigned one). The value is written to a 0600 file that Ray reads through
``RAY_AUTH_TOKEN_PATH``: it never appears in an argv, an environment variable of the job, a tag or
a log line.

Local runs (tests) may set ``RLQ_RAY_NUM_CPUS``, ``RLQ_RAY_NODE_IP``, ``RLQ_RAY_START_ARGS`` (a JSON
list added to ``ray start``) and ``RLQ_RAY_ADDRESS_FILE`` (the head also writes its address there).
The head waits for ``RLQ_RAY_EXPECT_WORKERS`` worker nodes and ``RLQ_RAY_EXPECT_HEAD_NODES`` nodes of
its own job (rank 0 counted; at most ``RLQ_RAY_JOIN_TIMEOUT_S``) before it starts the trainer: the
worker job is only submitted once the head's address is published. A head job of several nodes
and no worker job is the single-cluster topology: every node carries ``rlq_head``, the Learner
goes to one of them and the EnvRunners anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file on the nodes: python trainer/bootstrap.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainer import contract

HEAD_RESOURCE = "rlq_head"
WORKER_RESOURCE = "rlq_worker"
ARGV_ENV = "RLQ_TRAINER_ARGV"
RANK_ENVS = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "RANK", "NODE_RANK")
MASTER_ENVS = ("AZ_BATCHAI_MPI_MASTER_NODE", "AZ_BATCH_MASTER_NODE", "MASTER_ADDR")
# A resource request this small never limits how many actors fit; it only says where they may run.
PLACEMENT_SHARE = 0.001
JOIN_ATTEMPTS = 5
DEFAULT_IDENTITY_ENV = "DEFAULT_IDENTITY_CLIENT_ID"  # set by Azure ML on compute cluster nodes
VAULT_SCOPE = "https://vault.azure.net/.default"


def log(msg: str) -> None:
    print(f"[rlq-bootstrap] {msg}", flush=True)


# --- placement: used by trainer/train.py ----------------------------------------------------------


def placement(nodes: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Where the trainer's actors go on a cluster started by this bootstrap; None elsewhere.

    ``nodes`` is ``ray.nodes()``. With ``rlq_worker`` nodes alive: EnvRunners on them (and the
    default number of EnvRunners is their CPUs), the Learner on the ``rlq_head`` node.
    """
    alive = [n for n in nodes if n.get("Alive", n.get("alive", True))]
    workers = [n for n in alive if n.get("Resources", {}).get(WORKER_RESOURCE)]
    heads = [n for n in alive if n.get("Resources", {}).get(HEAD_RESOURCE)]
    if not workers and not heads:
        return None
    out: dict[str, Any] = {}
    if workers:
        out["custom_resources_per_env_runner"] = {WORKER_RESOURCE: PLACEMENT_SHARE}
        out["worker_cpus"] = int(sum(float(n["Resources"].get("CPU", 0)) for n in workers))
    if heads:
        out["custom_resources_per_learner"] = {HEAD_RESOURCE: PLACEMENT_SHARE}
    return out


# --- rank, addresses, token ---------------------------------------------------------------------


def rank(env: dict[str, str] | os._Environ[str] = os.environ) -> int:
    """This process's rank from the MPI launcher (Open MPI, MPICH / Intel MPI, PMIx) or torchrun."""
    for name in RANK_ENVS:
        value = env.get(name)
        if value not in (None, ""):
            return int(value)
    return 0


def head_address_for_rank(env: dict[str, str] | os._Environ[str], port: int) -> str | None:
    """The head's address for ranks > 0 of the head job: rank 0's host, from the launcher."""
    if env.get("RLQ_RAY_HEAD_ADDRESS"):
        return env["RLQ_RAY_HEAD_ADDRESS"]
    for name in MASTER_ENVS:
        value = env.get(name)
        if value:
            host = value.rsplit(":", 1)[0] if value.count(":") == 1 else value
            return f"{host}:{port}"
    return None


def identity_client_id(env: dict[str, str] | os._Environ[str] = os.environ) -> str | None:
    """The managed identity the node reads the vault with: ``RLQ_IDENTITY_CLIENT_ID`` (a user-assigned
    one rlq names), else ``DEFAULT_IDENTITY_CLIENT_ID`` (what Azure ML sets on a compute cluster's nodes
    for the cluster's own identity), else None (the platform's default identity)."""
    return env.get("RLQ_IDENTITY_CLIENT_ID") or env.get(DEFAULT_IDENTITY_ENV) or None


def _vault_secret(vault: str, name: str, client_id: str | None) -> str:
    """``name`` from the Key Vault ``vault``, read with the node's managed identity.

    azure-identity's ``ManagedIdentityCredential`` picks the endpoint the node has (on Azure ML
    compute: ``MSI_ENDPOINT`` / ``MSI_SECRET``, where a user-assigned identity is named by the
    ``clientid`` query parameter) and speaks its protocol.
    """
    from azure.identity import ManagedIdentityCredential

    credential = ManagedIdentityCredential(client_id=client_id)
    try:
        access = credential.get_token(VAULT_SCOPE).token
    finally:
        credential.close()
    url = f"{vault.rstrip('/')}/secrets/{urllib.parse.quote(name)}?api-version=7.4"
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {access}"})
    with urllib.request.urlopen(req, timeout=30) as resp:  # the workspace Key Vault
        return json.loads(resp.read())["value"]


def resolve_token(env: dict[str, str] | os._Environ[str] = os.environ) -> str:
    if env.get("RAY_AUTH_TOKEN"):
        return env["RAY_AUTH_TOKEN"]
    if env.get("RAY_AUTH_TOKEN_PATH"):
        return Path(env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    vault, secret = env.get("RLQ_RAY_TOKEN_VAULT"), env.get("RLQ_RAY_TOKEN_SECRET")
    if vault and secret:
        return _vault_secret(vault, secret, identity_client_id(env)).strip()
    raise SystemExit(
        "rlq-bootstrap: no Ray token: set RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH, or RLQ_RAY_TOKEN_VAULT and "
        "RLQ_RAY_TOKEN_SECRET (read with the node's managed identity)"
    )


def ray_env(token: str, workdir: Path) -> dict[str, str]:
    """The environment Ray's processes get: token auth on, the token in a 0600 file."""
    path = workdir / "ray_auth_token"
    path.write_text(token)
    path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_TOKEN", "RAY_ADDRESS")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(path))
    return env


# --- ray start / watch ----------------------------------------------------------------------------


def _ray_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("ray")
    return [str(exe)] if exe.exists() else [shutil.which("ray") or "ray"]


def start_node(*, head: bool, address: str | None, port: int, env: dict[str, str]) -> subprocess.Popen:
    """``ray start --block`` as a child: signalling it stops this node's Ray and nothing else."""
    resources = json.loads(os.environ.get("RLQ_RAY_NODE_RESOURCES") or "{}") or (
        {HEAD_RESOURCE: 1} if head else {WORKER_RESOURCE: 1}
    )
    cmd = [*_ray_cmd(), "start", "--block", "--disable-usage-stats", "--resources", json.dumps(resources)]
    cmd += ["--head", f"--port={port}"] if head else [f"--address={address}"]
    if os.environ.get("RLQ_RAY_NUM_CPUS"):
        cmd.append(f"--num-cpus={int(os.environ['RLQ_RAY_NUM_CPUS'])}")
    if os.environ.get("RLQ_RAY_NODE_IP"):
        cmd.append(f"--node-ip-address={os.environ['RLQ_RAY_NODE_IP']}")
    cmd += [str(a) for a in json.loads(os.environ.get("RLQ_RAY_START_ARGS") or "[]")]
    log("ray start " + ("--head" if head else f"--address={address}") + f" resources={resources}")
    return subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=_stop_with_parent)


def _stop_with_parent() -> None:
    """In the ``ray start`` child: SIGTERM when this bootstrap dies, however it dies (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the node is stopped by stop_node() or by its container


def reachable(address: str, timeout: float = 2.0) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def stop_node(proc: subprocess.Popen, grace_s: float = 30.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)  # ray start --block stops the processes it started
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def node_ip() -> str:
    if os.environ.get("RLQ_RAY_NODE_IP"):
        return os.environ["RLQ_RAY_NODE_IP"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # no packet is sent: picks the interface of the default route
            return s.getsockname()[0]
        except OSError:
            return "127.0.0.1"


def publish_address(address: str) -> None:
    """The head's address where the poller reads it: an MLflow tag on this job's own run."""
    path = os.environ.get("RLQ_RAY_ADDRESS_FILE")
    if path:
        Path(path).write_text(address)
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not (run_id and os.environ.get("MLFLOW_TRACKING_URI")):
        return
    try:
        from mlflow.tracking import MlflowClient

        MlflowClient().set_tag(run_id, contract.HEAD_ADDRESS_TAG, address)
        log(f"published {contract.HEAD_ADDRESS_TAG}={address}")
    except Exception as exc:  # noqa: BLE001 - without the tag the poller never adds workers; say so
        log(f"could not publish the head's address ({type(exc).__name__}: {exc}); no worker nodes will join")


def wait_ready(proc: subprocess.Popen, address: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not reachable(address):
        if proc.poll() is not None:
            raise SystemExit(f"rlq-bootstrap: ray start exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise SystemExit(f"rlq-bootstrap: Ray at {address} not up after {timeout_s:.0f} s")
        time.sleep(0.5)


_WAIT_FOR_NODES = """
import json, sys, time, ray
address, expected, timeout_s = sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3])
ray.init(address=address, logging_level="ERROR", log_to_driver=False)
deadline = time.monotonic() + timeout_s
while True:
    alive = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    joined = {r: sum(1 for res in alive if res.get(r)) for r in expected}
    if all(joined[r] >= n for r, n in expected.items()) or time.monotonic() > deadline:
        break
    time.sleep(2)
print(json.dumps(joined))
"""


def wait_for_nodes(
    address: str, env: dict[str, str], expected: dict[str, int], timeout_s: float
) -> dict[str, int]:
    """Block until ``expected[resource]`` nodes with each custom resource are in the cluster: the
    worker job's ``rlq_worker`` nodes (it starts after the head) and the head job's own ranks
    (``rlq_head``, rank 0 included).

    Returns how many joined; after ``timeout_s`` the trainer starts with those (its resource check
    says so if the EnvRunners cannot be placed). A separate process, so this one never holds a
    Ray connection (Ray reads its auth settings once per process).
    """
    expected = {r: n for r, n in expected.items() if n > 0}
    if not expected or expected == {HEAD_RESOURCE: 1}:
        return dict(expected)
    out = subprocess.run(
        [sys.executable, "-c", _WAIT_FOR_NODES, address, json.dumps(expected), str(timeout_s)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s + 120,
        check=False,
    )
    lines = out.stdout.strip().splitlines()
    try:
        joined = {r: int(n) for r, n in json.loads(lines[-1]).items()} if out.returncode == 0 else {}
    except (IndexError, ValueError, AttributeError):
        joined = {}
    for resource, n in expected.items():
        log(f"{joined.get(resource, 0)} of {n} {resource} nodes joined")
    return joined


# --- GPU preflight ---------------------------------------------------------------------------------

GPU_KEYS = ("num_gpus", "num_gpus_per_learner", "num_gpus_per_env_runner", "num_gpus_per_worker")
NO_GPU_EXIT = 2  # the trainer's own code for a request it cannot run as asked (trainer/train.py)


def gpus_requested(argv: list[str]) -> tuple[str, float] | None:
    """The first GPU ask in the trainer's ``--config`` (key, amount), or None when it asks for none."""
    if "--config" not in argv:
        return None
    try:
        config = json.loads(argv[argv.index("--config") + 1])
    except (IndexError, ValueError):
        return None  # the trainer refuses a malformed --config itself, naming it
    if not isinstance(config, dict):
        return None
    for key in GPU_KEYS:
        value = config.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return key, float(value)
    return None


def nvidia_driver() -> str:
    """The NVIDIA kernel driver's version line on this node, or what says there is none."""
    try:
        line = Path("/proc/driver/nvidia/version").read_text().splitlines()[0]
    except (OSError, IndexError):
        return "no NVIDIA driver is loaded on this node (/proc/driver/nvidia/version is missing)"
    return "NVIDIA driver: " + " ".join(line.split())


def gpu_preflight(argv: list[str]) -> str | None:
    """None when the request asks for no GPU or torch sees one; else why the run cannot start.

    Checked before Ray starts: a GPU node whose driver cannot run the CUDA that torch was built with
    would otherwise start Ray, publish its address, bring up workers and fail minutes later.
    """
    asked = gpus_requested(argv)
    if asked is None:
        return None
    key, amount = asked
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - any import failure means no usable torch
        return f"--config {key}={amount:g} asks for a GPU but torch cannot be imported ({type(exc).__name__}: {exc})"
    if torch.cuda.is_available():
        return None
    return (
        f"--config {key}={amount:g} asks for a GPU but torch {torch.__version__} (built for CUDA "
        f"{torch.version.cuda or 'none: a CPU-only build'}) sees no usable GPU; {nvidia_driver()}. "
        "The node's driver must support the CUDA torch was built for (docs/azure.md, 'Image and CUDA')."
    )


def write_error_summary(argv: list[str], error: str) -> None:
    """``<output dir>/summary.json`` saying why the trainer never started (the backend reads its
    ``error`` into the completion message, as it reads the trainer's own summary)."""
    out = Path(argv[argv.index("--output-dir") + 1] if "--output-dir" in argv else "outputs")
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(json.dumps({"error": error, "stop_reason": "error"}))
    except OSError as exc:
        log(f"could not write {out / 'summary.json'}: {exc}")


def trainer_argv(restore: str | None, champion: str | None = None) -> list[str]:
    argv = json.loads(os.environ.get(ARGV_ENV) or "[]")
    if not isinstance(argv, list) or not argv:
        raise SystemExit(f"rlq-bootstrap: {ARGV_ENV} must hold the trainer's argv as a JSON list")
    if restore:
        argv += ["--restore", restore]
    if champion:
        argv += ["--champion", champion]
    return [str(a) for a in argv]


def link_checkpoints(target: str | None, output_dir: Path) -> None:
    """``<output dir>/checkpoints`` → the job's ``checkpoints`` output (its ``final/`` is the result)."""
    if not target:
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    Path(target).mkdir(parents=True, exist_ok=True)  # a mounted output exists; a local one may not yet
    link = output_dir / "checkpoints"
    if link.is_symlink() or link.exists():
        return
    link.symlink_to(Path(target), target_is_directory=True)


def carry_checkpoints(source: str | None, target: str | None) -> None:
    """Attempt k > 1 on Azure ML: attempt k - 1's checkpoints (a read-only input) into this job's
    own ``checkpoints`` output, where the trainer's ``--resume`` finds the newest that loads."""
    if not source or not target:
        return
    shutil.copytree(source, target, dirs_exist_ok=True)
    log(f"resuming: copied the lost job's checkpoints from {source}")


def run_head(args: argparse.Namespace, env: dict[str, str], port: int) -> int:
    address = f"{node_ip()}:{port}"
    proc = start_node(head=True, address=None, port=port, env=env)
    try:
        wait_ready(proc, address, args.join_timeout_s)
        publish_address(address)
        wait_for_nodes(
            address,
            env,
            {
                WORKER_RESOURCE: int(os.environ.get("RLQ_RAY_EXPECT_WORKERS") or 0),
                HEAD_RESOURCE: int(os.environ.get("RLQ_RAY_EXPECT_HEAD_NODES") or 1),
            },
            args.join_timeout_s,
        )
        argv = trainer_argv(args.restore, args.champion)
        out = argv[argv.index("--output-dir") + 1] if "--output-dir" in argv else "outputs"
        link_checkpoints(args.checkpoints, Path(out))
        carry_checkpoints(args.resume_from, args.checkpoints)
        trainer_env = {**env, "RAY_ADDRESS": address}
        code = subprocess.call(
            [sys.executable, str(Path(__file__).resolve().with_name("train.py")), *argv], env=trainer_env
        )
        log(f"trainer exited with {code}; stopping the head")
        return code
    finally:
        stop_node(proc)


def run_member(args: argparse.Namespace, env: dict[str, str], address: str) -> int:
    """Join ``address``; block while the head is up; 0 when the head is gone, 1 if this node cannot stay.

    A node whose Ray exits while the head is still up (a raylet that timed out starting on a busy
    machine, say) joins again, up to ``JOIN_ATTEMPTS`` times within the join timeout.
    """
    deadline = time.monotonic() + args.join_timeout_s
    while not reachable(address):
        if time.monotonic() > deadline:
            log(f"head {address} never came up; exiting")
            return 1
        time.sleep(1)
    attempts = 1
    proc = start_node(head=False, address=address, port=0, env=env)
    misses = 0
    try:
        while True:
            time.sleep(args.watch_interval_s)
            if proc.poll() is not None:
                if not reachable(address):
                    log("the head is gone: training ended")
                    return 0
                if attempts >= JOIN_ATTEMPTS or time.monotonic() > deadline:
                    log(f"this node's Ray exited with {proc.returncode} while the head is up; giving up")
                    return 1
                attempts += 1
                log(f"this node's Ray exited with {proc.returncode} while the head is up; joining again")
                proc = start_node(head=False, address=address, port=0, env=env)
                continue
            misses = 0 if reachable(address) else misses + 1
            if misses >= 3:
                log("the head is gone: training ended; leaving")
                return 0
    finally:
        stop_node(proc)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--role", choices=("head", "worker"), required=True)
    p.add_argument("--checkpoints", default=None, help="the job's checkpoints output folder")
    p.add_argument("--restore", default=None, help="a checkpoint folder to warm-start from (a job input)")
    p.add_argument("--champion", default=None, help="the model's champion checkpoint folder (a job input)")
    p.add_argument("--resume-from", default=None, help="the lost attempt's checkpoints folder (a job input)")
    p.add_argument(
        "--join-timeout-s", type=float, default=float(os.environ.get("RLQ_RAY_JOIN_TIMEOUT_S", 1800))
    )
    p.add_argument("--watch-interval-s", type=float, default=float(os.environ.get("RLQ_RAY_WATCH_S", 5)))
    args = p.parse_args(argv)
    port = int(os.environ.get("RLQ_RAY_PORT", "6379"))
    me = rank()
    if args.role == "head" and me == 0:
        argv = trainer_argv(None)
        problem = gpu_preflight(argv)
        if problem:
            log(problem)
            write_error_summary(argv, problem)
            return NO_GPU_EXIT
    workdir = Path(tempfile.mkdtemp(prefix="rlq-ray-"))
    try:
        env = ray_env(resolve_token(), workdir)
        if args.role == "head" and me == 0:
            return run_head(args, env, port)
        address = (
            os.environ.get("RLQ_RAY_HEAD_ADDRESS")
            if args.role == "worker"
            else head_address_for_rank(os.environ, port)
        )
        if not address:
            raise SystemExit(
                f"rlq-bootstrap: rank {me} of the {args.role} job does not know the head's address"
            )
        return run_member(args, env, address)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
