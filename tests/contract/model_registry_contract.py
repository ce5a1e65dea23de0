"""The ModelRegistry contract, shared by every store that keeps the registry (SQLite, Azure Tables).

Subclass :class:`ModelRegistryContract` and provide a ``registry`` fixture that yields an empty
one. Only the :class:`shared.ports.ModelRegistry` methods are used, plus the core's
:class:`shared.core.models.Champions` for the races: runs of one model completing at once, on
real threads, must leave one consistent history (every version once, one champion per change,
each change following the one before).
"""

from __future__ import annotations

import itertools
import threading
from datetime import UTC, datetime

import pytest

from shared.contracts.models import Evaluation, Model, ModelVersion
from shared.contracts.request import TrainingRequest
from shared.contracts.run import RunRecord, RunState
from shared.contracts.trainer import ModelEval, TrainerSummary
from shared.core.models import Champions
from shared.errors import Conflict
from shared.ports import ModelRegistry

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def version(model: str, n: int, request_id: str | None = None, **fields: object) -> ModelVersion:
    return ModelVersion(
        model=model,
        version=n,
        request_id=request_id or f"{model}-run-{n}",
        checkpoint_path=f"file:///ckpt/{model}/{n}",
        created_at=T0,
        **fields,
    )


def evaluation(mean: float) -> Evaluation:
    return Evaluation(episodes=3, mean=mean, std=0.5, min=mean - 1, max=mean + 1, seeds=[7, 8, 9])


def completed_run(
    request_id: str, model: str, *, promote: str = "if_better"
) -> tuple[RunRecord, TrainerSummary]:
    """A completed run of ``model`` that trained with no champion to play against."""
    request = TrainingRequest(request_id=request_id, env="CartPole-v1", model=model, promote=promote)
    summary = TrainerSummary(
        checkpoint_path=f"file:///ckpt/{request_id}",
        model_eval=ModelEval(candidate=evaluation(100.0)),
    )
    return RunRecord(request_id=request_id, state=RunState.completed, request=request), summary


class Silent:
    """A publisher nobody reads (the races count the registry, not the topic)."""

    def publish(self, message: object, *, reply_to: str | None = None) -> None: ...

    def publish_event(self, event: object) -> None: ...


def run_at_once(n: int, work) -> list[BaseException]:
    """``work(i)`` on ``n`` threads released together; the exceptions they raised."""
    start = threading.Barrier(n)
    errors: list[BaseException] = []

    def one(i: int) -> None:
        start.wait(timeout=30)
        try:
            work(i)
        except BaseException as err:  # noqa: BLE001 - collected for the assertion
            errors.append(err)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return errors


