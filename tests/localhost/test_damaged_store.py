"""A damaged run store or queue file: ``rlq`` says which file and how to recover, in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.adapters._sqlite import Connections
from shared.adapters.broker.sqlite_broker import SqliteBroker
from shared.adapters.store.sqlite_store import SqliteRunStore
from shared.contracts.run import RunRecord

pytestmark = pytest.mark.usefixtures("cli_env")


def damage(path: Path) -> None:
    with path.open("r+b") as f:
        f.write(b"\x13" * 4096)  # the header and the first page overwritten


@pytest.fixture
def stores(data_dir: Path) -> Path:
    data_dir.mkdir(parents=True)
    with SqliteRunStore(data_dir / "runs.sqlite3") as store:
        store.insert_if_absent(RunRecord(request_id="kept"))
    with SqliteBroker(data_dir / "queue.sqlite3") as broker:
        broker.create_queue("training-requests")
    return data_dir


@pytest.mark.parametrize("file", ["runs.sqlite3", "queue.sqlite3"])
@pytest.mark.parametrize("command", [["list"], ["serve", "--port", "0"]])
def test_a_damaged_file_is_one_line_naming_it_and_the_way_out(run, stores, file, command):
    path = stores / file
    damage(path)
    result = run(*command)
    assert result.exit_code == 1
    text = " ".join(result.output.split())  # the console may wrap the line at its width
    assert "Traceback" not in result.output
    assert f"{path} is damaged (file is not a database)" in text
    assert f"mv {path} {path}.damaged" in text and f"sqlite3 {path} .recover" in text


def test_with_the_damaged_file_moved_aside_rlq_starts_empty(run, stores):
    damage(stores / "runs.sqlite3")
    assert run("list").exit_code == 1
    (stores / "runs.sqlite3").rename(stores / "runs.sqlite3.damaged")
    for side in ("-wal", "-shm"):
        (stores / f"runs.sqlite3{side}").unlink(missing_ok=True)
    result = run("list")
    assert result.exit_code == 0, result.output


# --- a valid header over garbage pages ---------------------------------------------------------

PAGE = 4096


def damage_pages(path: Path, how: str) -> None:
    """Keep page 1 (the header and the schema) and write garbage into every later page: ``text``
    turns bytes inside the stored records into 0xFF (the rows still parse as rows, their text is
    not UTF-8), ``pages`` overwrites the pages past their headers (the b-trees no longer hold)."""
    data = bytearray(path.read_bytes())
    for base in range(PAGE, len(data), PAGE):
        span = range(base + 3000, base + 3100) if how == "text" else range(base + 1000, base + PAGE)
        for i in span:
            data[i] = 0xFF if how == "text" else (i * 7919) % 251
    path.write_bytes(bytes(data))


@pytest.fixture
def full_store(data_dir: Path) -> Path:
    data_dir.mkdir(parents=True)
    path = data_dir / "runs.sqlite3"
    with SqliteRunStore(path) as store:
        for i in range(40):
            store.insert_if_absent(RunRecord(request_id=f"kept-{i}", error="x" * 300))
    assert not (data_dir / "runs.sqlite3-wal").exists()  # closing checkpointed everything into the file
    return path


def assert_damaged_answer(text: str, path: Path) -> None:
    text = " ".join(text.split())
    assert f"{path} is damaged" in text and f"mv {path} {path}.damaged" in text
    assert f"sqlite3 {path} .recover" in text
    assert (
        "temporary" not in text and "try again" not in text and "(permanent: retrying will not help)" in text
    )
    assert "request_id" not in text and "\ufffd" not in text and "xxxx" not in text  # no stored bytes


@pytest.mark.parametrize("how", ["text", "pages"])
def test_garbage_pages_under_a_valid_header_get_the_damaged_answer_from_list(run, full_store, how):
    damage_pages(full_store, how)
    result = run("list")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert_damaged_answer(result.output, full_store)


@pytest.mark.parametrize("how", ["text", "pages"])
def test_serve_refuses_to_start_on_garbage_pages(full_store, how):
    damage_pages(full_store, how)
    # a process of its own: a serve that starts anyway is a timeout here, not a hung test
    argv = [sys.executable, "-m", "shared.cli", "--data-dir", str(full_store.parent), "serve", "--port", "0"]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "400"}
    )
    assert done.returncode == 1
    assert_damaged_answer(done.stdout + done.stderr, full_store)


@pytest.mark.parametrize("how", ["text", "pages"])
def test_pages_damaged_while_serving_are_the_damaged_answer_on_the_api_and_in_health(full_store, how):
    import function_app
    from shared.adapters.compute.compute_twin import ComputeTwin
    from shared.composition import build, install
    from shared.localhost.bindings import list_functions
    from shared.settings import Settings

    settings = Settings(_env_file=None, data_dir=full_store.parent, backend="twin")  # type: ignore[call-arg]
    w = build(settings, compute={"twin": ComputeTwin(full_store.parent / "twin.sqlite3")}, faults=None)
    fns = {fn.get_function_name(): fn.get_user_function() for fn in list_functions(function_app.app)}
    install(w)
    try:
        assert json.loads(fns["health"](_get("/api/health")).get_body())["checks"]["store"]["ok"] is True
        w.store.close()
        damage_pages(full_store, how)
        w.store._db = Connections(str(full_store), busy_timeout_s=1)  # new connections read the damage
        w.service._readiness._answer = None  # not the answer cached before the damage
        resp = fns["list_trainings"](_get("/api/trainings"))
        assert resp.status_code == 503 and resp.headers["Retry-After"] == "60"
        (error,) = json.loads(resp.get_body())["errors"]
        assert_damaged_answer(error["message"], full_store)
        health = fns["health"](_get("/api/health"))
        store = json.loads(health.get_body())["checks"]["store"]
        assert health.status_code == 503 and store["ok"] is False
        assert_damaged_answer(store["detail"], full_store)
    finally:
        install(None)
        w.store.close()


def _get(url: str):
    import azure.functions as func

    return func.HttpRequest(method="GET", url=url, body=b"", params={}, route_params={}, headers={})


# --- a data directory that cannot be written ---------------------------------------------------


@pytest.fixture
def read_only_mount(tmp_path: Path):
    """A read-only filesystem at ``tmp_path / "ro"`` holding a data dir with both stores (root can
    write through file modes, not through a read-only mount)."""
    src = tmp_path / "src"
    (src / "rlq").mkdir(parents=True)
    with SqliteRunStore(src / "rlq" / "runs.sqlite3") as store:
        store.insert_if_absent(RunRecord(request_id="kept"))
    with SqliteBroker(src / "rlq" / "queue.sqlite3") as broker:
        broker.create_queue("training-requests")
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0:
        os.chmod(src / "rlq", 0o555)
        os.chmod(src, 0o555)
        yield src
        os.chmod(src, 0o755)
        os.chmod(src / "rlq", 0o755)
        return
    bound = subprocess.run(["mount", "--bind", "-o", "ro", str(src), str(ro)], capture_output=True)
    if bound.returncode != 0:
        pytest.skip(f"a read-only bind mount is not allowed here: {bound.stderr.decode().strip()}")
    subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], check=False)
    try:
        yield ro
    finally:
        subprocess.run(["umount", str(ro)], check=False)


@pytest.mark.parametrize("where", ["rlq", "rlq/new"], ids=["existing", "to-create"])
def test_a_read_only_data_dir_is_said_to_be_read_only_and_permanent(read_only_mount, where):
    data_dir = read_only_mount / where
    argv = [sys.executable, "-m", "shared.cli", "--data-dir", str(data_dir), "list"]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "400"}
    )
    text = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 1 and "Traceback" not in text
    assert str(read_only_mount) in text and "is read-only" in text and "permanent" in text
    assert "temporary" not in text and "busy" not in text
