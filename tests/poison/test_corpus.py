"""Every poison input: dead-lettered at once naming the field, no job, no file, service still serving.

The inputs are the files in ``corpus/`` (field to name in ``expected.json``) plus the big ones
built by ``generated.py``. Each goes through the real intake path: a message on the SQLite queue,
received under a peek-lock, handed to ``TrainingService.intake``, settled as the host settles it.
"""

from __future__ import annotations

import json

import pytest

from shared.contracts.run import RunState
from tests.poison.conftest import Poison, corpus, feed, files_outside_stores, names_field
from tests.support.readme import GUARANTEES, readme_number
from tests.support.topics import drain_topic

CASES = corpus()
VALID = {
    "env": "CartPole-v1",
    "algorithm": "IMPALA",
    "stop": {"episode_reward_mean": 150, "time_total_s": 300},
}


def test_the_corpus_is_the_size_the_docs_say_and_covers_every_category():
    names = [c.name for c in CASES]
    assert len(set(names)) == len(names)
    # the README and docs/guarantees.md quote the corpus: adding a file means updating both numbers
    files, generated = (
        len([n for n in names if not n.startswith("gen-")]),
        len([n for n in names if n.startswith("gen-")]),
    )
    assert len(names) == readme_number(r"poison corpus: ([\d,]+) bad inputs")
    assert len(names) == readme_number(r"([\d,]+) poison inputs go through", GUARANTEES)
    assert files == readme_number(r"([\d,]+) kept as files", GUARANTEES)
    assert sum(n.endswith(".bin") for n in names) == readme_number(r"\((\d+) of them raw bytes\)", GUARANTEES)
    assert generated == readme_number(r"and (\d+) built by `generated.py`", GUARANTEES)
    fields = {c.field for c in CASES}
    for must in (
        "(body)",
        "algorithm",
        "env",
        "config",
        "request_id",
        "experiment",
        "reply_to",
        "restore_from",
        "tags",
        "compute.head.name",
        "compute.workers.name",
        "compute.vnet",
        "compute.subnet",
        "compute.workers.vm_size",
        "compute.workers.node_count",
        "stop",
        "stop.episode_reward_mean",
        "notify.webhooks.0",
        "notify.teams.0",
    ):
        assert must in fields, f"no poison input names {must}"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_poison_is_dead_lettered_at_once_and_nothing_runs(case: Poison, wired, twin, tmp_path):
    before = files_outside_stores(tmp_path)
    q = wired.settings.queue_name
    mid = f"poison-{case.name}"

    record, completed = feed(wired, case.body, mid)

    # dead-lettered on the first delivery, by the handler, with a reason naming the field
    assert completed is False, "the handler should have settled the message itself"
    (dead,) = wired.broker.dead_letters(q)
    assert dead.message_id == mid and dead.delivery_count == 1
    assert dead.reason in ("InvalidRequest", "Forbidden"), dead.reason
    assert names_field(dead.description, case.field), f"{case.field!r} not named in: {dead.description[:300]}"
    assert dead.body == case.body
    assert wired.broker.counts(q) == {"active": 0, "scheduled": 0, "locked": 0, "dead_letter": 1}
    if record is not None:
        assert record.state is RunState.rejected and record.run_id is None
        assert names_field(record.error, case.field)

    # no job, no message, nothing written outside the SQLite stores
    assert twin.jobs_per_request() == {}
    assert drain_topic(wired) == []
    assert files_outside_stores(tmp_path) == before
    assert not wired.settings.runs_dir.exists() or not any(wired.settings.runs_dir.iterdir())

    # the service is still serving
    ok, _ = feed(wired, json.dumps({**VALID, "request_id": "after-poison"}).encode(), "valid-after")
    assert ok.state is RunState.submitted
    assert twin.jobs_per_request() == {"after-poison": 1}


def test_the_same_poison_twice_is_dead_lettered_twice_and_never_retried(wired, twin):
    bad = json.dumps({**VALID, "request_id": "twice", "algorithm": "A2C"}).encode()
    feed(wired, bad, "first")
    feed(wired, bad, "second")
    dead = wired.broker.dead_letters(wired.settings.queue_name)
    assert [(d.message_id, d.delivery_count) for d in dead] == [("first", 1), ("second", 1)]
    assert wired.store.get("twice").state is RunState.rejected and twin.jobs_per_request() == {}


def test_a_valid_request_reusing_a_rejected_id_still_runs(wired, twin):
    """A producer that fixes its request and sends it again under the same id is not ignored."""
    feed(wired, json.dumps({**VALID, "request_id": "fixed", "algorithm": "A2C"}).encode(), "bad")
    assert wired.store.get("fixed").state is RunState.rejected
    rec, _ = feed(wired, json.dumps({**VALID, "request_id": "fixed"}).encode(), "good")
    assert rec.state is RunState.submitted and rec.error is None
    assert twin.jobs_per_request() == {"fixed": 1}
    for _ in range(3):
        wired.service.poll_once()
    assert [m.message_id for m in drain_topic(wired)] == ["fixed:completed"]


def test_loopback_webhooks_pass_in_local_mode_only(wired, twin):
    hook = {**VALID, "notify": {"webhooks": ["http://127.0.0.1:9000/hook"]}}
    rec, _ = feed(wired, json.dumps({**hook, "request_id": "local"}).encode(), "m-local")
    assert rec.state is RunState.submitted
    wired.settings.local_mode = False
    rec, _ = feed(wired, json.dumps({**hook, "request_id": "cloud"}).encode(), "m-cloud")
    assert rec.state is RunState.rejected and names_field(rec.error, "notify.webhooks.0")
    assert "loopback" in rec.error or "http" in rec.error
    # Out of local mode plain http is refused at intake even to a name (no DNS needed to decide).
    public_http = {**VALID, "notify": {"webhooks": ["http://hooks.example.com/x"]}}
    rec, _ = feed(wired, json.dumps({**public_http, "request_id": "plain"}).encode(), "m-plain")
    assert rec.state is RunState.rejected and "use https" in rec.error
    assert twin.jobs_per_request() == {"local": 1}


def test_a_teams_url_with_its_signature_is_accepted_and_the_signature_never_echoed(wired):
    teams = (
        "https://prod-01.westeurope.logic.azure.com:443/workflows/0a1b2c/triggers/manual/paths/invoke"
        "?api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig=SECRETSIG"
    )
    rec, _ = feed(
        wired, json.dumps({**VALID, "request_id": "teams-ok", "notify": {"teams": [teams]}}).encode(), "t1"
    )
    assert rec.state is RunState.submitted
    private = teams.replace("prod-01.westeurope.logic.azure.com", "10.9.8.7")
    rec, _ = feed(
        wired, json.dumps({**VALID, "request_id": "teams-bad", "notify": {"teams": [private]}}).encode(), "t2"
    )
    assert rec.state is RunState.rejected and names_field(rec.error, "notify.teams.0")
    (dead,) = wired.broker.dead_letters(wired.settings.queue_name)
    assert "SECRETSIG" not in dead.description and "SECRETSIG" not in rec.error
