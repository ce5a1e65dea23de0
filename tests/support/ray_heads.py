"""Private local Ray heads for tests (token auth on), started the way ``rlq serve`` starts its own.

The session head (``tests/conftest.py``) and the private heads of the fault tests come from here,
with what the tests need to look at a head from outside: its processes and the sockets they listen
on.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from shared.localhost.ray_head import ensure_local_head, free_port, head_pids, ray_psutil


@dataclass(frozen=True)
class TestHead:
    """A local head for a test session; ``token`` is what the head accepts."""

    __test__ = False  # not a pytest class

    address: str
    data_dir: Path
    dashboard_port: int
    token: SecretStr


def start_test_ray_head(tmp_dir: Path, *, num_cpus: int = 2, timeout_s: float = 90.0) -> TestHead:
    """Start a private head for tests: a free dashboard port, a fresh token, a small object store.

    Stop it with ``stop_local_head(data_dir=head.data_dir)``.
    """
    data_dir = Path(tmp_dir).resolve()
    port = free_port()
    token = SecretStr(secrets.token_hex(32))
    address = ensure_local_head(
        data_dir=data_dir,
        dashboard_port=port,
        num_cpus=num_cpus,
        timeout_s=timeout_s,
        token=token,
        object_store_memory_bytes=300 * 1024 * 1024,
    )
    return TestHead(address=address, data_dir=data_dir, dashboard_port=port, token=token)


def listening_sockets(data_dir: Path) -> dict[int, list[tuple[str, int]]]:
    """Every TCP socket in LISTEN state held by a process of the head of ``data_dir``: pid → [(ip, port)]."""
    psutil = ray_psutil()
    out: dict[int, list[tuple[str, int]]] = {}
    for pid in head_pids(data_dir):
        try:
            conns = psutil.Process(pid).net_connections(kind="tcp")
        except psutil.Error:
            continue
        addrs = [(c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN]
        if addrs:
            out[pid] = addrs
    return out


def process_names(pids: list[int]) -> dict[int, str]:
    psutil = ray_psutil()
    names = {}
    for pid in pids:
        try:
            names[pid] = " ".join(psutil.Process(pid).cmdline())[:160]
        except psutil.Error:
            names[pid] = "?"
    return names
