"""Property-based intake tests: requests generated around the schema's edges.

* every valid request is accepted, runs as exactly one job, and round-trips through JSON unchanged;
* every mutated request is rejected with a dead letter naming the mutated field, and starts nothing;
* any bytes or any JSON at all: accepted or rejected for good, never an unexpected exception.
"""

from __future__ import annotations

import itertools
import json
import string
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from shared.contracts.catalog import ALGORITHMS
from shared.contracts.environments import (
    ATARI_ENV_RE,
    BUILTIN_ENVS,
    MAX_RETURN,
    NAMESPACED_ENV_RE,
    algorithm_env_problem,
)
from shared.contracts.parsing import parse_request
from shared.contracts.request import Compute, TrainingRequest
from shared.contracts.run import RunState
from shared.contracts.vm_sizes import VM_SIZES
from shared.errors import PermanentError
from tests.poison.conftest import feed, names_field

PROPS = hsettings(
    max_examples=120,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
IDS = itertools.count()

ENVS = [
    *BUILTIN_ENVS,
    "PongNoFrameskip-v4",
    "ALE/Pong-v5",
    "BreakoutNoFrameskip-v4",
    "SpaceInvadersDeterministic-v4",
]
GPU_SIZES = sorted(k for k, size in VM_SIZES.items() if 1 <= size.gpus <= 2)
CPU_SIZES = sorted(k for k, size in VM_SIZES.items() if size.gpus == 0)
TOKEN = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,20}", fullmatch=True)
CAP_S = 4 * 3600  # Settings.max_run_duration_s default


@pytest.fixture
def open_wired(wired):
    wired.settings.max_in_flight = 10**6  # the global cap has its own tests; here every valid one runs
    return wired


def ceiling(env: str) -> float:
    value = MAX_RETURN.get(env)
    if value is None and "Pong" in env:
        value = MAX_RETURN["Pong"]
    return 1e6 if value is None else value


@st.composite
def stops(draw, env: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if draw(st.booleans()):
        out["episode_reward_mean"] = draw(st.floats(-1e6, ceiling(env), allow_nan=False))
    if draw(st.booleans()):
        out["time_total_s"] = draw(st.integers(1, CAP_S))
    if draw(st.booleans()):
        out["timesteps_total"] = draw(st.integers(1, 10**11))
    if not out or draw(st.booleans()):
        out["training_iteration"] = draw(st.integers(1, 10**7))
    return out


CONFIG = st.fixed_dictionaries(
    {},
    optional={
        "num_workers": st.integers(0, 64),  # x 64 envs each: MAX_ENVS
        "num_env_runners": st.integers(0, 64),
        "num_envs_per_env_runner": st.integers(1, 64),
        "num_gpus": st.integers(0, 4),
        "train_batch_size": st.integers(1, 10**6),
        "lr": st.floats(1e-8, 1.0),
        "gamma": st.floats(0.0, 1.0),
        "entropy_coeff": st.floats(0.0, 1.0),
        "vtrace": st.booleans(),
        "seed": st.integers(0, 2**31),
        "model.dim": st.sampled_from([42, 84]),
        "model": st.fixed_dictionaries(
            {},
            optional={
                "fcnet_hiddens": st.lists(st.integers(1, 1024), max_size=4),
                "fcnet_activation": st.sampled_from(["relu", "tanh", "swish", "linear"]),
                "use_lstm": st.booleans(),
                "dim": st.sampled_from([42, 84]),
            },
        ),
    },
)

COMPUTE = st.fixed_dictionaries(
    {},
    optional={
        "backend": st.just("twin"),
        "head": st.fixed_dictionaries(
            {},
            optional={
                "name": st.from_regex(r"[A-Za-z][A-Za-z0-9-]{1,15}", fullmatch=True),
                "vm_size": st.sampled_from(GPU_SIZES).map(lambda s: s if len(s) % 2 else s.lower()),
                "min_nodes": st.just(0),
                "max_nodes": st.integers(1, 4),
            },
        ),
        "workers": st.integers(0, 15).flatmap(
            lambda n: st.fixed_dictionaries(
                {"node_count": st.just(n), "max_nodes": st.integers(max(n, 0), 15)},
                optional={
                    "name": st.from_regex(r"[A-Za-z][A-Za-z0-9-]{1,15}", fullmatch=True),
                    "vm_size": st.sampled_from(CPU_SIZES),
                    "min_nodes": st.just(0),
                },
            )
        ),
        "vnet": st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,30}", fullmatch=True),
        "subnet": st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,30}", fullmatch=True),
        "max_run_duration_s": st.integers(60, CAP_S),
    },
)

