"""A processing process for the crash and load suites: it can be SIGKILLed at any line and restarted.

Run as ``python -m tests.guarantees.crash_driver`` with the settings in the environment
(``RLQ_DATA_DIR``, ``RLQ_BACKEND=twin``, ``RLQ_LOCK_DURATION_S``, optionally ``RLQ_FAULT_AT``). It
builds the production wiring on the data dir — SQLite queue and run store, the compute twin whose
SQLite file persists across kills — and does what the Functions host does: deliver intake messages
(complete / abandon / dead-letter), fire the poller timer, deliver completion messages to the
notifier. By default it runs the app through :class:`shared.localhost.LocalHost` (the real
``function_app.py`` handlers); ``--mode direct`` drives the service the same way without it.

It stops, exit 0, once everything is settled: no message due, locked or scheduled on the intake
queue or the notifier subscription, and no run record that is still active or terminal but
unpublished. A request that were lost would keep it from settling: it exits 3 at ``--max-seconds``.

Observations for the parent (append-only files under the data dir, one JSON object per line, each
written with one ``write`` so a SIGKILL leaves whole lines):

* ``topic-sends.jsonl``: every send to the completion topic and whether the broker took it
  (False: duplicate detection dropped a repeat) — the outbox publishing at most once per id;
* ``notified.jsonl``: every completion message handed to the notifier.

Other backends: ``RLQ_BACKEND=ray`` builds the Ray Jobs backend on a running head instead of the
twin (:func:`compute_under_test`): ``RLQ_TEST_TRAINER_PACKAGE`` names the trainer package its jobs run
(the stand-in of ``tests/ray/conftest.py``) and ``RLQ_TEST_SUBMIT_JOURNAL`` the file every
``submit_job`` call is noted in (``tests/support/ray_submits.py``), so the parent counts calls per
submission id, one per attempt (``count_jobs`` in ``test_crash_matrix.py``).

``RLQ_TEST_FAULT_ON_RESUME=1``: ``RLQ_FAULT_AT`` kills only once a run has lost a job (its record
holds an attempt): the kill lands in the resume's own submit, not the first one.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from shared.adapters.broker.sqlite_broker import MessageLockLost, SqliteBroker
from shared.composition import Wiring, build
from shared.contracts import message_ids
from shared.contracts.completion import CompletionMessage, Delivery
from shared.contracts.request import TrainingRequest
from shared.contracts.run import ACTIVE, TERMINAL
from shared.ports import ComputeBackend
from shared.settings import Settings
from tests.support.topics import is_event

REPO = Path(__file__).resolve().parents[2]
AUDIT_SUBSCRIPTION = "audit"  # a second subscription on the topic: what the world saw, never consumed here
TOPIC_SENDS = "topic-sends.jsonl"
NOTIFIED = "notified.jsonl"


def append_record(path: Path, record: dict[str, Any]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(record) + "\n").encode())
    finally:
        os.close(fd)


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records :func:`append_record` wrote to ``path`` (none when it does not exist)."""
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def is_completion(message_id: str | None) -> bool:
    """A completion message's id (``<request_id>:completed``), not a model event's: the topic
    carries both (docs/models.md), the suites count completions."""
    return message_id is not None and message_id.endswith(message_ids.completed(""))


def driver_env(data_dir: Path, **extra: Any) -> dict[str, str]:
    """The environment of a driver process on ``data_dir``: none of this process's ``RLQ_`` settings,
    the compute twin, the SQLite queue and store, one-second locks; ``extra`` adds or replaces."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RLQ_")}
    env.update(
        RLQ_DATA_DIR=str(data_dir),
        RLQ_BACKEND="twin",
        RLQ_BROKER="sqlite",
        RLQ_STORE="sqlite",
        RLQ_LOCK_DURATION_S="1",
        PYTHONPATH=str(REPO),
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


class AuditedBroker(SqliteBroker):
    """The SQLite broker, noting each send to the completion topic and whether it landed."""

    def __init__(self, *args: Any, topic: str, log_path: Path, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._topic, self._log_path = topic, log_path

    def send(self, entity: str, body: bytes | str, **kwargs: Any) -> bool:
        landed = super().send(entity, body, **kwargs)
        if entity == self._topic:
            append_record(
                self._log_path, {"message_id": kwargs.get("message_id"), "landed": landed, "pid": os.getpid()}
            )
        return landed


class FileNotifier:
    """Stands in for webhooks / Teams: notes each completion message it is handed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def deliver(self, message: CompletionMessage, request: TrainingRequest | None) -> list[Delivery]:
        append_record(self.path, {"message_id": message.message_id, "pid": os.getpid()})
        return [Delivery(target="file", ok=True, attempts=1)]


def audited_broker(s: Settings) -> AuditedBroker:
    """The data dir's SQLite queue, its sends to the completion topic noted in ``TOPIC_SENDS``."""
    return AuditedBroker(
        s.queue_db,
        lock_duration_s=s.lock_duration_s,
        max_delivery_count=s.max_delivery_count,
        duplicate_detection_window_s=s.duplicate_detection_window_s,
        topic=s.topic_name,
        log_path=s.data_dir / TOPIC_SENDS,
    )


