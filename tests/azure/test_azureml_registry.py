"""The champion in the Azure ML model registry (shared/adapters/compute/azureml/registry.py).

Real: the SDK's ``Model`` entity and its REST serialisation (``_to_rest_object().as_dict()``, what
``models.create_or_update`` sends; the twin answers with ``Model._from_rest_object`` of what it
kept). Twinned: the workspace's model registry (``MLClientTwin.models``: version numbering,
immutable versions but for description and tags, the ``latest`` label, job outputs that must exist).
"""

from __future__ import annotations

import json

import pytest

from shared.adapters.compute.azureml.jobs import job_names
from shared.adapters.compute.azureml.registry import (
    CHAMPION_TAG,
    AzureMLModelRegistry,
    job_output,
)
from shared.adapters.compute.azureml.v2 import AzureMLV2Backend
from shared.contracts.models import Evaluation, ModelVersion
from shared.contracts.parsing import parse_request
from shared.errors import PermanentError
from tests.support.azureml import PONG_REQUEST, WORKSPACE, azureml_settings
from tests.support.azureml_twin import MLClientTwin


@pytest.fixture
def twin() -> MLClientTwin:
    return MLClientTwin(**WORKSPACE)


@pytest.fixture
def registry(twin: MLClientTwin) -> AzureMLModelRegistry:
    return AzureMLModelRegistry(ml_client=twin)


def _job(twin: MLClientTwin, request_id: str) -> str:
    """A head job of ``request_id`` in the workspace, as the v2 backend submits it."""
    settings = azureml_settings(azureml_nsg_check="off")
    backend = AzureMLV2Backend(settings=settings, ml_client=twin, runs=twin.runs)
    try:
        req = parse_request(json.dumps({**PONG_REQUEST, "request_id": request_id}))
        backend.ensure_compute(req)
        twin.provision("head-gpu")
        twin.provision("worker-cpu")
        assert backend.ensure_compute(req) is None
        head = backend.submit(req)
        twin.run_to(head, "Completed")
        return head
    finally:
        backend.close()


def _version(twin: MLClientTwin, n: int, *, request_id: str | None = None, **fields) -> ModelVersion:
    rid = request_id or f"pong-{n}"
    job = _job(twin, rid)
    return ModelVersion(
        model="pong",
        version=n,
        request_id=rid,
        run_id=job,
        backend="azureml",
        checkpoint_path=f"azureml://jobs/{job}/outputs/checkpoints/paths/final",
        algorithm="IMPALA",
        env="PongNoFrameskip-v4",
        candidate=Evaluation(episodes=20, mean=18.5, std=1.25, min=15.0, max=21.0, seeds=list(range(20))),
        champion=Evaluation(episodes=20, mean=12.0, std=3.5, min=5.0, max=17.0, seeds=list(range(20)))
        if n > 1
        else None,
        champion_version=n - 1 if n > 1 else None,
        promoted=True,
        reason="promoted: 18.50 > 12.00 + 0" if n > 1 else "the first version",
        **fields,
    )


def test_the_model_sent_is_a_custom_model_of_the_job_output_with_the_evaluation_in_its_tags(
    registry: AzureMLModelRegistry, twin: MLClientTwin
) -> None:
    v = _version(twin, 2)
    body = registry.build_model(v)._to_rest_object().as_dict()  # what create_or_update sends
    props = body["properties"]
    assert props["modelType"] == "custom_model"
    assert props["modelUri"] == v.checkpoint_path
    assert props["modelUri"].startswith(f"azureml://jobs/{job_names('pong-2')[0]}/outputs/checkpoints/")
    assert props["isAnonymous"] is False
    tags = props["tags"]
    assert tags["rlq_request_id"] == "pong-2"
    assert tags["rlq_job"] == v.run_id
    assert (tags["rlq_candidate_mean"], tags["rlq_candidate_std"], tags["rlq_candidate_episodes"]) == (
        "18.5",
        "1.25",
        "20",
    )
    assert (tags["rlq_champion_mean"], tags["rlq_champion_std"]) == ("12.0", "3.5")
    assert tags["rlq_judged_against"] == "1"
    assert tags["rlq_rule"] == "if_better" and tags["rlq_reason"] == "promoted: 18.50 > 12.00 + 0"
    assert all(isinstance(value, str) for value in tags.values())
    assert CHAMPION_TAG not in tags  # set by the champion step, never at creation


def test_registering_a_champion_registers_its_version_and_moves_the_tag(
    registry: AzureMLModelRegistry, twin: MLClientTwin
) -> None:
    first = registry.register_champion(_version(twin, 1))
    assert (first.version, first.created, first.cleared) == ("1", True, ())
    second = registry.register_champion(_version(twin, 2))
    assert (second.version, second.created, second.cleared) == ("2", True, ("1",))
    assert registry.champions("pong") == ["2"]
    kept = twin.models.wire("pong", "2")["properties"]
    assert kept["modelType"] == "custom_model" and kept["tags"][CHAMPION_TAG] == "true"
    assert CHAMPION_TAG not in twin.models.wire("pong", "1")["properties"]["tags"]
    # read back through the SDK: the same entity
    got = twin.models.get(name="pong", version="2")
    assert got.path == _version_path(twin, "pong-2") and got.type == "custom_model"
    assert got.tags["rlq_request_id"] == "pong-2"
    # Azure's one managed label is the newest version, champion or not
    assert twin.models.get(name="pong", label="latest").version == "2"


