"""Start and stop Azurite (the Azure Storage emulator) for tests and CI; the ``azurite`` fixture.

Azurite is an npm package pinned in the repository's ``package.json`` (3.35.0: the last release
that runs on Node 20). :func:`start_azurite` installs it into ``node_modules/`` when it is
missing (``npm install --no-audit --no-fund``), starts the Table service on a free loopback
port as a child process, waits until the port answers, and returns the connection string with
the emulator's well-known ``devstoreaccount1`` key (public, documented, not a secret).
Failures raise :class:`AzuriteUnavailable` with what to do: tests must fail loudly, not skip.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
ACCOUNT = "devstoreaccount1"
# The emulator's fixed, publicly documented account key.
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
INSTALL_COMMAND = ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"]


class AzuriteUnavailable(RuntimeError):
    """Azurite could not be installed or started; the message says why and what to run."""


@dataclass
class Azurite:
    """A running Azurite Table service."""

    process: subprocess.Popen[bytes]
    host: str
    table_port: int
    location: Path
    owns_location: bool = False
    log_path: Path | None = None
    _stopped: bool = field(default=False, repr=False)

    @property
    def table_endpoint(self) -> str:
        return f"http://{self.host}:{self.table_port}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"TableEndpoint={self.table_endpoint};"
        )

    def stop(self, timeout_s: float = 10.0) -> None:
        """Terminate the emulator (SIGTERM, then SIGKILL) and remove a temporary location."""
        if self._stopped:
            return
        self._stopped = True
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout_s)
        if self.owns_location:
            shutil.rmtree(self.location, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def azurite_bin(repo_root: Path = REPO_ROOT) -> Path:
    return repo_root / "node_modules" / ".bin" / "azurite-table"


def ensure_installed(*, repo_root: Path = REPO_ROOT, install: bool = True, timeout_s: float = 300.0) -> Path:
    """The ``azurite-table`` executable, installing the pinned package when it is missing."""
    binary = azurite_bin(repo_root)
    if binary.exists():
        return binary
    if not install:
        raise AzuriteUnavailable(f"{binary} is missing; run `npm install` in {repo_root}")
    if shutil.which("npm") is None or shutil.which("node") is None:
        raise AzuriteUnavailable(
            "Azurite needs Node.js and npm (apt-get install nodejs npm), then `npm install`"
        )
    if not (repo_root / "package.json").exists():
        raise AzuriteUnavailable(f"no package.json in {repo_root}: cannot install Azurite")
    try:
        done = subprocess.run(
            INSTALL_COMMAND, cwd=repo_root, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired as err:
        raise AzuriteUnavailable(f"`{' '.join(INSTALL_COMMAND)}` took longer than {timeout_s:.0f}s") from err
    if done.returncode != 0 or not binary.exists():
        tail = (done.stderr or done.stdout or "").strip()[-2000:]
        raise AzuriteUnavailable(f"`{' '.join(INSTALL_COMMAND)}` failed (exit {done.returncode}): {tail}")
    return binary


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def start_azurite(
    *,
    repo_root: Path = REPO_ROOT,
    location: Path | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    install: bool = True,
    timeout_s: float = 60.0,
) -> Azurite:
    """Start the Azurite Table service and wait until it accepts connections."""
    binary = ensure_installed(repo_root=repo_root, install=install)
    owns = location is None
    where = Path(tempfile.mkdtemp(prefix="rlq-azurite-")) if location is None else location
    where.mkdir(parents=True, exist_ok=True)
    table_port = port or free_port(host)
    log_path = where / "azurite.log"
    cmd = [
        str(binary),
        "--tableHost",
        host,
        "--tablePort",
        str(table_port),
        "--location",
        str(where),
        "--silent",
        "--skipApiVersionCheck",
        "--loose",
        "--disableTelemetry",
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=repo_root,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "AZURITE_ACCEPT_EULA": "true"},
        )
    azurite = Azurite(
        process=proc, host=host, table_port=table_port, location=where, owns_location=owns, log_path=log_path
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            output = log_path.read_text(errors="replace")[-2000:]
            azurite.stop()
            raise AzuriteUnavailable(f"Azurite exited with code {proc.returncode}: {output}")
        try:
            with socket.create_connection((host, table_port), timeout=0.5):
                return azurite
        except OSError:
            time.sleep(0.1)
    azurite.stop()
    raise AzuriteUnavailable(f"Azurite did not open {host}:{table_port} within {timeout_s:.0f}s")


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """One Azurite Table service for the test session; fails (never skips) when it cannot start."""
    try:
        emulator = start_azurite()
    except AzuriteUnavailable as err:
        pytest.fail(f"Azurite is required for these tests and could not start: {err}", pytrace=False)
    yield emulator
    emulator.stop()