def compute_under_test(settings: Settings) -> dict[str, ComputeBackend] | None:
    """The Ray Jobs backend with the test's trainer package and submit journal (``RLQ_BACKEND=ray``),
    else None: the production wiring's own backend (the twin)."""
    if settings.backend != "ray":
        return None
    from shared.adapters.compute.ray_jobs import RayJobsBackend
    from tests.support.ray_submits import JOURNAL_ENV, record_submit_jobs

    if os.environ.get(JOURNAL_ENV):  # the parent counts the submit calls, not the jobs Ray kept
        record_submit_jobs(Path(os.environ[JOURNAL_ENV]))
    package = os.environ.get("RLQ_TEST_TRAINER_PACKAGE")
    return {
        "ray": RayJobsBackend(
            address=None, settings=settings, trainer_package=Path(package) if package else None
        )
    }


def wire(settings: Settings) -> Wiring:
    w = build(
        settings,
        broker=audited_broker(settings),
        compute=compute_under_test(settings),
        notifier=FileNotifier(settings.data_dir / NOTIFIED),
    )
    kill = w.service.core.faults
    if kill is not None and os.environ.get("RLQ_TEST_FAULT_ON_RESUME") == "1":
        store = w.store

        def on_resume(point: str) -> None:
            if any(r.attempts for r in store.list(limit=1000)):
                kill(point)

        w.service.core.faults = on_resume
    return w


def prepare(settings: Settings) -> SqliteBroker:
    """Create the entities (and the audit subscription) before anything is sent or published."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    broker = SqliteBroker(
        settings.queue_db,
        lock_duration_s=settings.lock_duration_s,
        max_delivery_count=settings.max_delivery_count,
        duplicate_detection_window_s=settings.duplicate_detection_window_s,
    )
    broker.create_queue(settings.queue_name)
    broker.create_topic(settings.topic_name)
    broker.create_subscription(settings.topic_name, settings.subscription_name)
    broker.create_subscription(settings.topic_name, AUDIT_SUBSCRIPTION)
    return broker


def settled(w: Wiring) -> bool:
    s, b = w.settings, w.broker
    for counts in (b.counts(s.queue_name), b.counts(s.topic_name, subscription=s.subscription_name)):
        if counts["active"] or counts["locked"] or counts["scheduled"]:
            return False
    return w.store.count([*ACTIVE, *TERMINAL]) == 0


# Messages delivered per round before the poller fires again. In a real host the timer runs on its
# own thread; a round-robin driver that drained without bound could starve the poller for good
# when deferred requests come due faster than one pass over them takes.
ROUND_MESSAGES = 500


class HostDrive:
    """One round through :class:`shared.localhost.LocalHost`: deliver messages, fire the poller."""

    def __init__(self, w: Wiring) -> None:
        from shared.localhost import LocalHost

        self.host = LocalHost.for_wiring(w)

    def round(self) -> int:
        done = self.host.drain(max_messages=ROUND_MESSAGES)
        self.host.tick_timers(now=self.host.next_due("poller"))
        return done + self.host.drain(max_messages=ROUND_MESSAGES)


class DirectDrive:
    """The same round without the host: receive → handler call → settle, as the host would."""

    def __init__(self, w: Wiring) -> None:
        self.w = w

    def round(self) -> int:
        w, s = self.w, self.w.settings
        done = 0
        while done < ROUND_MESSAGES and (msgs := w.broker.receive(s.queue_name)):
            (m,) = msgs
            done += 1
            try:
                w.service.intake(m.body, message_id=m.message_id, delivery_count=m.delivery_count)
            except Exception:  # noqa: BLE001 - as the host: any failure abandons, the queue redelivers
                _settle(w.broker.abandon, m)
            else:
                _settle(w.broker.complete, m)  # False when the handler dead-lettered it
        w.service.poll_once()
        while done < 2 * ROUND_MESSAGES and (
            msgs := w.broker.receive(s.topic_name, subscription=s.subscription_name)
        ):
            (m,) = msgs
            if is_event(m):  # a model-promoted event: the notifier's trigger skips it
                _settle(w.broker.complete, m)
                continue
            done += 1
            try:
                w.service.notify(CompletionMessage.model_validate_json(m.body))
            except Exception:  # noqa: BLE001 - as the host
                _settle(w.broker.abandon, m)
            else:
                _settle(w.broker.complete, m)
        return done


def _settle(how: Any, message: Any) -> None:
    try:
        how(message)
    except MessageLockLost:  # the lock ran out: the message is redelivered, as on Service Bus
        pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mode", choices=("host", "direct"), default="host")
    p.add_argument("--max-seconds", type=float, default=120.0)
    p.add_argument("--idle-sleep-s", type=float, default=0.05)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    settings = Settings()
    prepare(settings)
    w = wire(settings)
    drive = HostDrive(w) if args.mode == "host" else DirectDrive(w)
    deadline = time.monotonic() + args.max_seconds
    while True:
        did = drive.round()
        if settled(w):
            return 0
        if time.monotonic() > deadline:
            active = [r.request_id for r in w.store.list(states=[*ACTIVE, *TERMINAL], limit=20)]
            print(f"not settled after {args.max_seconds:.0f} s; still open: {active}", file=sys.stderr)
            return 3
        if not did:
            time.sleep(args.idle_sleep_s)  # waiting for a lock to expire or a scheduled message


if __name__ == "__main__":
    sys.exit(main())