class ModelRegistryContract:
    """Behaviour every ModelRegistry must have. Subclasses provide the ``registry`` fixture."""

    racers = 6

    def test_is_a_model_registry(self, registry: ModelRegistry) -> None:
        assert isinstance(registry, ModelRegistry)

    def test_unknown_model_has_nothing(self, registry: ModelRegistry) -> None:
        assert registry.get_model("nope") is None
        assert registry.list_models() == []
        assert registry.list_versions("nope") == []
        assert registry.get_version("nope", 1) is None
        assert registry.find_version("nope", "r") is None

    def test_a_new_model_and_its_first_version_round_trip(self, registry: ModelRegistry) -> None:
        v1 = version("cart", 1, candidate=evaluation(200.0), promoted=True, reason="first")
        model = Model(name="cart", champion_version=1, latest_version=1, created_at=T0, updated_at=T0)
        stored = registry.save_model(model, new_version=v1)
        assert stored.etag == 1
        assert registry.get_model("cart") == stored
        assert registry.get_version("cart", 1) == v1
        assert registry.find_version("cart", v1.request_id) == v1
        assert registry.list_versions("cart") == [v1]

    def test_each_write_moves_the_etag_on(self, registry: ModelRegistry) -> None:
        first = registry.save_model(Model(name="m", created_at=T0, updated_at=T0))
        second = registry.save_model(
            first.model_copy(update={"latest_version": 1}), new_version=version("m", 1)
        )
        assert (first.etag, second.etag) == (1, 2)
        assert registry.get_model("m").etag == 2

    def test_a_stale_etag_is_refused_and_writes_nothing(self, registry: ModelRegistry) -> None:
        first = registry.save_model(Model(name="m", created_at=T0, updated_at=T0))
        registry.save_model(first.model_copy(update={"latest_version": 1}), new_version=version("m", 1))
        with pytest.raises(Conflict):
            registry.save_model(
                first.model_copy(update={"latest_version": 2, "champion_version": 2}),
                new_version=version("m", 2),
            )
        assert registry.get_model("m").champion_version is None
        assert registry.get_version("m", 2) is None
        assert registry.find_version("m", "m-run-2") is None

    def test_a_second_new_model_of_one_name_is_refused(self, registry: ModelRegistry) -> None:
        registry.save_model(Model(name="m", created_at=T0, updated_at=T0))
        with pytest.raises(Conflict):
            registry.save_model(Model(name="m", champion_version=1, created_at=T0, updated_at=T0))
        assert registry.get_model("m").champion_version is None

    def test_a_version_number_or_run_taken_twice_refuses_the_whole_write(
        self, registry: ModelRegistry
    ) -> None:
        model = registry.save_model(
            Model(name="m", latest_version=1, created_at=T0, updated_at=T0), new_version=version("m", 1)
        )
        for taken in (version("m", 1, request_id="other-run"), version("m", 2, request_id="m-run-1")):
            with pytest.raises(Conflict):
                registry.save_model(
                    model.model_copy(update={"latest_version": 2, "champion_version": 2}), new_version=taken
                )
            assert registry.get_model("m") == model  # the model row rolled back with the version
        assert registry.find_version("m", "other-run") is None
        assert [v.version for v in registry.list_versions("m")] == [1]

    def test_versions_newest_first_and_models_by_name(self, registry: ModelRegistry) -> None:
        for name in ("zeta", "alpha", "mid"):
            model = registry.save_model(Model(name=name, created_at=T0, updated_at=T0))
            for n in (1, 2, 3):
                model = registry.save_model(
                    model.model_copy(update={"latest_version": n}), new_version=version(name, n)
                )
        assert [m.name for m in registry.list_models()] == ["alpha", "mid", "zeta"]
        assert [m.name for m in registry.list_models(limit=2)] == ["alpha", "mid"]
        assert [v.version for v in registry.list_versions("mid")] == [3, 2, 1]
        assert [v.version for v in registry.list_versions("mid", limit=2)] == [3, 2]

    # --- races: the core's decisions through this store ------------------------------------------

    def champions(self, registry: ModelRegistry) -> Champions:
        return Champions(registry, Silent, lambda: T0)

    def test_first_runs_completing_at_once_crown_one_champion(self, registry: ModelRegistry) -> None:
        champions = self.champions(registry)
        sections: dict[int, object] = {}

        def complete(i: int) -> None:
            sections[i] = champions.register(*completed_run(f"run-{i}", "race"))

        assert run_at_once(self.racers, complete) == []
        model = registry.get_model("race")
        assert model.latest_version == self.racers
        assert sorted(v.version for v in registry.list_versions("race")) == list(range(1, self.racers + 1))
        assert sorted(v.request_id for v in registry.list_versions("race")) == sorted(
            f"run-{i}" for i in range(self.racers)
        )
        promoted = [s for s in sections.values() if s.promoted]
        assert len(promoted) == 1, "exactly one of the runs became champion"
        assert [(e.sequence, e.from_version, e.to_version) for e in model.history] == [
            (1, None, promoted[0].version)
        ]
        assert model.champion_version == promoted[0].version

    def test_always_promotions_at_once_chain_without_a_gap(self, registry: ModelRegistry) -> None:
        champions = self.champions(registry)
        assert (
            run_at_once(
                self.racers,
                lambda i: champions.register(*completed_run(f"run-{i}", "chain", promote="always")),
            )
            == []
        )
        model = registry.get_model("chain")
        history = [(e.sequence, e.from_version, e.to_version) for e in model.history]
        assert [s for s, _, _ in history] == list(range(1, self.racers + 1))
        assert history[0][1] is None
        for (_, _, before), (_, after_from, _) in itertools.pairwise(history):
            assert after_from == before, f"a promotion was lost: {history}"
        assert model.champion_version == history[-1][2]
        assert sorted(to for _, _, to in history) == list(range(1, self.racers + 1))

    def test_registering_one_run_twice_at_once_is_one_version(self, registry: ModelRegistry) -> None:
        champions = self.champions(registry)
        run = completed_run("same", "twice")
        assert run_at_once(3, lambda i: champions.register(*run)) == []
        assert [v.request_id for v in registry.list_versions("twice")] == ["same"]
        assert len(registry.get_model("twice").history) == 1
