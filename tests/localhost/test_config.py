"""What the local host reads before hosting: host.json, timer schedules and route templates."""

from __future__ import annotations

import json

import pytest

from shared.localhost import HostConfig, LocalHostError, Route, Schedule, default_host_json, parse_timespan


def test_host_json_defaults_and_values(tmp_path):
    assert HostConfig.load(tmp_path / "missing.json") == HostConfig()
    assert HostConfig().max_concurrent_calls == 16
    path = tmp_path / "host.json"
    path.write_text(
        json.dumps(
            {
                "version": "2.0",
                "functionTimeout": "00:10:00",
                "extensions": {
                    "serviceBus": {"maxConcurrentCalls": 4, "maxAutoLockRenewalDuration": "00:20:00"},
                    "http": {"routePrefix": "v1"},
                },
            }
        )
    )
    cfg = HostConfig.load(path)
    assert (
        cfg.max_concurrent_calls,
        cfg.max_auto_lock_renewal_s,
        cfg.route_prefix,
        cfg.function_timeout_s,
    ) == (4, 1200.0, "v1", 600.0)
    assert parse_timespan("1.02:00:00.5") == 93600.5
    path.write_text("{not json")
    with pytest.raises(LocalHostError, match=r"host\.json"):
        HostConfig.load(path)


def test_the_repository_host_json_is_readable():
    path = default_host_json()
    assert path is not None, "host.json is missing from the repository root"
    cfg = HostConfig.load(path)
    assert cfg.max_concurrent_calls >= 1 and cfg.max_auto_lock_renewal_s > 0


def test_bad_schedules_are_refused_naming_the_expression():
    with pytest.raises(LocalHostError, match="every minute"):
        Schedule("every minute")
    assert Schedule("00:00:15").next_after(100.0) == 115.0


def test_route_templates():
    r = Route.compile("trainings/{request_id}/cancel")
    assert r.match("trainings/abc-1/cancel") == {"request_id": "abc-1"}
    assert r.match("trainings/abc-1") is None
    assert Route.compile("files/{*rest}").match("files/a/b/c") == {"rest": "a/b/c"}
    assert Route.compile("runs/{id?}").match("runs") == {}
    assert Route.compile("runs/{id?}").match("runs/7") == {"id": "7"}
    assert Route.compile("trainings/{request_id}/reward.png").match("trainings/r1/reward.png") == {
        "request_id": "r1"
    }
