"""A real three-node Ray cluster on 127.0.0.1 through ``trainer/bootstrap.py`` (token auth on).

What Azure ML runs, minus Azure: a head job of one node (rank 0 of ``--role head``) and a worker job
of two nodes (ranks 0 and 1 of ``--role worker``), each one process with the rank variables an MPI
launcher sets, one CPU each. IMPALA trains CartPole to a low bar. Ray's state API shows where the
actors ran: the Learner on the head node, the EnvRunners on the worker nodes. A worker node killed
mid-run (its bootstrap, its Ray and the EnvRunner on it) is not the job lost: RLlib's fault
tolerance marks that EnvRunner for a restart (it waits for a node with room: on this cluster there
is none), the other samples on, and the run goes on to its stop criterion, exit 0. When the head is
done the surviving worker leaves on its own (exit 0).

The run's budget is a minute of training (about 20 iterations after the kill on the shared 2-core
machine): what it proves is that training goes on, not how far it gets.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from shared.localhost.ray_head import free_port

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable
STATE_PROBE = r"""
import json, sys
from ray.util.state import list_actors, list_nodes
addr = sys.argv[1]
nodes = {n.node_id: n.resources_total for n in list_nodes(address=addr)}
actors = [
    {"class": a.class_name, "node": a.node_id, "state": a.state, "res": nodes.get(a.node_id, {})}
    for a in list_actors(address=addr, limit=1000)
]
print(json.dumps(actors))
"""


def _node_env(tmp: Path, token: str, rank: int, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RAY_", "RLQ_", "OMPI_", "PMI_", "MLFLOW_")) and k not in ("RANK", "NODE_RANK")
    }
    env.update(
        OMPI_COMM_WORLD_RANK=str(rank),
        RAY_AUTH_TOKEN=token,
        RLQ_RAY_NUM_CPUS="1",
        RLQ_RAY_NODE_IP="127.0.0.1",
        RLQ_RAY_WATCH_S="1",
        RLQ_RAY_JOIN_TIMEOUT_S="400",
        PATH=str(Path(PY).parent) + os.pathsep + os.environ.get("PATH", ""),
    )
    env.update(extra)
    return env


def _start_args(*, head: bool, dashboard_port: int, tmp: Path) -> str:
    args = [
        f"--dashboard-agent-listen-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        "--object-store-memory=100000000",
    ]
    if head:
        args += [
            f"--temp-dir={tmp}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard_port}",
            f"--ray-client-server-port={free_port()}",
        ]
    return json.dumps(args)


def _probe(dashboard: str, token: str) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    out = subprocess.run(
        [PY, "-c", STATE_PROBE, dashboard], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    if out.returncode != 0:
        print("state probe:", out.stderr[-1500:])
        return []
    return json.loads(out.stdout.strip().splitlines()[-1])


def _kill_tree(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """``sig`` to a bootstrap and everything under it (its ``ray start`` runs in its own session)."""
    import psutil

    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return
    for p in children:
        try:
            p.send_signal(sig)
        except psutil.NoSuchProcess:
            pass
    proc.send_signal(sig)
    proc.wait(timeout=30)  # reaped here, so its return code is the signal's
    psutil.wait_procs(children, timeout=30)


@pytest.mark.timeout(1500)
def test_head_and_two_workers_place_learner_on_head_and_env_runners_on_workers(tmp_path: Path) -> None:
    token = secrets.token_hex(32)
    port, dash = free_port(), free_port()
    ray_tmp = Path(tempfile.mkdtemp(prefix="rlqb-", dir="/tmp"))  # Ray's socket paths must stay short
    dashboard = f"http://127.0.0.1:{dash}"
    out_dir = tmp_path / "outputs"
    argv = [
        "--run",
        "IMPALA",
        "--env",
        "CartPole-v1",
        "--config",
        # a remote Learner actor and two EnvRunners (the CartPole preset has neither): placement is the subject
        json.dumps({"num_env_runners": 2, "num_envs_per_env_runner": 2, "num_learners": 1}),
        "--stop",
        json.dumps({"time_total_s": 60}),
        "--output-dir",
        str(out_dir),
        "--checkpoint-freq",
        "0",
    ]
    head_env = _node_env(
        tmp_path,
        token,
        0,
        RLQ_RAY_PORT=str(port),
        RLQ_RAY_START_ARGS=_start_args(head=True, dashboard_port=dash, tmp=ray_tmp),
        RLQ_TRAINER_ARGV=json.dumps(argv),
        RLQ_RAY_ADDRESS_FILE=str(tmp_path / "head_address"),
        RLQ_TORCH_THREADS="1",
        RLQ_RAY_EXPECT_WORKERS="2",
    )
    logs = {name: open(tmp_path / f"{name}.log", "wb") for name in ("head", "w0", "w1")}  # noqa: SIM115 - closed below
    procs: dict[str, subprocess.Popen] = {}
    try:
        procs["head"] = subprocess.Popen(
            [
                PY,
                str(REPO / "trainer" / "bootstrap.py"),
                "--role",
                "head",
                "--checkpoints",
                str(tmp_path / "ckpt"),
            ],
            env=head_env,
            cwd=tmp_path,
            stdout=logs["head"],
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for i in (0, 1):
            env = _node_env(
                tmp_path,
                token,
                i,
                RLQ_RAY_HEAD_ADDRESS=f"127.0.0.1:{port}",
                RLQ_RAY_START_ARGS=_start_args(head=False, dashboard_port=dash, tmp=tmp_path),
            )
            procs[f"w{i}"] = subprocess.Popen(
                [PY, str(REPO / "trainer" / "bootstrap.py"), "--role", "worker"],
                env=env,
                cwd=tmp_path,
                stdout=logs[f"w{i}"],
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        # While it trains: where did the actors go?
        seen: list[dict] = []
        last: list[dict] = []
        deadline = time.monotonic() + 700
        while time.monotonic() < deadline and procs["head"].poll() is None:
            actors = [a for a in _probe(dashboard, token) if a["state"] == "ALIVE"]
            if len(_runners(actors)) >= 2 and _learners(actors):
                seen = actors
                break
            last = actors
            time.sleep(5)
        assert seen, (
            f"never saw the Learner and two EnvRunners alive (last: {sorted(a['class'] for a in last)}): "
            + _tail(tmp_path / "head.log")
        )
        runners, learners = _runners(seen), _learners(seen)
        assert all(a["res"].get("rlq_head") for a in learners), learners
        assert all(a["res"].get("rlq_worker") for a in runners), runners
        assert len({a["node"] for a in runners}) == 2  # one EnvRunner on each worker node

        # Kill one worker node mid-run: the run goes on with the other EnvRunner to its time limit.
        _kill_tree(procs["w1"])  # the node's bootstrap, its Ray and the EnvRunner on it
        rows_at_kill = _rows(out_dir)

        head_code = procs["head"].wait(timeout=600)
        summary = json.loads((out_dir / "summary.json").read_text())
        assert head_code == 0 and summary["stop_reason"] == "time_limit", (
            summary,
            _tail(tmp_path / "head.log"),
        )
        rows = _rows(out_dir)
        assert [r["iteration"] for r in rows] == list(range(1, len(rows) + 1))  # one job, never restarted
        after = rows[len(rows_at_kill) :]
        assert (
            len(after) >= 5 and after[-1]["timesteps"] > (rows_at_kill or [{"timesteps": 0}])[-1]["timesteps"]
        )
        assert summary["final_reward"] is not None and summary["iterations"] == len(rows)
        assert (tmp_path / "head_address").read_text() == f"127.0.0.1:{port}"
        # The surviving worker notices the head is gone and leaves on its own, exit 0.
        assert procs["w0"].wait(timeout=120) == 0, _tail(tmp_path / "w0.log")
        assert procs["w1"].wait(timeout=10) == -signal.SIGKILL
        assert "training ended" in (tmp_path / "w0.log").read_text()
    finally:
        for p in procs.values():
            if p.poll() is None:
                _kill_tree(p)
        for f in logs.values():
            f.close()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _rows(out_dir: Path) -> list[dict]:
    """The metrics rows logged so far (a line being written is not one yet)."""
    path = out_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line) for line in lines if line.endswith("}")]


def _runners(actors: list[dict]) -> list[dict]:
    return [a for a in actors if "EnvRunner" in a["class"]]


def _learners(actors: list[dict]) -> list[dict]:
    """RLlib's remote Learner: a Ray Train worker actor (``_WrappedExecutable``) in Ray 2.60."""
    return [a for a in actors if a["class"].endswith(("_WrappedExecutable", "Learner"))]


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


