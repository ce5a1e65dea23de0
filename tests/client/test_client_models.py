"""shared/client.py's models and champions against the real local host: runs of the compute twin
register their versions through the host's own poller, and the client reads them back as rlq's
contracts (Model, ModelDetail, ModelVersion)."""

from __future__ import annotations

import pytest

from shared.client import Client, ModelNotFound, RequestRejected
from shared.contracts.models import Model, ModelDetail, ModelVersion
from tests.client.conftest import CARTPOLE
from tests.support.models import complete


@pytest.fixture
def hosted(serve):
    host, w = serve()
    with Client(host.base_url, retries=2, backoff_s=0.05) as c:
        yield c, w


def test_a_completed_run_becomes_its_models_first_champion_and_the_client_fetches_it(hosted) -> None:
    client, _ = hosted
    rid = client.submit({**CARTPOLE, "model": "balancer"})
    done = client.wait(rid, timeout_s=30, interval_s=0.2)
    assert done["model"]["name"] == "balancer" and done["model"]["promoted"] is True

    champion = client.champion("balancer")
    assert isinstance(champion, ModelVersion)
    assert (champion.version, champion.request_id) == (1, rid)
    assert champion.checkpoint_path == done["checkpoint_path"] == done["model"]["champion_checkpoint"]
    models = client.models()
    assert all(isinstance(m, Model) for m in models)
    assert [(m.name, m.champion_version) for m in models] == [("balancer", 1)]


def test_show_promote_and_rollback_return_the_model_as_it_now_is(hosted) -> None:
    client, w = hosted
    complete(w.service, "cp-1", mean=100.0)
    complete(w.service, "cp-2", mean=120.0)  # promoted
    complete(w.service, "cp-3", mean=110.0)  # kept

    detail = client.model("cartpole")
    assert isinstance(detail, ModelDetail)
    assert detail.model.champion_version == 2
    assert [(v.version, v.promoted, v.candidate.mean) for v in detail.versions] == [
        (3, False, 110.0),
        (2, True, 120.0),
        (1, True, 100.0),
    ]
    assert [v.version for v in client.model("cartpole", limit=2).versions] == [3, 2]

    after = client.promote("cartpole", 3, reason="v3 generalises better to the new tracks")
    assert after.model.champion_version == 3 and client.champion("cartpole").request_id == "cp-3"
    assert after.model.history[-1].by == "person"
    back = client.rollback("cartpole", reason="v3 regressed in production")
    assert back.model.champion_version == 2
    assert back.model.history[-1].reason == "v3 regressed in production"


def test_refusals_name_the_field(hosted) -> None:
    client, w = hosted
    complete(w.service, "cp-1", mean=100.0)
    with pytest.raises(ModelNotFound) as err:
        client.champion("nobody")
    assert err.value.errors == [{"field": "name", "message": "no model 'nobody'"}]
    with pytest.raises(ModelNotFound) as err:
        client.promote("cartpole", 7, reason="x")
    assert err.value.errors[0]["field"] == "version"
    with pytest.raises(RequestRejected) as rejected:
        client.promote("cartpole", 1, reason="")
    assert rejected.value.errors[0]["field"] == "reason"
    with pytest.raises(RequestRejected) as rejected:
        client.rollback("cartpole", reason="only one champion ever")
    assert rejected.value.errors[0]["field"] == "model"
    with pytest.raises(RequestRejected):
        client.model("a/b")


def test_a_model_without_a_champion_answers_none(hosted) -> None:
    client, w = hosted
    complete(w.service, "cp-1", mean=100.0, promote="never")
    assert client.champion("cartpole") is None
    assert client.model("cartpole").model.latest_version == 1
