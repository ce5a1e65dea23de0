"""The embedded Service Bus twin: queues, topics and subscriptions in one SQLite file.

It gives the local host the semantics the service is written against in Azure, so the same code
paths run here: peek-lock with a lock that expires, a delivery count that grows on every lock and
sends a poison message to the dead-letter sub-queue (``MaxDeliveryCountExceeded``), explicit
dead-lettering with a reason and a description, duplicate detection on ``message_id`` within a
window, scheduled messages, and topics that fan a copy out to each subscription.

Every state change is one SQLite transaction. Receiving takes the write lock first
(``BEGIN IMMEDIATE``), so two receivers, in threads or in processes, never lock the same message.
The file is in WAL mode with ``synchronous=NORMAL``: a committed send or settlement survives the
process being killed at any line (not a power cut, which the local host does not promise).

Why not a library: see ``docs/queue.md``.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared import telemetry
from shared.adapters._sqlite import Connections
from shared.contracts.completion import CompletionMessage
from shared.contracts.models import PromotionEvent
from shared.errors import TransientError
from shared.ports import DeadLetter

log = logging.getLogger(__name__)

__all__ = [
    "DeadLetter",
    "MessageLockLost",
    "ReceivedMessage",
    "SqliteBroker",
    "SqlitePublisher",
    "SqliteRejecter",
    "SqliteRequestSender",
]

MAX_DELIVERY_REASON = "MaxDeliveryCountExceeded"
_SUBSCRIPTION_SEP = "/Subscriptions/"
_RESUBMIT_RE = re.compile(r"^(?P<base>.*):resubmit:(?P<n>\d+)$")
# Expired duplicate-detection entries are swept every this many sends (per broker object).
_DEDUP_SWEEP_EVERY = 512

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entities (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('queue', 'topic'))
);
CREATE TABLE IF NOT EXISTS subscriptions (
    topic TEXT NOT NULL,
    name TEXT NOT NULL,
    PRIMARY KEY (topic, name)
);
-- One row per message in a queue or a subscription. ``visible_at`` is when it can next be
-- received: its scheduled time, or the end of its lock while locked. ``available_at`` is where
-- an abandoned message goes back to, so it keeps its place in line.
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL,
    message_id TEXT NOT NULL,
    body BLOB NOT NULL,
    correlation_id TEXT,
    content_type TEXT,
    properties TEXT NOT NULL DEFAULT '{}',
    enqueued_at REAL NOT NULL,
    scheduled_at REAL,
    available_at REAL NOT NULL,
    visible_at REAL NOT NULL,
    delivery_count INTEGER NOT NULL DEFAULT 0,
    lock_token TEXT,
    lock_s REAL
);
CREATE INDEX IF NOT EXISTS messages_ready ON messages (path, visible_at, seq);
CREATE INDEX IF NOT EXISTS messages_by_id ON messages (path, message_id);
CREATE TABLE IF NOT EXISTS dead_letters (
    seq INTEGER PRIMARY KEY,
    path TEXT NOT NULL,
    message_id TEXT NOT NULL,
    body BLOB NOT NULL,
    correlation_id TEXT,
    content_type TEXT,
    properties TEXT NOT NULL DEFAULT '{}',
    enqueued_at REAL NOT NULL,
    delivery_count INTEGER NOT NULL,
    reason TEXT NOT NULL,
    description TEXT NOT NULL,
    dead_lettered_at REAL NOT NULL,
    -- the lock under which it was dead-lettered: that holder's later complete() is a no-op
    lock_token TEXT
);
CREATE INDEX IF NOT EXISTS dead_letters_by_path ON dead_letters (path, seq);
CREATE TABLE IF NOT EXISTS dedup (
    entity TEXT NOT NULL,
    message_id TEXT NOT NULL,
    sent_at REAL NOT NULL,
    PRIMARY KEY (entity, message_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dedup_by_time ON dedup (sent_at);
"""

_MSG_COLS = (
    "seq, path, message_id, body, correlation_id, content_type, properties, enqueued_at, "
    "scheduled_at, visible_at, delivery_count, lock_token"
)