def test_rank_comes_from_the_mpi_launcher() -> None:
    from trainer import bootstrap

    assert bootstrap.rank({"OMPI_COMM_WORLD_RANK": "2"}) == 2
    assert bootstrap.rank({"PMI_RANK": "1"}) == 1
    assert bootstrap.rank({}) == 0
    assert (
        bootstrap.head_address_for_rank({"AZ_BATCHAI_MPI_MASTER_NODE": "10.0.0.4"}, 6379) == "10.0.0.4:6379"
    )


def test_placement_reads_the_node_resources_the_bootstrap_sets() -> None:
    from trainer import bootstrap

    nodes = [
        {"Alive": True, "Resources": {"CPU": 4.0, "GPU": 1.0, "rlq_head": 1.0}},
        {"Alive": True, "Resources": {"CPU": 4.0, "rlq_worker": 1.0}},
        {"Alive": True, "Resources": {"CPU": 4.0, "rlq_worker": 1.0}},
        {"Alive": False, "Resources": {"CPU": 4.0, "rlq_worker": 1.0}},
    ]
    assert bootstrap.placement(nodes) == {
        "custom_resources_per_env_runner": {"rlq_worker": 0.001},
        "worker_cpus": 8,
        "custom_resources_per_learner": {"rlq_head": 0.001},
    }
    assert bootstrap.placement([{"Alive": True, "Resources": {"CPU": 2.0}}]) is None


def test_the_token_goes_to_a_private_file_not_the_environment(tmp_path: Path, monkeypatch) -> None:
    from trainer import bootstrap

    monkeypatch.setenv("RAY_AUTH_TOKEN", "t0k3n")
    env = bootstrap.ray_env(bootstrap.resolve_token(), tmp_path)
    assert "RAY_AUTH_TOKEN" not in env and env["RAY_AUTH_MODE"] == "token"
    path = Path(env["RAY_AUTH_TOKEN_PATH"])
    assert path.read_text() == "t0k3n" and oct(path.stat().st_mode & 0o777) == "0o600"
