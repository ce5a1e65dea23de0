"""The local head rlq starts: loopback only, one head per data dir shared by its users, and nothing
left behind — not by a stop, not by a SIGKILLed owner, not by a head that lost its dashboard."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from pydantic import SecretStr

from shared.errors import PermanentError, TransientError
from shared.localhost import ray_head as heads
from tests.support.ray_heads import TestHead, listening_sockets, process_names, start_test_ray_head

pytestmark = pytest.mark.ray

LOOPBACK_IPS = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}


def _wait_for(what: str, check, *, timeout_s: float = 60.0, every_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not so after {timeout_s:g} s")
        time.sleep(every_s)


def test_every_process_of_the_head_listens_on_loopback_only(ray_head: TestHead) -> None:
    def all_started():
        found = listening_sockets(ray_head.data_dir)
        names = " ".join(process_names(list(found)).values())
        # GCS, raylet, dashboard and the dashboard agent all up: the check below is not vacuous
        return (
            found
            if all(n in names for n in ("gcs_server", "raylet", "dashboard.py", "DashboardAgent"))
            else None
        )

    found = _wait_for("the head's daemons listening", all_started)
    names = process_names(list(found))
    wide = {
        names[pid]: addrs for pid, addrs in found.items() if any(ip not in LOOPBACK_IPS for ip, _ in addrs)
    }
    assert wide == {}, f"listening beyond loopback: {wide}"
    ports = [port for addrs in found.values() for _, port in addrs]
    assert ray_head.dashboard_port in ports


_USER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from pydantic import SecretStr
    from shared.localhost.ray_head import ensure_local_head
    print(ensure_local_head(data_dir=Path(sys.argv[1]), dashboard_port=int(sys.argv[2]),
                            token=SecretStr(sys.argv[3]), timeout_s=120), flush=True)
    sys.stdin.read()  # a user of the head until the test lets go
""")


def test_the_heads_workers_run_at_the_niceness_of_their_driver(ray_head: TestHead) -> None:
    # Ray's default would start them 15 steps nicer than the raylet: a local run's EnvRunner and
    # Learner actors then starve behind everything else on a busy machine.
    gcs_port = json.loads((ray_head.data_dir / "ray" / "head.json").read_text())["gcs_port"]
    code = (
        "import os, ray; "
        f"ray.init(address='127.0.0.1:{gcs_port}', include_dashboard=False, log_to_driver=False); "
        "nice = ray.remote(num_cpus=0)(lambda: os.nice(0)); "
        "print('NICENESS', os.nice(0), ray.get(nice.remote(), timeout=120))"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env.update(heads.LOOPBACK_ENV)
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(heads.local_token_path(ray_head.data_dir)))
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=240)
    assert p.returncode == 0, p.stderr[-2000:]
    line = next(ln for ln in p.stdout.splitlines() if ln.startswith("NICENESS "))
    driver, worker = line.split()[1:]
    assert worker == driver


def _second_user(head: TestHead) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _USER,
            str(head.data_dir),
            str(head.dashboard_port),
            head.token.get_secret_value(),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("RAY_")},
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == head.address
    return proc