class MessageLockLost(TransientError):
    """The lock on a received message expired or was taken by another receiver.

    The message is (or will be) redelivered; whatever this holder did must be safe to repeat.
    """


@dataclass
class ReceivedMessage:
    """A message locked by :meth:`SqliteBroker.receive` (or, unlocked, returned by ``peek``)."""

    entity: str
    subscription: str | None
    sequence_number: int
    message_id: str
    body: bytes
    delivery_count: int
    enqueued_at: datetime
    scheduled_at: datetime | None
    locked_until: float
    lock_token: str
    correlation_id: str | None = None
    content_type: str | None = None
    application_properties: dict[str, Any] = field(default_factory=dict)


class SqliteBroker:
    """Service Bus semantics on one SQLite file, shared by threads and processes.

    Entities are created on first use (a name sent to is a queue unless created as a topic), or
    explicitly with :meth:`create_queue`, :meth:`create_topic` and :meth:`create_subscription`.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        lock_duration_s: float = 60.0,
        max_delivery_count: int = 10,
        duplicate_detection_window_s: float = 600.0,
        busy_timeout_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if lock_duration_s <= 0:
            raise ValueError(f"lock_duration_s must be > 0, got {lock_duration_s}")
        if max_delivery_count < 1:
            raise ValueError(f"max_delivery_count must be >= 1, got {max_delivery_count}")
        if duplicate_detection_window_s < 0:
            raise ValueError(f"duplicate_detection_window_s must be >= 0, got {duplicate_detection_window_s}")
        self.path = str(path)
        self.lock_duration_s = float(lock_duration_s)
        self.max_delivery_count = int(max_delivery_count)
        self.duplicate_detection_window_s = float(duplicate_detection_window_s)
        self._clock = clock
        self._db = Connections(self.path, busy_timeout_s=busy_timeout_s)
        self._sends = 0
        self._receivable: set[tuple[str, str | None]] = set()
        self._db.init(_SCHEMA)

    # --- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        """Close every connection this object opened (all threads)."""
        self._db.close()

    def __enter__(self) -> SqliteBroker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- entities -------------------------------------------------------------------------

    def check(self, entity: str) -> str:
        """Ready to take messages for ``entity`` (a queue or a topic): it exists and the file
        takes a write."""
        with self._db.read() as conn:
            row = conn.execute("SELECT kind FROM entities WHERE name=?", (entity,)).fetchone()
        if row is None:
            raise TransientError(f"queue or topic {entity!r} does not exist in {self.path}")
        self._db.check_writable()
        return f"{row[0]} {entity} in {self.path} writable"

    def create_queue(self, name: str) -> None:
        with self._db.tx() as conn:
            self._ensure_entity(conn, name, "queue")

    def create_topic(self, name: str) -> None:
        with self._db.tx() as conn:
            self._ensure_entity(conn, name, "topic")

    def create_subscription(self, topic: str, name: str) -> None:
        with self._db.tx() as conn:
            self._ensure_subscription(conn, topic, name)

    def subscriptions(self, topic: str) -> list[str]:
        with self._db.read() as conn:
            return [
                r[0]
                for r in conn.execute("SELECT name FROM subscriptions WHERE topic=? ORDER BY name", (topic,))
            ]

    # --- sending --------------------------------------------------------------------------

    def send(
        self,
        entity: str,
        body: bytes | str,
        *,
        message_id: str | None = None,
        scheduled_at: datetime | float | None = None,
        correlation_id: str | None = None,
        content_type: str | None = "application/json",
        application_properties: dict[str, Any] | None = None,
    ) -> bool:
        """Enqueue ``body`` on a queue, or a copy on every subscription of a topic.

        Returns False when duplicate detection dropped it: the same ``message_id`` was sent to
        ``entity`` within the window. A topic without subscriptions accepts and drops the
        message, as Service Bus does.
        """
        data = body.encode("utf-8") if isinstance(body, str) else bytes(body)
        mid = message_id or uuid.uuid4().hex
        props = json.dumps(application_properties or {}, default=str)
        sched = _epoch(scheduled_at)
        with self._db.tx() as conn:
            now = self._clock()
            if self.duplicate_detection_window_s > 0 and self._is_duplicate(conn, entity, mid, now):
                return False
            kind = self._ensure_entity(conn, entity, None)
            if kind == "topic":
                paths = [
                    _path(entity, r[0])
                    for r in conn.execute("SELECT name FROM subscriptions WHERE topic=?", (entity,))
                ]
            else:
                paths = [entity]
            available = now if sched is None else max(now, sched)
            conn.executemany(
                "INSERT INTO messages (path, message_id, body, correlation_id, content_type, properties,"
                " enqueued_at, scheduled_at, available_at, visible_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                [
                    (p, mid, data, correlation_id, content_type, props, now, sched, available, available)
                    for p in paths
                ],
            )
        return True

    def _is_duplicate(self, conn: sqlite3.Connection, entity: str, mid: str, now: float) -> bool:
        window = self.duplicate_detection_window_s
        row = conn.execute(
            "SELECT sent_at FROM dedup WHERE entity=? AND message_id=?", (entity, mid)
        ).fetchone()
        if row is not None and now - row[0] < window:
            return True
        conn.execute(
            "INSERT OR REPLACE INTO dedup (entity, message_id, sent_at) VALUES (?,?,?)", (entity, mid, now)
        )
        self._sends += 1
        if self._sends % _DEDUP_SWEEP_EVERY == 0:
            conn.execute("DELETE FROM dedup WHERE sent_at < ?", (now - window,))
        return False

    # --- receiving ------------------------------------------------------------------------

    def receive(
        self,
        entity: str,
        *,
        subscription: str | None = None,
        max_messages: int = 1,
        lock_duration_s: float | None = None,
    ) -> list[ReceivedMessage]:
        """Lock up to ``max_messages`` due, unlocked messages (peek-lock), in one transaction.

        Each lock adds one to the message's delivery count; a message whose count would exceed
        ``max_delivery_count`` goes to the dead-letter sub-queue instead of being delivered.
        """
        if max_messages < 1:
            raise ValueError(f"max_messages must be >= 1, got {max_messages}")
        lock_s = self.lock_duration_s if lock_duration_s is None else float(lock_duration_s)
        path = _path(entity, subscription)
        self._check_receivable(entity, subscription)
        if not self._has_ready(path):
            return []
        out: list[ReceivedMessage] = []
        with self._db.tx() as conn:
            now = self._clock()
            while len(out) < max_messages:
                rows = conn.execute(
                    "SELECT seq, delivery_count FROM messages WHERE path=? AND visible_at<=?"
                    " ORDER BY visible_at, seq LIMIT ?",
                    (path, now, max_messages - len(out)),
                ).fetchall()
                if not rows:
                    break
                poisoned = [seq for seq, count in rows if count >= self.max_delivery_count]
                for seq in poisoned:
                    self._move_to_dlq(
                        conn, seq, MAX_DELIVERY_REASON, _max_delivery_text(self.max_delivery_count), now, None
                    )
                keep = [seq for seq, count in rows if count < self.max_delivery_count]
                if not keep:
                    continue
                # One UPDATE, a CASE giving each message its own lock token, locks the whole batch.
                case = " ".join("WHEN ? THEN ?" for _ in keep)
                tokens = [v for seq in keep for v in (seq, uuid.uuid4().hex)]
                marks = ",".join("?" * len(keep))
                locked = conn.execute(
                    f"UPDATE messages SET lock_token = CASE seq {case} END, visible_at=?, lock_s=?,"
                    f" delivery_count = delivery_count + 1 WHERE seq IN ({marks}) RETURNING {_MSG_COLS}",
                    (*tokens, now + lock_s, lock_s, *keep),
                ).fetchall()
                order = {seq: i for i, seq in enumerate(keep)}
                locked.sort(key=lambda r: order[r[0]])
                out.extend(_received(r, entity, subscription) for r in locked)
        return out

    # --- settling -------------------------------------------------------------------------

    def complete(self, msg: ReceivedMessage) -> bool:
        """Remove a locked message. False when this lock already dead-lettered it (a no-op)."""
        with self._db.tx() as conn:
            now = self._clock()
            cur = conn.execute(
                "DELETE FROM messages WHERE seq=? AND lock_token=? AND visible_at>?",
                (msg.sequence_number, msg.lock_token, now),
            )
            if cur.rowcount == 1:
                return True
            return self._settled_or_lost(conn, msg)

    def abandon(self, msg: ReceivedMessage, *, properties_to_modify: dict[str, Any] | None = None) -> bool:
        """Release the lock: the message is receivable again at once, its delivery count kept.

        When the count has reached ``max_delivery_count`` the message goes to the dead-letter
        sub-queue now (``MaxDeliveryCountExceeded``) rather than on the next receive.
        """
        with self._db.tx() as conn:
            now = self._clock()
            row = self._locked_row(conn, msg, now)
            if row is None:
                return self._settled_or_lost(conn, msg)
            if properties_to_modify:
                props = {**json.loads(row[1]), **properties_to_modify}
                conn.execute(
                    "UPDATE messages SET properties=? WHERE seq=?",
                    (json.dumps(props, default=str), msg.sequence_number),
                )
            if row[0] >= self.max_delivery_count:
                self._move_to_dlq(
                    conn,
                    msg.sequence_number,
                    MAX_DELIVERY_REASON,
                    _max_delivery_text(self.max_delivery_count),
                    now,
                    msg.lock_token,
                )
                return True
            conn.execute(
                "UPDATE messages SET lock_token=NULL, lock_s=NULL, visible_at=available_at WHERE seq=?",
                (msg.sequence_number,),
            )
            return True

    def dead_letter(self, msg: ReceivedMessage, *, reason: str, description: str) -> bool:
        """Move a locked message to the dead-letter sub-queue with a reason a person acts on."""
        with self._db.tx() as conn:
            now = self._clock()
            if self._locked_row(conn, msg, now) is None:
                return self._settled_or_lost(conn, msg)
            self._move_to_dlq(conn, msg.sequence_number, reason, description, now, msg.lock_token)
            return True

    def dead_letter_by_id(
        self,
        entity: str,
        message_id: str,
        *,
        reason: str,
        description: str,
        subscription: str | None = None,
    ) -> bool:
        """Dead-letter the currently locked message with ``message_id``.

        Lets a handler settle its own message when the request can never succeed; the lock
        holder's later :meth:`complete` then returns False. False when no such message is locked.
        """
        with self._db.tx() as conn:
            now = self._clock()
            row = conn.execute(
                "SELECT seq, lock_token FROM messages WHERE path=? AND message_id=?"
                " AND lock_token IS NOT NULL AND visible_at>? ORDER BY seq LIMIT 1",
                (_path(entity, subscription), message_id, now),
            ).fetchone()
            if row is None:
                return False
            self._move_to_dlq(conn, row[0], reason, description, now, row[1])
            return True

    def renew_lock(self, msg: ReceivedMessage) -> float:
        """Extend the lock by its duration from now; returns (and stores on ``msg``) the new end."""
        with self._db.tx() as conn:
            now = self._clock()
            row = conn.execute(
                "UPDATE messages SET visible_at = ? + lock_s WHERE seq=? AND lock_token=? AND visible_at>?"
                " RETURNING visible_at",
                (now, msg.sequence_number, msg.lock_token, now),
            ).fetchone()
            if row is None:
                raise MessageLockLost(
                    f"lock on message {msg.message_id!r} (seq {msg.sequence_number}) was lost"
                )
        msg.locked_until = row[0]
        return row[0]

    def _locked_row(
        self, conn: sqlite3.Connection, msg: ReceivedMessage, now: float
    ) -> tuple[Any, ...] | None:
        return conn.execute(
            "SELECT delivery_count, properties FROM messages WHERE seq=? AND lock_token=? AND visible_at>?",
            (msg.sequence_number, msg.lock_token, now),
        ).fetchone()

    def _settled_or_lost(self, conn: sqlite3.Connection, msg: ReceivedMessage) -> bool:
        """False when this very lock already dead-lettered the message; otherwise the lock is lost."""
        row = conn.execute(
            "SELECT 1 FROM dead_letters WHERE seq=? AND lock_token=?", (msg.sequence_number, msg.lock_token)
        ).fetchone()
        if row is not None:
            return False
        raise MessageLockLost(
            f"lock on message {msg.message_id!r} (seq {msg.sequence_number}) expired or was taken"
            " by another receiver"
        )

    def _move_to_dlq(
        self,
        conn: sqlite3.Connection,
        seq: int,
        reason: str,
        description: str,
        now: float,
        lock_token: str | None,
    ) -> None:
        conn.execute(
            "INSERT INTO dead_letters (seq, path, message_id, body, correlation_id, content_type, properties,"
            " enqueued_at, delivery_count, reason, description, dead_lettered_at, lock_token)"
            " SELECT seq, path, message_id, body, correlation_id, content_type, properties, enqueued_at,"
            " delivery_count, ?, ?, ?, ? FROM messages WHERE seq=?",
            (reason, description, now, lock_token, seq),
        )
        conn.execute("DELETE FROM messages WHERE seq=?", (seq,))

    # --- dead letters ---------------------------------------------------------------------

    def dead_letters(
        self, entity: str, *, subscription: str | None = None, limit: int = 100
    ) -> list[DeadLetter]:
        """Oldest first."""
        with self._db.read() as conn:
            rows = conn.execute(
                "SELECT seq, message_id, body, reason, description, delivery_count, dead_lettered_at,"
                " correlation_id, content_type, properties FROM dead_letters WHERE path=?"
                " ORDER BY seq LIMIT ?",
                (_path(entity, subscription), limit),
            ).fetchall()
        return [
            DeadLetter(
                sequence_number=r[0],
                message_id=r[1],
                body=bytes(r[2]),
                reason=r[3],
                description=r[4],
                delivery_count=r[5],
                dead_lettered_at=_dt(r[6]),
                correlation_id=r[7],
                content_type=r[8],
                application_properties=json.loads(r[9]),
            )
            for r in rows
        ]

    def resubmit_dead_letter(
        self, entity: str, sequence_number: int, *, subscription: str | None = None
    ) -> str:
        """Put a dead letter back as a new message (id ``<original>:resubmit:<n>``); returns the id.

        The new id keeps duplicate detection from dropping it. A subscription's dead letter goes
        back to that subscription only, not to every subscription of the topic.
        """
        path = _path(entity, subscription)
        with self._db.tx() as conn:
            now = self._clock()
            row = conn.execute(
                "SELECT message_id, body, correlation_id, content_type, properties FROM dead_letters"
                " WHERE path=? AND seq=?",
                (path, sequence_number),
            ).fetchone()
            if row is None:
                raise KeyError(f"no dead letter with sequence number {sequence_number} in {path!r}")
            match = _RESUBMIT_RE.match(row[0])
            base, n = (match["base"], int(match["n"]) + 1) if match else (row[0], 1)
            while True:
                new_id = f"{base}:resubmit:{n}"
                taken = conn.execute(
                    "SELECT 1 FROM dedup WHERE entity=? AND message_id=?", (entity, new_id)
                ).fetchone()
                if taken is None:
                    break
                n += 1
            conn.execute(
                "INSERT OR REPLACE INTO dedup (entity, message_id, sent_at) VALUES (?,?,?)",
                (entity, new_id, now),
            )
            conn.execute(
                "INSERT INTO messages (path, message_id, body, correlation_id, content_type, properties,"
                " enqueued_at, scheduled_at, available_at, visible_at) VALUES (?,?,?,?,?,?,?,NULL,?,?)",
                (path, new_id, row[1], row[2], row[3], row[4], now, now, now),
            )
            conn.execute("DELETE FROM dead_letters WHERE path=? AND seq=?", (path, sequence_number))
        return new_id

    def purge_dead_letters(self, entity: str, *, subscription: str | None = None) -> int:
        """Delete every dead letter of the entity; returns how many."""
        with self._db.tx() as conn:
            return conn.execute(
                "DELETE FROM dead_letters WHERE path=?", (_path(entity, subscription),)
            ).rowcount

    # --- inspection -----------------------------------------------------------------------

    def peek(
        self, entity: str, *, subscription: str | None = None, limit: int = 100
    ) -> list[ReceivedMessage]:
        """Messages in sequence order, without locking them (``lock_token`` is empty)."""
        with self._db.read() as conn:
            rows = conn.execute(
                f"SELECT {_MSG_COLS} FROM messages WHERE path=? ORDER BY seq LIMIT ?",
                (_path(entity, subscription), limit),
            ).fetchall()
        now = self._clock()
        out = []
        for r in rows:
            m = _received(r, entity, subscription)
            m.lock_token = ""
            m.locked_until = r[9] if r[11] is not None and r[9] > now else 0.0
            out.append(m)
        return out

    def counts(self, entity: str, *, subscription: str | None = None) -> dict[str, int]:
        """``active`` (receivable now), ``scheduled``, ``locked`` and ``dead_letter`` message counts."""
        path = _path(entity, subscription)
        with self._db.read() as conn:
            now = self._clock()
            active = conn.execute(
                "SELECT count(*) FROM messages WHERE path=? AND visible_at<=?", (path, now)
            ).fetchone()[0]
            locked, scheduled = conn.execute(
                "SELECT count(lock_token), count(*) - count(lock_token) FROM messages"
                " WHERE path=? AND visible_at>?",
                (path, now),
            ).fetchone()
            dead = conn.execute("SELECT count(*) FROM dead_letters WHERE path=?", (path,)).fetchone()[0]
        return {"active": active, "scheduled": scheduled, "locked": locked, "dead_letter": dead}

    # --- helpers --------------------------------------------------------------------------

    def _ensure_entity(self, conn: sqlite3.Connection, name: str, kind: str | None) -> str:
        """The entity's kind, creating it (as ``kind``, or a queue when None) if it is new."""
        if not name or _SUBSCRIPTION_SEP in name:
            raise ValueError(
                f"entity name {name!r} is not allowed: it must be non-empty and not contain "
                f"{_SUBSCRIPTION_SEP!r}"
            )
        row = conn.execute("SELECT kind FROM entities WHERE name=?", (name,)).fetchone()
        if row is None:
            conn.execute("INSERT INTO entities (name, kind) VALUES (?, ?)", (name, kind or "queue"))
            return kind or "queue"
        if kind is not None and row[0] != kind:
            raise ValueError(f"entity {name!r} already exists as a {row[0]}, not a {kind}")
        return str(row[0])

    def _has_ready(self, path: str) -> bool:
        """An idle poll answers from a read snapshot and never takes the write lock."""
        with self._db.read() as conn:
            row = conn.execute(
                "SELECT 1 FROM messages WHERE path=? AND visible_at<=? LIMIT 1", (path, self._clock())
            ).fetchone()
        return row is not None

    def _check_receivable(self, entity: str, subscription: str | None) -> None:
        """Create a subscription received from, and refuse to receive from a topic itself."""
        key = (entity, subscription)
        if key in self._receivable:
            return
        with self._db.tx() as conn:
            if subscription is not None:
                self._ensure_subscription(conn, entity, subscription)
            elif self._ensure_entity(conn, entity, None) == "topic":
                subs = [r[0] for r in conn.execute("SELECT name FROM subscriptions WHERE topic=?", (entity,))]
                raise ValueError(
                    f"{entity!r} is a topic: receive from one of its subscriptions "
                    f"({', '.join(subs) or 'none yet'})"
                )
        self._receivable.add(key)

    def _ensure_subscription(self, conn: sqlite3.Connection, topic: str, name: str) -> None:
        self._ensure_entity(conn, topic, "topic")
        conn.execute("INSERT OR IGNORE INTO subscriptions (topic, name) VALUES (?, ?)", (topic, name))


