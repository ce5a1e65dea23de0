"""Models and champions through the core (SQLite store and broker, the compute twin): the rule at
its boundaries, what the completion message and the topic say, ``model://``, a person's promote and
rollback, and runs of one model completing at once.

The twin's evaluation of a run is its ``stop.episode_reward_mean`` on every episode (the champion's:
its own job's), so a request's target says how good its policy plays.
"""

from __future__ import annotations

import json
import threading

import pytest

from shared.contracts.models import Evaluation
from shared.contracts.run import RunState
from shared.core.models import decide
from shared.errors import InvalidRequest, NotFound
from tests.support.topics import drain_topic, promotions


def body(request_id: str, reward: float, **extra) -> bytes:
    return json.dumps(
        {
            "request_id": request_id,
            "env": "CartPole-v1",
            "model": "cart",
            "eval_episodes": 5,
            "stop": {"episode_reward_mean": reward, "time_total_s": 300},
            **extra,
        }
    ).encode()


def run_to_end(w, ticks: int = 5) -> None:
    for _ in range(ticks):
        w.service.poll_once()


def train(w, request_id: str, reward: float, **extra):
    w.service.accept(body(request_id, reward, **extra), message_id=request_id)
    run_to_end(w)
    rec = w.service.get(request_id)
    assert rec.state is RunState.notified, rec
    return rec.completion


class CountingPublisher:
    """The real publisher, counting the events rlq asks it to publish (the broker dedups by itself)."""

    def __init__(self, real) -> None:
        self.real = real
        self.events: list[str] = []

    def publish(self, message, *, reply_to=None) -> None:
        self.real.publish(message, reply_to=reply_to)

    def publish_event(self, event) -> None:
        self.events.append(event.message_id)
        self.real.publish_event(event)


@pytest.fixture
def counted(wired) -> CountingPublisher:
    publisher = CountingPublisher(wired.service.core.publisher)
    wired.service.core.publisher = publisher
    return publisher


# --- the rule ------------------------------------------------------------------------------------


def ev(mean: float) -> Evaluation:
    return Evaluation(episodes=5, mean=mean, std=1.0, min=mean - 2, max=mean + 2, seeds=[1, 2, 3, 4, 5])


@pytest.mark.parametrize(
    ("candidate", "champion", "min_improvement", "promoted"),
    [
        (100.0, 100.0, 0.0, False),  # an equal mean does not beat the champion
        (100.0 + 1e-9, 100.0, 0.0, True),  # any mean above it does, with no margin asked
        (99.0, 100.0, 0.0, False),
        (105.0, 100.0, 5.0, True),  # exactly the margin: "by at least min_improvement"
        (104.999, 100.0, 5.0, False),  # just under it
        (-95.0, -100.0, 5.0, True),  # negative returns (Pendulum) count the same way
    ],
)
def test_if_better_beats_by_at_least_the_margin(candidate, champion, min_improvement, promoted) -> None:
    decided, reason = decide(
        "if_better",
        min_improvement=min_improvement,
        champion_version=3,
        candidate=ev(candidate),
        champion=ev(champion),
        judged_against=3,
    )
    assert decided is promoted
    assert reason.startswith("promoted" if promoted else "kept the champion v3")


def test_the_first_version_always_never_and_a_stale_comparison() -> None:
    kw = {"min_improvement": 0.0, "candidate": ev(1.0), "champion": None, "judged_against": None}
    assert decide("if_better", champion_version=None, **kw) == (True, "the model's first champion")
    assert decide("never", champion_version=None, **kw)[0] is False
    assert decide("always", champion_version=4, **kw)[0] is True
    assert (
        decide("never", champion_version=4, **{**kw, "candidate": ev(1e6), "champion": ev(0.0)})[0] is False
    )
    # judged against v3, but v4 became champion while it trained: kept, however good it is
    stale = decide(
        "if_better",
        min_improvement=0.0,
        champion_version=4,
        candidate=ev(1e6),
        champion=ev(0.0),
        judged_against=3,
    )
    assert stale[0] is False and "played against v3" in stale[1]
    unplayable = decide(
        "if_better",
        min_improvement=0.0,
        champion_version=4,
        candidate=ev(1e6),
        champion=None,
        judged_against=4,
    )
    assert unplayable == (False, "kept the champion v4: it could not be played against the candidate")
    no_eval = decide(
        "if_better",
        min_improvement=0.0,
        champion_version=4,
        candidate=None,
        champion=ev(0.0),
        judged_against=4,
    )
    assert no_eval[0] is False and "no evaluation" in no_eval[1]


# --- through the service -------------------------------------------------------------------------