def _version_path(twin: MLClientTwin, request_id: str) -> str:
    return f"azureml://jobs/{job_names(request_id)[0]}/outputs/checkpoints/paths/final"


def test_a_rollback_adopts_the_former_champion_and_leaves_latest_where_it_was(
    registry: AzureMLModelRegistry, twin: MLClientTwin
) -> None:
    v1 = _version(twin, 1)
    registry.register_champion(v1)
    registry.register_champion(_version(twin, 2))
    creates = [c for c in twin.calls() if c[0] == "models.create_or_update"]
    back = registry.register_champion(v1)
    assert (back.created, back.cleared) == (False, ("2",))
    assert registry.champions("pong") == ["1"]
    # one update to tag 1, one to untag 2: no new version
    assert len([c for c in twin.calls() if c[0] == "models.create_or_update"]) == len(creates) + 2
    assert sorted(m.version for m in twin.models.list(name="pong")) == ["1", "2"]
    assert twin.models.get(name="pong", label="latest").version == "2"


def test_registering_again_changes_nothing(registry: AzureMLModelRegistry, twin: MLClientTwin) -> None:
    v = _version(twin, 1)
    registry.register_champion(v)
    before = len(twin.calls())
    again = registry.register_champion(v)
    assert (again.created, again.cleared) == (False, ())
    writes = [c for c in twin.calls()[before:] if c[0] == "models.create_or_update"]
    assert writes == []


def test_a_crash_between_tagging_and_untagging_is_repaired_by_the_retry(
    registry: AzureMLModelRegistry, twin: MLClientTwin
) -> None:
    registry.register_champion(_version(twin, 1))
    v2 = _version(twin, 2)
    from azure.core.exceptions import ServiceRequestError

    original = twin.models.list
    twin.models.list = lambda **kw: (_ for _ in ()).throw(ServiceRequestError("connection reset"))  # type: ignore[method-assign]
    with pytest.raises(Exception, match="connection reset"):
        registry.register_champion(v2)
    twin.models.list = original  # type: ignore[method-assign]
    assert sorted(registry.champions("pong")) == ["1", "2"]  # two tagged, never none
    registry.register_champion(v2)
    assert registry.champions("pong") == ["2"]


def test_a_version_taken_by_another_checkpoint_is_reported_not_overwritten(
    registry: AzureMLModelRegistry, twin: MLClientTwin
) -> None:
    registry.register_champion(_version(twin, 1))
    other = _version(twin, 1, request_id="pong-other")
    with pytest.raises(PermanentError, match="another checkpoint") as err:
        registry.register_champion(other)
    assert err.value.reason == "AzureMLModelVersionTaken"
    assert twin.models.get(name="pong", version="1").path == _version_path(twin, "pong-1")


def test_a_checkpoint_of_another_backend_is_refused_naming_checkpoint_path(
    registry: AzureMLModelRegistry, twin: MLClientTwin
) -> None:
    v = _version(twin, 1).model_copy(update={"checkpoint_path": "file:///data/runs/pong-1/checkpoints/final"})
    with pytest.raises(PermanentError, match="checkpoint_path 'file:///data/runs/pong-1"):
        registry.register_champion(v)
    assert not [c for c in twin.calls() if c[0].startswith("models.")]
    assert job_output("azureml://jobs/j-head/outputs/checkpoints/paths/final") == ("j-head", "checkpoints")


def test_a_job_that_is_not_in_the_workspace_is_not_registered(
    registry: AzureMLModelRegistry, twin: MLClientTwin
) -> None:
    v = _version(twin, 1).model_copy(
        update={"checkpoint_path": "azureml://jobs/rlq-gone-head/outputs/checkpoints/paths/final"}
    )
    with pytest.raises(PermanentError, match="rlq-gone-head"):
        registry.register_champion(v)
    assert twin.models.list() == []


# --- the twin keeps Azure's rules ------------------------------------------------------------------


def test_the_twin_keeps_versions_immutable_but_for_description_and_tags(twin: MLClientTwin) -> None:
    from azure.ai.ml.entities import Model

    job = _job(twin, "pong-1")
    path = f"azureml://jobs/{job}/outputs/checkpoints/paths/final"
    made = twin.models.create_or_update(Model(name="m", path=path, tags={"a": "1"}))
    assert made.version == "1"  # no version given: the container's next
    assert twin.models.create_or_update(Model(name="m", path=path)).version == "2"
    made.tags = {"a": "2"}
    made.description = "changed"
    assert twin.models.create_or_update(made).tags == {"a": "2"}
    moved = twin.models.get(name="m", version="1")
    moved.path = f"azureml://jobs/{job}/outputs/artifacts/paths/other"
    with pytest.raises(Exception, match="only its description and tags") as err:
        twin.models.create_or_update(moved)
    assert getattr(err.value, "status_code", None) == 409
    with pytest.raises(Exception, match="no output named 'nope'"):
        twin.models.create_or_update(Model(name="m", path=f"azureml://jobs/{job}/outputs/nope"))
    with pytest.raises(Exception, match="Cannot specify both version and label"):
        twin.models.get(name="m", version="1", label="latest")
    with pytest.raises(Exception, match="label champion does not exist"):
        twin.models.get(name="m", label="champion")
    with pytest.raises(Exception, match="not found"):
        twin.models.get(name="m", version="9")
    assert [(c.name, c.version, c.latest_version) for c in twin.models.list()] == [("m", None, "2")]


