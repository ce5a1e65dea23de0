"""The message ids rlq writes: built and read only in shared/contracts/message_ids.py."""

from __future__ import annotations

import re

import pytest

from shared.contracts import message_ids
from shared.contracts.request import ID_RE


def test_each_id_reads_back_its_own_count_and_no_other():
    assert message_ids.completed("r-1") == "r-1:completed"
    assert message_ids.retry("r-1", 3) == "r-1:retry:3"
    assert message_ids.deferred("r-1", 2) == "r-1:deferred:2"
    assert message_ids.retries(message_ids.retry("r-1", 3)) == 3
    assert message_ids.deferrals(message_ids.deferred("r-1", 2)) == 2
    # the other kind, a completion, a producer's own id or none: no count
    assert message_ids.retries(message_ids.deferred("r-1", 2)) == 0
    assert message_ids.deferrals(message_ids.retry("r-1", 3)) == 0
    others = ("r-1:completed", "r-1", "", None, "r:retry:", "r:retry:x")
    assert [message_ids.retries(m) for m in others] == [0] * len(others)


def test_a_request_id_with_colons_keeps_its_count_at_the_end():
    rid = "team:a:retry:9"  # a request id may carry colons, even this suffix
    assert message_ids.retries(message_ids.retry(rid, 1)) == 1
    assert message_ids.retries(message_ids.deferred(rid, 4)) == 0


def test_counts_start_at_one():
    with pytest.raises(ValueError, match="starts at 1"):
        message_ids.retry("r", 0)


def test_the_longest_id_stays_under_service_bus_128_characters():
    longest = "r" * int(re.search(r"\{0,(\d+)\}", ID_RE).group(1)) + "r"
    assert re.match(ID_RE, longest) and not re.match(ID_RE, longest + "r")
    assert len(message_ids.deferred(longest, 10**9)) <= 128
    assert len(message_ids.retry(longest, 10**9)) <= 128


def test_the_request_a_message_id_names():
    rid = "team:a:1"  # colons in a request id are kept
    for mid in (rid, message_ids.retry(rid, 2), message_ids.deferred(rid, 3), message_ids.completed(rid)):
        assert message_ids.request_of(mid) == rid
