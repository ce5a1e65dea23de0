"""The message ids rlq writes, built and read in this one place.

A request's own message carries whatever id its producer gave it. The messages rlq sends itself
carry the request id and what the message is, so a broker that drops repeats by id (Service Bus
duplicate detection, the SQLite twin) keeps one of each:

* ``<request_id>:completed``: the completion message (topic, reply queue, webhook-id);
* ``<request_id>:retry:<n>``: the n-th re-send of a request whose intake failed for a while;
* ``<request_id>:deferred:<n>``: the n-th re-send of a request put off while the service is full;
* ``model-promoted:<model>:<n>``: the n-th change of a model's champion (the ``model-promoted``
  topic event), by its rule or a person: one event per change, however often it is re-published.

Request ids are at most 100 characters (:data:`shared.contracts.request.ID_RE`) so that each of
these stays under Service Bus's 128.
"""

from __future__ import annotations

import re
from typing import Literal

Kind = Literal["retry", "deferred"]

_COUNTED = re.compile(r"^(?P<request_id>.+):(?P<kind>retry|deferred):(?P<n>[0-9]+)$")


def completed(request_id: str) -> str:
    """The id of ``request_id``'s completion message."""
    return f"{request_id}:completed"


def promoted(model: str, sequence: int) -> str:
    """The id of the ``sequence``-th champion change of ``model`` (``sequence`` >= 1).

    Model names are at most 64 characters (:data:`shared.contracts.request.NAME_RE`), so the id
    stays under Service Bus's 128.
    """
    if sequence < 1:
        raise ValueError(f"a champion change count starts at 1, not {sequence}")
    return f"model-promoted:{model}:{sequence}"


def retry(request_id: str, attempt: int) -> str:
    """The id of the ``attempt``-th re-send of a request whose intake failed (``attempt`` >= 1)."""
    return _counted(request_id, "retry", attempt)


def deferred(request_id: str, deferral: int) -> str:
    """The id of the ``deferral``-th re-send of a request put off while the service is full."""
    return _counted(request_id, "deferred", deferral)


def retries(message_id: str | None) -> int:
    """How many times the request in this message was re-sent after a failed intake (0: never).

    Only a ``<id>:retry:<n>`` id counts; a producer's own id, a deferral or a completion is 0.
    """
    return _count(message_id, "retry")


def deferrals(message_id: str | None) -> int:
    """How many times the request in this message was deferred (0: never)."""
    return _count(message_id, "deferred")


def _counted(request_id: str, kind: Kind, n: int) -> str:
    if n < 1:
        raise ValueError(f"a {kind} count starts at 1, not {n}")
    return f"{request_id}:{kind}:{n}"


def _count(message_id: str | None, kind: Kind) -> int:
    found = _COUNTED.match(message_id or "")
    return int(found["n"]) if found and found["kind"] == kind else 0


def request_of(message_id: str) -> str:
    """The request id a message id names: ``<id>`` of a re-send or a completion, else the id itself."""
    found = _COUNTED.match(message_id)
    if found:
        return found["request_id"]
    return message_id.removesuffix(":completed")
