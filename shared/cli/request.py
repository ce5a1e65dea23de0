"""A training request body from ``rlq submit``'s flags and ``--file`` (a flag wins over the file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shared.contracts.parsing import load_json
from shared.errors import InvalidRequest


def json_option(text: str | None, field_name: str) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = load_json(text)  # refuses a repeated key, naming it
    except ValueError as err:
        raise InvalidRequest([{"field": field_name, "message": f"not valid JSON: {err}"}]) from None
    if not isinstance(value, dict):
        raise InvalidRequest(
            [{"field": field_name, "message": "expected a JSON object, e.g. '{\"lr\": 0.001}'"}]
        )
    return value


def build_request(  # noqa: C901 - one `if` per CLI flag that overrides the file's field, in flag order
    *,
    file: Path | None = None,
    algorithm: str | None = None,
    env: str | None = None,
    config: str | None = None,
    stop: str | None = None,
    env_config: str | None = None,
    experiment: str | None = None,
    request_id: str | None = None,
    backend: str | None = None,
    head_vm_size: str | None = None,
    worker_vm_size: str | None = None,
    worker_nodes: int | None = None,
    max_run_duration_s: int | None = None,
    restore_from: str | None = None,
    webhooks: list[str] | None = None,
    teams: list[str] | None = None,
    reply_to: str | None = None,
    tags: list[str] | None = None,
    evaluate_episodes: int | None = None,
    gif: bool = False,
    team: str | None = None,  # the request's team (its quota); ``teams`` above: Teams channel URLs
    priority: str | None = None,
) -> dict[str, Any]:
    """The request body from ``--file`` and the flags (a flag wins over the file's value)."""
    body: dict[str, Any] = {}
    if file is not None:
        try:
            loaded = load_json(Path(file).read_text(encoding="utf-8"))
        except OSError as err:
            raise InvalidRequest(
                [{"field": "--file", "message": f"cannot read {file}: {err.strerror}"}]
            ) from None
        except ValueError as err:
            raise InvalidRequest(
                [{"field": "--file", "message": f"{file} is not valid JSON: {err}"}]
            ) from None
        if not isinstance(loaded, dict):
            raise InvalidRequest([{"field": "--file", "message": f"{file} must hold a JSON object"}])
        body = loaded
    simple = {
        "algorithm": algorithm,
        "env": env,
        "experiment": experiment,
        "request_id": request_id,
        "restore_from": restore_from,
        "reply_to": reply_to,
        "team": team,
        "priority": priority,
    }
    body.update({k: v for k, v in simple.items() if v is not None})
    for key, text in (("config", config), ("stop", stop), ("env_config", env_config)):
        parsed = json_option(text, key)
        if parsed is not None:
            existing = body.get(key)
            base = existing if isinstance(existing, dict) else {}
            body[key] = {**base, **parsed}

    compute = dict(body.get("compute") or {})
    if backend is not None:
        compute["backend"] = backend
    if head_vm_size is not None:
        compute["head"] = {**(compute.get("head") or {}), "vm_size": head_vm_size}
    if worker_vm_size is not None or worker_nodes is not None:
        workers = dict(compute.get("workers") or {})
        if worker_vm_size is not None:
            workers["vm_size"] = worker_vm_size
        if worker_nodes is not None:
            workers["node_count"] = worker_nodes
            # --worker-nodes N means "N nodes": raise the cluster's ceiling to fit.
            workers["max_nodes"] = max(worker_nodes, int(workers.get("max_nodes") or 4))
        compute["workers"] = workers
    if max_run_duration_s is not None:
        compute["max_run_duration_s"] = max_run_duration_s
    if compute:
        body["compute"] = compute

    if webhooks or teams:
        notify = dict(body.get("notify") or {})
        if webhooks:
            notify["webhooks"] = [*notify.get("webhooks", []), *webhooks]
        if teams:
            notify["teams"] = [*notify.get("teams", []), *teams]
        body["notify"] = notify
    if tags:
        parsed_tags = dict(body.get("tags") or {})
        for i, tag in enumerate(tags):
            key, sep, value = tag.partition("=")
            if not sep or not key:
                raise InvalidRequest([{"field": f"tags.{i}", "message": f"{tag!r}: expected name=value"}])
            parsed_tags[key] = value
        body["tags"] = parsed_tags
    if evaluate_episodes is not None or gif:
        evaluate = dict(body.get("evaluate") or {})
        if evaluate_episodes is not None:
            evaluate["episodes"] = evaluate_episodes
        if gif:
            evaluate["gif"] = True
        body["evaluate"] = evaluate
    return body
