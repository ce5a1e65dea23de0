"""Readiness (``/api/health``): the probes run side by side, bounded in time, and the answer is
reused for a short while; on the Azure wiring every dependency has a probe of its own."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from shared.core.readiness import ReadinessGate


class Probe:
    """A dependency whose check answers ``detail``, raises ``error`` or waits for ``release``."""

    def __init__(self, detail: str = "fine", error: Exception | None = None, hang: bool = False) -> None:
        self.detail, self.error = detail, error
        self.calls = 0
        self.release = threading.Event()
        if not hang:
            self.release.set()

    def check(self) -> str:
        self.calls += 1
        self.release.wait(30)
        if self.error is not None:
            raise self.error
        return self.detail


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_every_dependency_is_listed_with_what_its_check_found() -> None:
    deps = [
        ("store", Probe("table writable")),
        ("queue", Probe(error=OSError("refused\n  by  peer"))),
        ("x", object()),
    ]
    answer = ReadinessGate(lambda: deps).readiness()
    assert [(c.name, c.ok, c.detail) for c in answer.checks] == [
        ("store", True, "table writable"),
        ("queue", False, "OSError: refused by peer"),
        ("x", None, "no readiness check"),
    ]
    assert answer.ready is False and answer.age_s == 0


def test_an_answer_is_reused_for_ttl_then_checked_again() -> None:
    clock, store = Clock(), Probe()
    gate = ReadinessGate(lambda: [("store", store)], ttl_s=5, monotonic=clock)
    assert gate.readiness().ready and store.calls == 1
    clock.now += 4.9
    again = gate.readiness()
    assert store.calls == 1 and again.age_s == pytest.approx(4.9)
    clock.now += 0.1
    assert gate.readiness().age_s == 0 and store.calls == 2


def test_a_failure_is_reused_as_briefly_as_a_success() -> None:
    clock, store = Clock(), Probe(error=OSError("read-only"))
    gate = ReadinessGate(lambda: [("store", store)], ttl_s=5, monotonic=clock)
    assert gate.readiness().ready is False
    store.error = None
    assert gate.readiness().ready is False  # within the ttl: the same answer
    clock.now += 5
    assert gate.readiness().ready is True


def test_probes_run_side_by_side_and_a_hung_one_is_reported_within_the_timeout() -> None:
    slow = [Probe(hang=True) for _ in range(3)]
    ok = Probe("fine")
    gate = ReadinessGate(lambda: [("a", slow[0]), ("b", slow[1]), ("c", slow[2]), ("ok", ok)], timeout_s=0.5)
    started = time.monotonic()
    answer = gate.readiness()
    took = time.monotonic() - started
    assert 0.45 <= took < 1.4  # one timeout in all, not one per hung probe
    assert [(c.name, c.ok) for c in answer.checks] == [("a", False), ("b", False), ("c", False), ("ok", True)]
    assert "no answer within 0.5s" in answer.checks[0].detail
    for p in slow:
        p.release.set()


def test_a_probe_still_running_is_not_started_again() -> None:
    clock, hung = Clock(), Probe(hang=True)
    gate = ReadinessGate(lambda: [("compute", hung)], ttl_s=1, timeout_s=0.2, monotonic=clock)
    assert gate.readiness().checks[0].ok is False
    for n in (1, 2, 3):
        clock.now += 10
        check = gate.readiness().checks[0]
        assert check.ok is False and f"checking for {10 * n}s" in check.detail
    assert hung.calls == 1  # never a second thread on a dependency that has not answered
    clock.now += 10
    threading.Timer(0.05, hung.release.set).start()  # answers while this round waits for it
    late = gate.readiness().checks[0]
    assert late.ok is True and late.detail == "fine (a check started earlier, answered late)"
    clock.now += 10
    assert gate.readiness().checks[0].detail == "fine" and hung.calls == 2  # a fresh check again


def test_concurrent_callers_share_one_round_of_checks() -> None:
    store = Probe(hang=True)
    gate = ReadinessGate(lambda: [("store", store)], ttl_s=60, timeout_s=5)
    answers: list[bool] = []
    threads = [threading.Thread(target=lambda: answers.append(gate.readiness().ready)) for _ in range(20)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    store.release.set()
    for t in threads:
        t.join(10)
    assert answers == [True] * 20 and store.calls == 1


# --- the Azure wiring: the Table store, Service Bus and Azure ML each have a probe ----------------------


@pytest.mark.azurite
def test_the_azure_wiring_checks_every_dependency(azurite, tmp_path) -> None:
    from shared.adapters.compute.azureml.v2 import AzureMLV2Backend
    from shared.composition import build
    from shared.settings import Settings
    from tests.support.azureml_twin import MLClientTwin

    with socket.socket() as s:  # a Service Bus endpoint nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    key = "c2VjcmV0LWtleS1kby1ub3QtbGVhaw=="
    settings = Settings(
        _env_file=None,
        data_dir=tmp_path,
        broker="servicebus",
        servicebus_connection=f"Endpoint=sb://127.0.0.1:{port}/;SharedAccessKeyName=s;SharedAccessKey={key}",
        store="table",
        table_connection=azurite.connection_string,
        table_name="readiness" + str(port),
        backend="azureml",
        azureml_subscription_id="00000000-0000-0000-0000-000000000000",
        azureml_resource_group="rlq-rg",
        azureml_workspace="rlq-ws",
    )  # type: ignore[call-arg]
    twin = MLClientTwin(resource_group="rlq-rg", workspace="rlq-ws")
    w = build(
        settings, compute={"azureml": AzureMLV2Backend(settings=settings, ml_client=twin, runs=twin.runs)}
    )
    try:
        answer = w.service.readiness()
    finally:
        w.store.close()
    checks = {c.name: c for c in answer.checks}
    assert {n: c.ok for n, c in checks.items()} == {
        "store": True,
        "queue": False,
        "topic": False,
        "compute:azureml": True,
    }
    assert "writable" in checks["store"].detail and "rlq-ws" in checks["compute:azureml"].detail
    assert "queue training-requests" in checks["queue"].detail
    assert "topic training-completed" in checks["topic"].detail
    assert all(key not in c.detail for c in answer.checks)
    assert answer.ready is False