def test_a_head_used_by_two_processes_outlives_the_first_stop_and_goes_with_the_last(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    head = start_test_ray_head(tmp_path / "shared", num_cpus=1)
    other = _second_user(head)
    try:
        assert heads.head_users(head.data_dir).keys() == {other.pid}
        with caplog.at_level(logging.WARNING, logger="shared.localhost.ray_head"):
            assert heads.stop_local_head(data_dir=head.data_dir) is False
        assert f"pid {other.pid}" in caplog.text and "still use it" in caplog.text
        assert heads.probe_dashboard(head.address, head.token) == 200  # never a silent kill
    finally:
        other.kill()
        other.wait(timeout=30)
    # the other user is gone (SIGKILL: no clean-up of its own): the last stop takes everything
    assert heads.head_users(head.data_dir) == {}
    pids = heads.head_pids(head.data_dir)
    assert any("ray.util.client.server" in n for n in process_names(pids).values()), process_names(pids)
    assert heads.stop_local_head(data_dir=head.data_dir) is True
    assert heads.head_pids(head.data_dir) == [], process_names(heads.head_pids(head.data_dir))
    assert heads.probe_dashboard(head.address, head.token) is None
    assert heads._port_free(head.dashboard_port)


def test_what_is_left_of_a_head_that_lost_its_dashboard_is_reaped_and_a_new_head_started(
    tmp_path: Path,
) -> None:
    head = start_test_ray_head(tmp_path / "orphan", num_cpus=1)
    try:
        before = process_names(heads.head_pids(head.data_dir))
        dashboard = [pid for pid, n in before.items() if "dashboard/dashboard.py" in n]
        assert len(dashboard) == 1, before
        os.kill(dashboard[0], signal.SIGKILL)  # as when its owner died and took part of it along
        _wait_for("the dashboard gone", lambda: heads.probe_dashboard(head.address, head.token) is None)
        leftovers = set(heads.head_pids(head.data_dir))
        assert leftovers, "the rest of the head should still run"

        address = heads.ensure_local_head(
            data_dir=head.data_dir,
            dashboard_port=head.dashboard_port,
            token=head.token,
            num_cpus=1,
            timeout_s=120,
        )
        assert address == head.address
        assert heads.probe_dashboard(head.address, head.token) == 200
        alive = leftovers & set(heads.head_pids(head.data_dir))
        assert alive == set(), f"not reaped: {process_names(sorted(alive))}"
    finally:
        heads.stop_local_head(data_dir=head.data_dir)


def test_a_port_taken_by_something_else_is_named(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(TransientError, match=rf"port {port} .* taken by pid {os.getpid()} "):
            heads.ensure_local_head(
                data_dir=tmp_path, dashboard_port=port, token=SecretStr("x" * 64), timeout_s=5
            )


@pytest.mark.parametrize("port", [10002, 15000, 19999])
def test_a_dashboard_port_in_rays_worker_port_range_is_permanent_and_starts_nothing(
    tmp_path: Path, port: int
) -> None:
    with pytest.raises(PermanentError, match=r"permanent: change the setting") as err:
        heads.ensure_local_head(
            data_dir=tmp_path, dashboard_port=port, token=SecretStr("x" * 64), timeout_s=5
        )
    assert f"RLQ_RAY_DASHBOARD_PORT={port}" in str(err.value) and "10002-19999" in str(err.value)
    assert "1-10001 or 20000-65535" in str(err.value)
    assert not (tmp_path / "ray" / "head.json").exists()  # no `ray start` was tried


def _serve(data_dir: Path, port: int, log: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RLQ_", "RAY_"))}
    env.update(
        RLQ_DATA_DIR=str(data_dir), RLQ_BACKEND="ray", RLQ_RAY_DASHBOARD_PORT=str(port), RLQ_RAY_NUM_CPUS="1"
    )
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "rlq"), "serve", "--port", "0"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),  # a file: a pipe nobody reads would fill and block the serve
        text=True,
    )


def _gcs(data_dir: Path) -> list[int]:
    return [pid for pid, n in process_names(heads.head_pids(data_dir)).items() if "gcs_server" in n]


@pytest.mark.timeout(600)
def test_serve_takes_over_the_head_of_a_sigkilled_serve_and_leaves_nothing_after_sigterm(
    tmp_path: Path,
) -> None:
    data_dir = (tmp_path / "rlq").resolve()
    port = heads.free_port()
    address = f"http://127.0.0.1:{port}"

    def head_up() -> bool:
        return heads.probe_dashboard(address, heads.local_head_token(data_dir)) == 200

    first = _serve(data_dir, port, tmp_path / "first.log")
    try:
        _wait_for("the first serve's head", head_up, timeout_s=180)
        first.send_signal(signal.SIGKILL)  # no clean-up at all: the head is orphaned
        first.wait(timeout=30)
        gcs = _gcs(data_dir)
        assert len(gcs) == 1 and head_up()

        second = _serve(data_dir, port, tmp_path / "second.log")
        try:
            _wait_for("the second serve", lambda: heads.head_users(data_dir), timeout_s=120)
            assert head_up() and _gcs(data_dir) == gcs  # taken over, not restarted
            second.send_signal(signal.SIGTERM)
            second.wait(timeout=120)
            assert second.returncode == 0, (tmp_path / "second.log").read_text()[-2000:]
        finally:
            if second.poll() is None:
                second.kill()
        left = heads.head_pids(data_dir)
        assert left == [], f"left behind: {process_names(left)}"  # monitor.py and the client server too
        assert not head_up() and heads._port_free(port)
        temp_dir = Path(heads.head_temp_dir(data_dir))
        assert not temp_dir.exists(), f"Ray's temp dir stayed: {sorted(p.name for p in temp_dir.iterdir())}"
    finally:
        if first.poll() is None:
            first.kill()
        heads.stop_local_head(data_dir=data_dir, force=True)
