"""The real function_app.py under the local host on the compute twin: settlement as Service Bus does it."""

from __future__ import annotations

import json

import pytest

from shared.adapters.compute_twin import ComputeTwin
from shared.adapters.sqlite_broker import SqliteBroker
from shared.composition import build
from shared.errors import TransientError
from shared.localhost import LocalHost
from shared.models import RunState
from shared.settings import Settings


@pytest.fixture
def hosted(tmp_path, clock):
    settings = Settings(_env_file=None, data_dir=tmp_path / "rlq", backend="twin")  # type: ignore[call-arg]
    settings.data_dir.mkdir(parents=True)
    twin = ComputeTwin(tmp_path / "twin.sqlite3")
    broker = SqliteBroker(settings.queue_db, clock=clock.epoch)
    w = build(settings, compute={"twin": twin}, broker=broker, clock=clock)
    host = LocalHost.for_wiring(w, clock=clock.epoch)
    yield w, host, twin
    host.close()


def test_invalid_request_is_dead_lettered_at_once_naming_the_field(hosted):
    w, host, twin = hosted
    w.broker.send(
        w.settings.queue_name,
        json.dumps({"env": "CartPole-v1", "config": {"num_workers": -2}}),
        message_id="poison",
    )
    host.drain()
    (dead,) = w.broker.dead_letters(w.settings.queue_name)
    assert dead.delivery_count == 1 and dead.reason == "InvalidRequest"
    assert "config" in dead.description and "num_workers" in dead.description
    assert twin.jobs_per_request() == {}
    assert w.store.get("poison").state is RunState.rejected


def test_transient_failures_are_redelivered_then_dead_lettered_with_the_last_error(hosted):
    w, host, twin = hosted
    attempts = []

    def flaky(request):
        attempts.append(request.request_id)
        raise TransientError(f"ray head busy (attempt {len(attempts)})")

    twin.ensure_compute = flaky
    w.broker.send(
        w.settings.queue_name, json.dumps({"env": "CartPole-v1", "request_id": "t"}), message_id="t"
    )
    for _ in range(20):
        host.drain()
    counts = [i.delivery_count for i in host.invocations if i.function == "intake"]
    assert counts == list(range(1, w.settings.max_delivery_count + 1))
    (dead,) = w.broker.dead_letters(w.settings.queue_name)
    assert dead.reason == "MaxDeliveryCountExceeded"
    assert f"attempt {w.settings.max_delivery_count}" in dead.description
    assert twin.jobs_per_request() == {}
    rec = w.store.get("t")  # accounted for: the record says where the request went and why
    assert rec.state is RunState.rejected and "dead-lettered after 10 deliveries" in rec.error
    # Nothing is lost: resubmitting the dead letter once the fault is gone runs it.
    del twin.ensure_compute
    w.broker.resubmit_dead_letter(w.settings.queue_name, dead.sequence_number)
    host.drain()
    assert twin.jobs_per_request() == {"t": 1}
    assert w.store.get("t").state is RunState.submitted