# --- wired: each model-promoted event shows the champion in the workspace ----------------------------


@pytest.fixture
def wired(tmp_path, twin: MLClientTwin):
    from shared.composition import build

    settings = azureml_settings(
        azureml_nsg_check="off", data_dir=tmp_path / "rlq", broker="sqlite", store="sqlite"
    )
    backend = AzureMLV2Backend(settings=settings, ml_client=twin, runs=twin.runs)
    w = build(settings, compute={"azureml": backend})
    yield w
    backend.close()


def _register(w, twin: MLClientTwin, request_id: str, mean: float):
    """Run ``request_id`` of model pong completed on Azure ML with an evaluation of ``mean``."""
    from shared.contracts.run import RunRecord, RunState
    from shared.contracts.trainer import ModelEval, TrainerSummary

    champions = w.service.core.champions()
    current = champions.champion("pong")
    job = _job(twin, request_id)
    request = parse_request(json.dumps({**PONG_REQUEST, "request_id": request_id, "model": "pong"}))
    record = RunRecord(
        request_id=request_id, request=request, state=RunState.completed, backend="azureml", run_id=job
    )
    evaluation = Evaluation(
        episodes=20, mean=mean, std=1.0, min=mean - 2, max=mean + 2, seeds=list(range(20))
    )
    summary = TrainerSummary(
        checkpoint_path=f"azureml://jobs/{job}/outputs/checkpoints/paths/final",
        model_eval=ModelEval(
            candidate=evaluation,
            champion=current.candidate if current else None,
            champion_version=current.version if current else None,
        ),
    )
    section = champions.register(record, summary)
    if section.event_id is not None:  # as the run's outbox does before its completion message
        champions.publish("pong", section.event_id)
    return section


def _deliver_events(w) -> int:
    """The notifier trigger of function_app.py on every message of its subscription, as the host calls it."""
    from azure.functions.servicebus import ServiceBusMessage

    import function_app
    from shared.composition import install
    from shared.localhost.bindings import list_functions

    [notifier] = [f for f in list_functions(function_app.app) if f.get_function_name() == "notifier"]
    s, n = w.settings, 0
    install(w)
    try:
        while batch := w.broker.receive(s.topic_name, subscription=s.subscription_name, max_messages=50):
            for m in batch:
                props = dict(m.application_properties or {})
                if props.get("event") == "model-promoted":
                    n += 1
                    notifier.get_user_function()(
                        ServiceBusMessage(
                            body=m.body,
                            message_id=m.message_id,
                            content_type="application/json",
                            application_properties=props,
                            user_properties=props,
                        )
                    )
                w.broker.complete(m)
    finally:
        install(None)
    return n


def test_each_champion_change_of_an_azureml_run_is_shown_in_the_workspace(wired, twin: MLClientTwin) -> None:
    _register(wired, twin, "pong-1", 10.0)  # the first champion
    _register(wired, twin, "pong-2", 5.0)  # kept: not registered in the workspace
    assert _deliver_events(wired) == 1
    registry = AzureMLModelRegistry(ml_client=twin)
    assert registry.champions("pong") == ["1"]
    _register(wired, twin, "pong-3", 15.0)  # promoted
    assert _deliver_events(wired) == 1
    assert registry.champions("pong") == ["3"]
    assert sorted(m.version for m in twin.models.list(name="pong")) == ["1", "3"]
    tags = twin.models.get(name="pong", version="3").tags
    assert (tags["rlq_request_id"], tags["rlq_candidate_mean"], tags["rlq_champion_mean"]) == (
        "pong-3",
        "15.0",
        "10.0",
    )
    wired.service.rollback("pong", reason="v3 cheats")
    assert _deliver_events(wired) == 1
    assert registry.champions("pong") == ["1"]


def test_an_event_that_is_no_longer_the_latest_change_is_skipped(wired, twin: MLClientTwin) -> None:
    from shared.contracts.models import PromotionEvent

    _register(wired, twin, "pong-1", 10.0)
    _register(wired, twin, "pong-2", 15.0)
    model = wired.service.model("pong").model
    first, latest = model.history
    assert wired.service.mirror_champion(PromotionEvent.model_validate(latest.model_dump())) is True
    calls = len(twin.calls())
    # the first change's event, redelivered late: it would put back v1
    assert wired.service.mirror_champion(PromotionEvent.model_validate(first.model_dump())) is False
    assert len(twin.calls()) == calls
    assert AzureMLModelRegistry(ml_client=twin).champions("pong") == ["2"]
