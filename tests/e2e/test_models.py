"""Models and champions end to end on the local Ray head with the real trainer (CartPole, small
budgets): a first run becomes champion; a one-iteration run plays worse on the same greedy episodes
and is not promoted, the champion's checkpoint unchanged; a longer run warm-started from
``model://`` plays better and is promoted, and ``model://`` then resolves to it; a person's rollback
takes ``model://`` back. Runs of one model completing at once: tests/core/test_models.py.

Three real training runs, the one real-Ray test of models: 1.5-2 minutes on the quiet 2-core
machine (two runs: the first run 2 iterations, greedy 40.2 and 109.4; the one-iteration run 9.4 and
23.6; the third, to 475, 46 and 71 iterations, greedy 500 and 428.6). With the first run trained to
50 and the third to 450, a fresh clone's run failed once: the first played 442.2, the third 384.6."""

from __future__ import annotations

import json
import time

import pytest

from shared.composition import build, install
from shared.contracts.run import RunState
from shared.localhost import LocalHost
from tests.support.topics import completions, promotions

pytestmark = [pytest.mark.ray, pytest.mark.timeout(1500)]

MODEL = "e2e-cart"


def request(request_id: str, stop: dict, **extra) -> str:
    return json.dumps(
        {
            "request_id": request_id,
            "env": "CartPole-v1",
            "algorithm": "IMPALA",
            "model": MODEL,
            "eval_episodes": 5,
            "stop": {**stop, "time_total_s": 600},
            **extra,
        }
    )


def run(host: LocalHost, w, request_id: str, body: str, *, timeout_s: float = 600):
    w.broker.send(w.settings.queue_name, body, message_id=request_id)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        host.drain()
        host.tick_timers()
        host.drain()
        rec = w.store.get(request_id)
        if rec is not None and rec.state is RunState.notified:
            assert rec.completion.status == "Completed", rec.completion
            return rec
        time.sleep(0.5)
    raise AssertionError(f"{request_id} not done after {timeout_s} s: {w.store.get(request_id)}")


@pytest.fixture
def local(e2e_settings):
    w = build(e2e_settings())
    w.broker.create_subscription(w.settings.topic_name, "audit")
    yield w, LocalHost.for_wiring(w)
    install(None)


def test_champion_kept_against_a_worse_run_replaced_by_a_better_one_and_rolled_back(local):
    w, host = local
    # 1. the first version becomes champion: a middling policy, so that a better one can beat it and
    # a worse one cannot (greedy, CartPole-v1 ends at 500: policies trained to a mean of 50 played
    # 271 and, once, 442 -- above the run trained to 458, which played 384.6; to 100 played 186 once
    # and over 354 another time, to 200 played 327 once; one trained to 30 was beaten by a
    # one-iteration run at 111, before that run's lr was 0 (it now plays 9-10); hence 35 here and
    # 475 for the better run)
    first = run(
        host, w, "m-first", request("m-first", {"episode_reward_mean": 35, "timesteps_total": 300_000})
    )
    one = first.completion.model
    assert (one.version, one.promoted, one.champion_version) == (1, True, 1)
    assert one.candidate.episodes == 5 and one.champion is None
    champion_checkpoint = first.completion.checkpoint_path

    # 2. one iteration from scratch that learns nothing (lr 0: its initial weights, which greedily
    # push the cart one way): the champion's checkpoint was an input of the job and both played the
    # same five episodes; the new one plays worse and is not promoted
    worse = run(host, w, "m-worse", request("m-worse", {"training_iteration": 1}, config={"lr": 0.0}))
    two = worse.completion.model
    assert worse.request.champion.checkpoint_path == champion_checkpoint
    assert two.version == 2 and two.promoted is False and two.champion_version_before == 1
    assert two.candidate.seeds == two.champion.seeds == one.candidate.seeds
    assert two.champion.mean == one.candidate.mean  # the same checkpoint on the same episodes
    assert two.candidate.mean < two.champion.mean, two
    assert two.champion_checkpoint == champion_checkpoint and two.champion_version == 1

    # 3. warm-started from the champion and trained on to 475 (CartPole-v1 ends at 500): plays
    # better, is promoted, and model:// follows it
    better = run(
        host,
        w,
        "m-better",
        request(
            "m-better",
            {"episode_reward_mean": 475, "timesteps_total": 800_000},
            restore_from=f"model://{MODEL}",
        ),
        timeout_s=900,
    )
    three = better.completion.model
    assert better.parent_request_id == "m-first"  # model:// resolved at intake to the champion's run
    assert three.promoted and three.champion_version == 3, three
    assert three.candidate.mean > three.champion.mean and three.champion.mean == one.candidate.mean
    assert three.champion_checkpoint == better.completion.checkpoint_path != champion_checkpoint
    resolved = w.service.accept(
        request("m-next", {"training_iteration": 1}, restore_from=f"model://{MODEL}"), message_id="n"
    )
    assert resolved.parent_request_id == "m-better"
    w.service.cancel("m-next")

    # 4. a person rolls back: model:// is the first version's run again
    w.service.rollback(MODEL, reason="v3 misbehaves in production")
    back = w.service.accept(
        request("m-back", {"training_iteration": 1}, restore_from=f"model://{MODEL}"), message_id="b"
    )
    assert back.parent_request_id == "m-first"
    w.service.cancel("m-back")

    events = promotions(w, "audit")
    assert [(e.from_version, e.to_version, e.by) for e in events] == [
        (None, 1, "rule"),
        (1, 3, "rule"),
        (3, 1, "person"),
    ]
    audit = w.broker.peek(w.settings.topic_name, subscription="audit", limit=100)
    done = [m.message_id for m in completions(audit)]
    assert done[:3] == ["m-first:completed", "m-worse:completed", "m-better:completed"]
