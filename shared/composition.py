"""The composition root of the service: every adapter is built here, once, from the settings.

Triggers never build SDK clients; they call ``wiring().service``. Tests and the local host build
their own wiring with ``build(...)`` (any piece can be passed in) and ``install`` it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared.core.faults import env_faults
from shared.core.service import TrainingService
from shared.ports import (
    ChampionMirror,
    ComputeBackend,
    DeadLetterInbox,
    Notifier,
    Publisher,
    Rejecter,
    RequestSender,
    RunStore,
)
from shared.settings import Settings, get_settings

if TYPE_CHECKING:
    from shared.adapters.broker.sqlite_broker import SqliteBroker

log = logging.getLogger(__name__)


@dataclass
class Wiring:
    settings: Settings
    service: TrainingService
    store: RunStore
    compute: dict[str, ComputeBackend]
    publisher: Publisher
    sender: RequestSender
    notifier: Notifier | None
    broker: SqliteBroker | None = None  # local mode only: the local host drives its triggers from it
    rejecter: Rejecter | None = None
    # Where dead letters can be listed and resubmitted: the SQLite broker locally; None on Service
    # Bus (the portal's Service Bus Explorer does it there).
    dead_letters: DeadLetterInbox | None = None


def _compute(settings: Settings, name: str) -> ComputeBackend:
    if name == "twin":
        from shared.adapters.compute.compute_twin import ComputeTwin

        return ComputeTwin(settings.data_dir / "twin.sqlite3")
    if name == "ray":
        from shared.adapters.compute.ray_jobs import RayJobsBackend

        return RayJobsBackend(address=settings.ray_address, settings=settings)
    if name == "azureml":
        from shared.adapters.compute.azureml.v2 import AzureMLV2Backend

        return AzureMLV2Backend(settings=settings)
    if name == "azureml_v1":
        from shared.adapters.compute.azureml.retired import RetiredV1Backend

        return RetiredV1Backend(settings=settings)
    raise ValueError(f"RLQ_BACKEND: {name!r} is not a backend; allowed: ray, azureml, azureml_v1, twin")


def _ml_client_of(backend: Any) -> Callable[[], Any]:
    """An Azure ML backend's ``MLClient``, built on first use (the backend's own)."""
    return lambda: backend.ml


def _champion_mirrors(compute: dict[str, ComputeBackend]) -> dict[str, ChampionMirror]:
    """Azure ML backends show each champion in their workspace's model registry (docs/azure.md)."""
    mirrors: dict[str, ChampionMirror] = {}
    for name, backend in compute.items():
        if getattr(backend, "name", None) == "azureml" and hasattr(backend, "ml"):
            from shared.adapters.compute.azureml.registry import AzureMLModelRegistry

            mirrors[name] = AzureMLModelRegistry(ml_client_factory=_ml_client_of(backend))
    return mirrors


def build(
    settings: Settings | None = None,
    *,
    store: RunStore | None = None,
    compute: dict[str, ComputeBackend] | None = None,
    publisher: Publisher | None = None,
    sender: RequestSender | None = None,
    notifier: Notifier | None = None,
    broker: SqliteBroker | None = None,
    rejecter: Rejecter | None = None,
    **service_options: Any,
) -> Wiring:
    settings = settings or get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if settings.broker == "sqlite":
        from shared.adapters.broker.sqlite_broker import (
            SqliteBroker,
            SqlitePublisher,
            SqliteRejecter,
            SqliteRequestSender,
        )

        broker = broker or SqliteBroker(
            settings.queue_db,
            lock_duration_s=settings.lock_duration_s,
            max_delivery_count=settings.max_delivery_count,
            duplicate_detection_window_s=settings.duplicate_detection_window_s,
        )
        broker.create_queue(settings.queue_name)
        broker.create_topic(settings.topic_name)
        broker.create_subscription(settings.topic_name, settings.subscription_name)
        publisher = publisher or SqlitePublisher(broker, settings.topic_name)
        sender = sender or SqliteRequestSender(broker, settings.queue_name)
        rejecter = rejecter or SqliteRejecter(broker, settings.queue_name)
    else:
        from shared.adapters.broker.servicebus import (
            ServiceBusPublisher,
            ServiceBusRejecter,
            ServiceBusRequestSender,
        )

        publisher = publisher or ServiceBusPublisher(settings=settings)
        sender = sender or ServiceBusRequestSender(settings=settings)
        rejecter = rejecter or ServiceBusRejecter(settings=settings)
    if store is None:
        if settings.store == "sqlite":
            from shared.adapters.store.sqlite_store import SqliteRunStore

            store = SqliteRunStore(settings.store_db)
        else:
            from shared.adapters.store.table_store import TableRunStore

            store = TableRunStore.from_settings(settings)
    if compute is None:
        compute = {settings.backend: _compute(settings, settings.backend)}
    if notifier is None:
        from shared.adapters.notify.composite import CompositeNotifier
        from shared.artifacts import metrics_points

        def curve_points(message: Any) -> list[dict]:
            # Remote runs have no local metrics.jsonl: fall back to the curve kept on the record.
            record = store.get(message.request_id)
            return metrics_points(record, settings) if record is not None else []

        notifier = CompositeNotifier(settings=settings, curve_points=curve_points)
    service_options.setdefault("faults", env_faults())
    if settings.backend == "ray" and settings.ray_address is None:  # run outputs are on this machine
        from shared.artifacts import save_reward_curve

        service_options.setdefault("artifacts", lambda record: save_reward_curve(record, settings))
    service_options.setdefault("champion_mirrors", _champion_mirrors(compute))
    service = TrainingService(
        settings=settings,
        store=store,
        compute=compute,
        publisher=publisher,
        sender=sender,
        notifier=notifier,
        rejecter=rejecter,
        **service_options,
    )
    return Wiring(
        settings=settings,
        service=service,
        store=store,
        compute=compute,
        publisher=publisher,
        sender=sender,
        notifier=notifier,
        broker=broker,
        rejecter=rejecter,
        dead_letters=broker,
    )


_current: Wiring | None = None
_lock = threading.Lock()


def wiring() -> Wiring:
    """The process-wide wiring, built on first use."""
    global _current
    if _current is None:
        with _lock:
            if _current is None:
                _current = build()
    return _current


def install(w: Wiring | None) -> None:
    """Make ``w`` the process-wide wiring (the local host, tests); None forgets it."""
    global _current
    with _lock:
        _current = w