PRINTABLE_SAFE = "".join(c for c in string.printable if c not in ";|&$`<>\\\t\n\r\x0b\x0c")


@st.composite
def valid_requests(draw) -> dict[str, Any]:
    env = draw(st.sampled_from(ENVS))
    body: dict[str, Any] = {
        "request_id": f"{next(IDS)}-{draw(st.from_regex(r'[A-Za-z0-9._:-]{0,40}', fullmatch=True))}",
        "env": env,
        "stop": draw(stops(env)),
    }
    optional = {
        "experiment": st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", fullmatch=True),
        "algorithm": st.sampled_from(ALGORITHMS),
        "config": CONFIG,
        "compute": COMPUTE,
        "restore_from": TOKEN.map(lambda t: f"file:///checkpoints/{t}/checkpoint_000010"),
        "notify": st.fixed_dictionaries(
            {},
            optional={
                "webhooks": st.lists(
                    TOKEN.map(lambda t: f"https://hooks.example.com/{t}?v=1&x=2"), max_size=3
                ),
                "teams": st.lists(
                    TOKEN.map(
                        lambda t: (
                            f"https://prod-1.westeurope.logic.azure.com:443/workflows/{t}"
                            "/triggers/manual/paths/invoke?sp=%2Ftriggers&sig=abc"
                        )
                    ),
                    max_size=2,
                ),
            },
        ),
        "reply_to": st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,40}", fullmatch=True),
        "tags": st.dictionaries(
            st.from_regex(r"[A-Za-z0-9_.-]{1,20}", fullmatch=True).filter(lambda k: k != ".."),
            st.text(PRINTABLE_SAFE, max_size=40).filter(
                lambda v: ".." not in v.replace("\\", "/").split("/")
            ),
            max_size=5,
        ),
        "evaluate": st.fixed_dictionaries(
            {}, optional={"episodes": st.integers(1, 100), "gif": st.booleans()}
        ),
    }
    for key, strategy in optional.items():
        if draw(st.booleans()):
            body[key] = draw(strategy)
    if algorithm_env_problem(body.get("algorithm", "IMPALA"), env):  # DQN on continuous actions
        body["algorithm"] = "PPO"
    compute, config = body.get("compute", {}), body.get("config", {})
    if "head" in compute or "workers" in compute:  # no more EnvRunners than the clusters have CPUs
        cpus = Compute.model_validate(compute).total_cpus() or 1
        for key in ("num_env_runners", "num_workers"):
            if key in config:
                config[key] = min(config[key], cpus - 1)
        head, workers = compute.get("head", {}).get("name"), compute.get("workers", {}).get("name")
        if head is not None and workers is not None and head.lower() == workers.lower():
            compute["workers"]["name"] = head[:-1] + ("x" if head[-1] not in "xX" else "y")  # not both
    return body


@given(valid_requests())
@PROPS
def test_valid_requests_are_accepted_run_once_and_round_trip(open_wired, twin, body):
    raw = json.dumps(body).encode()
    expected = parse_request(raw)  # what the schema makes of it, independently of the service
    record, completed = feed(open_wired, raw, f"m-{body['request_id']}")
    assert completed is True
    assert record.state is RunState.submitted, record.error
    stored = open_wired.store.get(body["request_id"])
    assert stored.request == expected
    assert TrainingRequest.model_validate_json(stored.request.model_dump_json()) == stored.request
    assert parse_request(stored.request.model_dump_json()) == stored.request  # the deferral path re-reads it
    assert twin.find(body["request_id"]) == record.run_id
    assert twin.jobs_per_request()[body["request_id"]] == 1


