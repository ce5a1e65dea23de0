"""Fixtures for the poison suite: the corpus as (name, body, field) triples, the intake path."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from tests.core.conftest import settings, settings_overrides, twin, wired  # noqa: F401 - the service suite's fixtures, reused
from tests.poison.generated import generated_inputs

HERE = Path(__file__).parent
CORPUS = HERE / "corpus"
SQLITE_SUFFIXES = (".sqlite3", ".sqlite3-wal", ".sqlite3-shm", ".sqlite3-journal")


@dataclass(frozen=True)
class Poison:
    name: str
    body: bytes
    field: str


def corpus() -> list[Poison]:
    expected: dict[str, str] = json.loads((HERE / "expected.json").read_text())
    files = sorted(p.name for p in CORPUS.iterdir())
    missing = sorted(set(files) ^ set(expected))
    if missing:
        raise AssertionError(f"corpus and expected.json disagree on: {missing}")
    out = [Poison(name, (CORPUS / name).read_bytes(), expected[name]) for name in files]
    out += [Poison(name, body, field) for name, (body, field) in generated_inputs().items()]
    return out


def names_field(description: str, field: str) -> bool:
    """True when ``description`` names ``field`` as a field path (not merely as a substring)."""
    return re.search(r"(?:^|[\s;(])" + re.escape(field) + r"(?=[:\s]|$)", description) is not None


def files_outside_stores(root: Path) -> dict[str, int]:
    """Every file under ``root`` with its size, except the SQLite databases (queue, runs, twin)."""
    return {
        str(p.relative_to(root)): p.stat().st_size
        for p in root.rglob("*")
        if p.is_file() and not p.name.endswith(SQLITE_SUFFIXES)
    }


def feed(w, body: bytes, message_id: str):
    """Send, receive and hand to intake as the queue trigger does; settle as the host does.

    Returns ``(record, completed)``: what intake returned, and whether ``complete`` removed the
    message (False when the handler had dead-lettered it under this lock).
    """
    q = w.settings.queue_name
    assert w.broker.send(q, body, message_id=message_id)
    (msg,) = w.broker.receive(q)
    record = w.service.intake(msg.body, message_id=msg.message_id, delivery_count=msg.delivery_count)
    return record, w.broker.complete(msg)