def test_first_run_is_champion_a_worse_one_is_not_a_better_one_is(wired, counted) -> None:
    first = train(wired, "v1", 100.0)
    assert first.model.promoted and first.model.version == 1 and first.model.champion is None
    assert first.model.champion_version == 1 and first.model.champion_checkpoint == first.checkpoint_path
    assert first.model.event_id == "model-promoted:cart:1"

    worse = train(wired, "v2", 80.0)
    assert worse.model.version == 2 and worse.model.promoted is False
    assert worse.model.candidate.mean == 80.0 and worse.model.champion.mean == 100.0
    assert worse.model.champion_version_before == 1 and worse.model.event_id is None
    assert worse.model.champion_checkpoint == first.checkpoint_path  # the champion's is unchanged
    assert worse.model.reason.startswith("kept the champion v1")

    equal = train(wired, "v3", 100.0)  # the same mean: not better
    assert equal.model.promoted is False

    better = train(wired, "v4", 120.0, min_improvement=20.0)  # exactly the margin asked
    assert better.model.promoted and better.model.champion_version == 4
    assert better.model.champion_checkpoint == better.checkpoint_path

    assert wired.service.model("cart").model.champion_version == 4
    assert counted.events == ["model-promoted:cart:1", "model-promoted:cart:2"]  # once per change
    events = promotions(wired)
    assert [(e.sequence, e.from_version, e.to_version, e.by) for e in events] == [
        (1, None, 1, "rule"),
        (2, 1, 4, "rule"),
    ]
    assert events[1].candidate.mean == 120.0 and events[1].champion.mean == 100.0
    assert events[1].request_id == "v4" and events[1].checkpoint_path == better.checkpoint_path
    assert [m.message_id for m in drain_topic(wired)] == [f"v{i}:completed" for i in (1, 2, 3, 4)]


def test_the_champion_checkpoint_is_an_input_of_the_next_job(wired, twin) -> None:
    first = train(wired, "a", 100.0)
    rec = wired.service.accept(body("b", 50.0), message_id="b")
    assert rec.request.champion.version == 1
    assert rec.request.champion.checkpoint_path == first.checkpoint_path
    job = twin.job(rec.run_id)
    assert (job["champion"], job["champion_version"], job["episodes"]) == (first.checkpoint_path, 1, 5)


def test_a_producer_cannot_name_the_champion_itself(wired) -> None:
    train(wired, "a", 100.0)
    forged = {"version": 9, "checkpoint_path": "file:///elsewhere/ckpt"}
    rec = wired.service.accept(body("b", 50.0, champion=forged), message_id="b")
    assert (
        rec.request.champion.version == 1
        and rec.request.champion.checkpoint_path != forged["checkpoint_path"]
    )


def test_promote_never_registers_without_promoting_even_the_first(wired, counted) -> None:
    done = train(wired, "n1", 100.0, promote="never")
    assert done.model.version == 1 and done.model.promoted is False and done.model.champion_version is None
    assert counted.events == []


def test_promote_always_replaces_a_better_champion(wired) -> None:
    train(wired, "a", 100.0)
    done = train(wired, "b", 10.0, promote="always")
    assert done.model.promoted and done.model.champion_version == 2


def test_model_defaults_to_the_experiment(wired) -> None:
    raw = json.loads(body("e1", 100.0))
    del raw["model"]
    wired.service.accept(json.dumps({**raw, "experiment": "pong"}).encode(), message_id="e1")
    run_to_end(wired)
    assert wired.service.get("e1").completion.model.name == "pong"


def test_a_run_that_fails_registers_nothing(wired, twin) -> None:
    twin.outcome = "failed"
    wired.service.accept(body("f", 100.0), message_id="f")
    run_to_end(wired)
    assert wired.service.get("f").completion.model is None
    assert wired.service.list_models() == []


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("promote", "sometimes", "'if_better', 'always' or 'never'"),
        ("min_improvement", -1, "greater than or equal to 0"),
        ("eval_episodes", 0, "greater than or equal to 1"),
        ("eval_episodes", 201, "less than or equal to 200"),
        ("model", "no spaces", "should match pattern"),
        ("restore_from", "model://", "expected model://<name>"),
    ],
)
def test_bad_model_fields_are_refused_naming_the_field(wired, field, value, allowed) -> None:
    with pytest.raises(InvalidRequest) as err:
        wired.service.enqueue(json.loads(body("x", 1.0, **{field: value})))
    ((problem,),) = [[e for e in err.value.errors if e["field"] == field]]
    assert allowed in problem["message"]


# --- model:// --------------------------------------------------------------------------------------


def test_model_uri_resolves_to_the_champions_run(wired) -> None:
    train(wired, "c1", 100.0)
    train(wired, "c2", 50.0)  # not promoted: model:// stays on c1
    child = wired.service.accept(body("child", 60.0, restore_from="model://cart"), message_id="child")
    c1 = wired.service.get("c1")
    assert child.parent_request_id == "c1"
    assert child.request.restore_from == c1.completion.checkpoint_path
    train(wired, "c3", 200.0)
    child2 = wired.service.accept(body("child2", 60.0, restore_from="model://cart"), message_id="child2")
    assert child2.parent_request_id == "c3"