# --- mutations: (field the error must name, a function that breaks that field) -------------------


def _set(path: str, value: Any):
    def apply(body: dict[str, Any]) -> dict[str, Any]:
        out = json.loads(json.dumps(body))
        node = out
        keys = path.split(".")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise TypeError("mutation path goes through a non-object")
        node[keys[-1]] = value
        return out

    return apply


NOT_ID = st.text(min_size=1, max_size=30).filter(
    lambda s: (
        not s[0].isascii()
        or not s[0].isalnum()
        or any(c not in string.ascii_letters + string.digits + "._:-" for c in s)
    )
)
WRONG_SCALAR = st.one_of(
    st.integers(),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(TOKEN, st.integers(), max_size=2),
)
WRONG_OBJECT = st.one_of(
    st.integers(), st.text(max_size=5), st.lists(st.integers(), max_size=2), st.booleans()
)
# a shell metacharacter, or a '..' path segment (a segment of its own: "a../" is no traversal)
SHELLY = st.sampled_from([";", "|", "&", "$", "`", "<", ">", "\\", "/../x", "$(id)"])


@st.composite
def mutations(draw) -> tuple[str, Any]:  # noqa: C901 - one branch per kind of mutation drawn, one table
    kind = draw(
        st.sampled_from(
            [
                "unknown",
                "algorithm",
                "env",
                "request_id",
                "experiment",
                "reply_to",
                "wrong_scalar",
                "wrong_object",
                "node_count",
                "vm_size",
                "time",
                "tag_value",
                "config_key",
                "webhook_private",
                "restore",
                "reward",
            ]
        )
    )
    if kind == "unknown":
        key = draw(
            st.from_regex(r"[a-z][a-z_]{2,12}", fullmatch=True).filter(
                lambda k: k not in TrainingRequest.model_fields
            )
        )
        return key, _set(key, draw(st.integers()))
    if kind == "algorithm":
        return "algorithm", _set(
            "algorithm", draw(st.text(max_size=12).filter(lambda a: a not in ALGORITHMS))
        )
    if kind == "env":
        bad = draw(
            st.text(max_size=30).filter(
                lambda e: (
                    e not in BUILTIN_ENVS and not ATARI_ENV_RE.match(e) and not NAMESPACED_ENV_RE.match(e)
                )
            )
        )
        return "env", _set("env", bad)
    if kind in ("request_id", "experiment", "reply_to"):
        return kind, _set(kind, draw(NOT_ID) + draw(SHELLY))
    if kind == "wrong_scalar":
        key = draw(
            st.sampled_from(["request_id", "experiment", "algorithm", "env", "restore_from", "reply_to"])
        )
        return key, _set(key, draw(WRONG_SCALAR))
    if kind == "wrong_object":
        key = draw(st.sampled_from(["config", "stop", "compute", "notify", "tags"]))
        return key, _set(key, draw(WRONG_OBJECT))
    if kind == "node_count":
        bad = draw(
            st.one_of(
                st.integers(max_value=-1),
                st.integers(min_value=101),
                st.floats(0.01, 99.99).filter(lambda f: not f.is_integer()),
            )
        )
        return "compute.workers.node_count", _set("compute.workers", {"node_count": bad, "max_nodes": 100})
    if kind == "vm_size":
        bad = draw(st.text(max_size=25).filter(lambda v: v.upper() not in VM_SIZES))
        return "compute.workers.vm_size", _set("compute.workers", {"vm_size": bad})
    if kind == "time":
        bad = draw(st.one_of(st.integers(max_value=0), st.integers(min_value=CAP_S + 1, max_value=10**12)))
        return "stop.time_total_s", _set("stop", {"time_total_s": bad})
    if kind == "tag_value":
        return "tags", _set("tags", {"team": draw(st.text(PRINTABLE_SAFE, max_size=8)) + draw(SHELLY)})
    if kind == "config_key":
        key = draw(
            st.from_regex(r"[a-z_]{3,20}", fullmatch=True).filter(
                lambda k: (
                    k not in __import__("shared.contracts.catalog", fromlist=["CONFIG_KEYS"]).CONFIG_KEYS
                )
            )
        )
        return "config", _set("config", {key: 1})
    if kind == "webhook_private":
        host = draw(
            st.sampled_from(
                [
                    "10.0.0.1",
                    "192.168.3.4",
                    "172.20.0.9",
                    "169.254.169.254",
                    "[fd12::1]",
                    "100.100.100.100",
                    "0.0.0.0",
                    "[fe80::2]",
                    "224.0.0.1",
                ]
            )
        )
        return "notify.webhooks.0", _set("notify", {"webhooks": [f"https://{host}/hook"]})
    if kind == "restore":
        return "restore_from", _set("restore_from", "file:///ckpt/" + draw(SHELLY) + "x")
    # a reward target the environment can never give
    env = draw(
        st.sampled_from(["CartPole-v1", "CartPole-v0", "Acrobot-v1", "MountainCar-v0", "PongNoFrameskip-v4"])
    )
    target = draw(st.floats(ceiling(env) + 0.5, 1e6, allow_nan=False))
    return "stop.episode_reward_mean", lambda b: {
        **_set("stop", {"episode_reward_mean": target})(b),
        "env": env,
    }