# --- ports ------------------------------------------------------------------------------------


class SqliteRequestSender:
    """:class:`shared.ports.RequestSender` onto a broker queue."""

    def __init__(self, broker: SqliteBroker, queue: str) -> None:
        self.broker = broker
        self.queue = queue

    def send(self, body: bytes, *, message_id: str, scheduled_at: datetime | None = None) -> None:
        self.broker.send(
            self.queue,
            body,
            message_id=message_id,
            scheduled_at=scheduled_at,
            application_properties=telemetry.inject(),  # the sender's trace goes on in the intake
        )

    def check(self) -> str:
        """:class:`shared.ports.ReadinessProbe`: the queue exists and its file takes a write."""
        return self.broker.check(self.queue)


class SqliteRejecter:
    """:class:`shared.ports.Rejecter` for the local host: dead-letters the locked message by id.

    Azure's plain queue binding cannot settle a message, so there the request is forwarded to a
    rejected queue (:class:`shared.adapters.broker.servicebus.ServiceBusRejecter`); here the broker
    moves the very message to the queue's dead-letter sub-queue, reason and description kept.
    """

    def __init__(self, broker: SqliteBroker, queue: str) -> None:
        self.broker = broker
        self.queue = queue

    def reject(self, *, message_id: str, body: bytes, reason: str, description: str) -> None:
        if not self.broker.dead_letter_by_id(self.queue, message_id, reason=reason, description=description):
            log.info(
                "message %s was not locked here (sent outside the local host); rejection recorded only",
                message_id,
            )