def test_model_uri_without_a_champion_is_refused_naming_restore_from(wired) -> None:
    with pytest.raises(InvalidRequest) as err:
        wired.service.enqueue(json.loads(body("x", 1.0, restore_from="model://nobody")))
    assert err.value.errors == [
        {"field": "restore_from", "message": "model://nobody: no such model; nothing to warm-start from"}
    ]
    train(wired, "only", 1.0, model="quiet", promote="never")
    wired.broker.send(wired.settings.queue_name, body("y", 1.0, restore_from="model://quiet"), message_id="y")
    (msg,) = wired.broker.receive(wired.settings.queue_name)
    rec = wired.service.intake(msg.body, message_id=msg.message_id)
    assert rec.state is RunState.rejected
    (dead,) = wired.broker.dead_letters(wired.settings.queue_name)
    assert (
        dead.description == "restore_from: model://quiet: it has no champion yet; nothing to warm-start from"
    )


# --- a person's decisions ----------------------------------------------------------------------


def test_rollback_and_promote_are_recorded_with_their_reason_and_published_once(wired, counted) -> None:
    train(wired, "p1", 100.0)
    train(wired, "p2", 150.0)
    assert wired.service.model("cart").model.champion_version == 2

    wired.service.rollback("cart", reason="v2 misbehaves in production")
    model = wired.service.model("cart").model
    assert model.champion_version == 1
    last = model.history[-1]
    assert (last.from_version, last.to_version, last.by, last.reason) == (
        2,
        1,
        "person",
        "v2 misbehaves in production",
    )
    child = wired.service.accept(body("child", 1.0, restore_from="model://cart"), message_id="child")
    assert child.parent_request_id == "p1"  # model:// follows the rollback

    wired.service.promote("cart", 2, reason="fixed downstream")
    assert counted.events == [f"model-promoted:cart:{n}" for n in (1, 2, 3, 4)]  # one call per change
    # The same decision again changes nothing; its event goes out again under the same id (in case
    # the first publish was lost) and the broker keeps one.
    wired.service.promote("cart", 2, reason="again")
    assert wired.service.model("cart").model.champion_version == 2
    assert len(wired.service.model("cart").model.history) == 4
    assert counted.events[-1] == "model-promoted:cart:4"
    assert [e.by for e in promotions(wired)] == ["rule", "rule", "person", "person"]

    with pytest.raises(NotFound):
        wired.service.promote("cart", 9, reason="no such version")
    with pytest.raises(InvalidRequest):
        wired.service.promote("cart", 1, reason="  ")


def test_an_event_that_failed_to_publish_goes_out_with_the_completions_retry(wired, counted) -> None:
    real = counted.real

    class Down:
        def publish_event(self, event):
            from shared.errors import TransientError

            raise TransientError("topic down")

    counted.real = Down()
    wired.service.accept(body("d1", 100.0), message_id="d1")
    run_to_end(wired, ticks=3)
    assert wired.service.get("d1").state is RunState.completed  # not published: the outbox holds it
    counted.real = real
    run_to_end(wired, ticks=2)
    assert wired.service.get("d1").state is RunState.notified
    assert [e.message_id for e in promotions(wired)] == ["model-promoted:cart:1"]


# --- runs of one model completing at once ---------------------------------------------------------


class BarrierRegistry:
    """The run store as registry, holding every racer at ``get_model`` until all have read it, so
    each decides on the same state and all but one must lose the conditional write."""

    def __init__(self, store, parties: int) -> None:
        self.store = store
        self.barrier = threading.Barrier(parties)

    def get_model(self, name):
        model = self.store.get_model(name)
        try:
            self.barrier.wait(timeout=2)
        except threading.BrokenBarrierError:
            pass  # the retries after the first round read alone
        return model

    def __getattr__(self, name):
        return getattr(self.store, name)


def test_two_completions_at_once_promote_one_and_lose_no_version(wired, counted) -> None:
    wired.service.accept(body("x1", 100.0), message_id="x1")
    wired.service.accept(body("x2", 120.0), message_id="x2")  # both submitted with no champion
    wired.service.core.models = BarrierRegistry(wired.store, 2)
    run_to_end(wired)  # the poller polls both runs on its pool at once
    sections = {rid: wired.service.get(rid).completion.model for rid in ("x1", "x2")}
    assert sorted(s.version for s in sections.values()) == [1, 2]
    assert sum(s.promoted for s in sections.values()) == 1
    model = wired.service.model("cart").model
    assert len(model.history) == 1 and model.latest_version == 2
    winner = next(rid for rid, s in sections.items() if s.promoted)
    loser = next(s for s in sections.values() if not s.promoted)
    assert "played against no champion" in loser.reason
    assert model.champion_version == sections[winner].version
    assert counted.events == ["model-promoted:cart:1"]