@given(valid_requests(), mutations())
@PROPS
def test_mutated_requests_are_rejected_naming_the_field_and_start_nothing(open_wired, twin, body, mutation):
    field, mutate = mutation
    bad = mutate(body)
    raw = json.dumps(bad).encode()
    with pytest.raises(PermanentError) as err:  # nothing but a permanent, field-named error
        open_wired.service.accept(raw, message_id="probe")
    assert names_field(err.value.description, field), (field, err.value.description[:300])

    mid = f"bad-{next(IDS)}"
    record, completed = feed(open_wired, raw, mid)
    assert completed is False
    dead = [
        d
        for d in open_wired.broker.dead_letters(open_wired.settings.queue_name, limit=10**6)
        if d.message_id == mid
    ]
    assert len(dead) == 1 and names_field(dead[0].description, field)
    rid = bad.get("request_id") if isinstance(bad.get("request_id"), str) else None
    if record is not None:
        assert record.state is RunState.rejected
    for candidate in {rid, mid, "probe"} - {None}:
        assert twin.find(candidate) is None


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
FIELDS = sorted(TrainingRequest.model_fields)


@given(
    st.one_of(
        st.binary(max_size=300),
        JSON_VALUES.map(lambda v: json.dumps(v).encode()),
        st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES, max_size=6).map(
            lambda d: json.dumps(d).encode()
        ),
    )
)
@PROPS
def test_any_input_is_accepted_or_rejected_for_good_never_an_unexpected_error(open_wired, twin, raw):
    mid = f"any-{next(IDS)}"
    try:
        open_wired.service.accept(raw, message_id=f"{mid}-probe")
    except PermanentError:
        pass  # the only error an input may cause
    record, completed = feed(open_wired, raw, mid)
    dead = [
        d
        for d in open_wired.broker.dead_letters(open_wired.settings.queue_name, limit=10**6)
        if d.message_id == mid
    ]
    if completed:
        # a valid request (or a repeat of an earlier id): the message is settled normally, nothing dead
        assert record is not None and record.state is not RunState.rejected and not dead
    else:
        assert len(dead) == 1 and dead[0].reason in ("InvalidRequest", "Forbidden")
        assert twin.find(mid) is None