class SqlitePublisher:
    """:class:`shared.ports.Publisher` onto a broker topic (and the request's reply queue).

    Re-publishing the same completion is harmless: duplicate detection drops the repeat.
    """

    def __init__(self, broker: SqliteBroker, topic: str) -> None:
        self.broker = broker
        self.topic = topic

    def check(self) -> str:
        """:class:`shared.ports.ReadinessProbe`: the topic exists and its file takes a write."""
        return self.broker.check(self.topic)

    def publish(self, message: CompletionMessage, *, reply_to: str | None = None) -> None:
        body = message.model_dump_json()
        props = {
            k: v
            for k, v in {
                "status": message.status,
                "experiment": message.experiment,
                "env": message.env,
            }.items()
            if v is not None
        }
        props.update(telemetry.inject())  # the run's trace goes on in the notifier
        for entity in (self.topic, reply_to):
            if entity:
                self.broker.send(
                    entity,
                    body,
                    message_id=message.message_id,
                    correlation_id=message.request_id,
                    application_properties=props,
                )

    def publish_event(self, event: PromotionEvent) -> None:
        """A ``model-promoted`` event to the topic; duplicate detection drops a repeat of its id."""
        self.broker.send(
            self.topic,
            event.model_dump_json(),
            message_id=event.message_id,
            correlation_id=event.request_id,
            application_properties={"event": event.event, "model": event.model},
        )


# --- plumbing ---------------------------------------------------------------------------------


def _path(entity: str, subscription: str | None) -> str:
    return entity if subscription is None else f"{entity}{_SUBSCRIPTION_SEP}{subscription}"


def _epoch(value: datetime | float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.timestamp()
    return float(value)


def _dt(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _max_delivery_text(limit: int) -> str:
    return f"Message could not be consumed after {limit} delivery attempts."


def _received(r: tuple[Any, ...], entity: str, subscription: str | None) -> ReceivedMessage:
    # r follows _MSG_COLS
    return ReceivedMessage(
        entity=entity,
        subscription=subscription,
        sequence_number=r[0],
        message_id=r[2],
        body=bytes(r[3]),
        correlation_id=r[4],
        content_type=r[5],
        application_properties=json.loads(r[6]),
        enqueued_at=_dt(r[7]),
        scheduled_at=None if r[8] is None else _dt(r[8]),
        locked_until=r[9],
        delivery_count=r[10],
        lock_token=r[11] or "",
    )
