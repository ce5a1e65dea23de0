"""A client for services that enqueue training: rlq's HTTP API from Python, and the Service Bus
message intake expects, for producers that write to the queue directly.

Importing this module loads the standard library and ``httpx`` only, so another service can depend
on it cheaply; results are the API's JSON as plain dicts (the run record, the completion message).

    from shared.client import Client

    with Client("https://rlq-func.azurewebsites.net", function_key=KEY) as rlq:
        rid = rlq.submit({"env": "CartPole-v1", "stop": {"episode_reward_mean": 150}})
        done = rlq.wait(rid, timeout_s=3600)  # the completion message
        print(done["status"], done["final_reward"], done["checkpoint_path"])

Errors are the API's own: a refused request raises :class:`RequestRejected` carrying the same
``[{"field", "message"}]`` list the API returns; an unknown id :class:`RunNotFound`. Transient
failures (connection refused or reset, timeouts, 502 / 503 / 504) are retried with exponential
backoff (honouring ``Retry-After``) up to a bound, then raised as :class:`ServiceUnavailable`.
``submit`` gives every request a ``request_id`` before the first attempt, so a retried submission
is the same request and intake runs it once.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Self

import httpcore
import httpx

if TYPE_CHECKING:
    from azure.servicebus import ServiceBusMessage

    from shared.contracts.models import Model, ModelDetail, ModelVersion

__all__ = [
    "ApiError",
    "Client",
    "ModelNotFound",
    "RequestRejected",
    "RunNotFound",
    "ServiceUnavailable",
    "WaitTimeout",
    "retrain_request",
    "servicebus_message",
]

FUNCTION_KEY_HEADER = "x-functions-key"
RETRIED_STATUS = frozenset({502, 503, 504})


class ApiError(Exception):
    """rlq answered with an error. ``errors`` is the API's ``[{"field", "message"}]`` list."""

    def __init__(self, errors: list[dict[str, str]], *, status_code: int | None = None) -> None:
        self.errors = errors
        self.status_code = status_code
        text = "; ".join(f"{e.get('field', '(body)')}: {e.get('message', '')}" for e in errors)
        super().__init__(text or f"HTTP {status_code}")


class RequestRejected(ApiError):
    """The request can never run as it is (HTTP 400, or rejected at intake); each field is named."""


class RunNotFound(ApiError):
    """No training request with that id (HTTP 404)."""


class ModelNotFound(ApiError):
    """No model of that name, or no such version of it (HTTP 404; the error names ``name`` or ``version``)."""


class ServiceUnavailable(ApiError):
    """Still unreachable or busy after the bounded retries (connection errors, 502 / 503 / 504)."""


class WaitTimeout(ApiError, TimeoutError):
    """``wait`` gave up before the run ended; ``record`` is the last run record read."""

    def __init__(self, errors: list[dict[str, str]], *, record: dict[str, Any]) -> None:
        super().__init__(errors)
        self.record = record


class Client:
    """rlq's HTTP API at ``base_url`` (the Function App, or ``rlq serve``'s ``http://127.0.0.1:7071``).

    ``function_key`` is sent as ``x-functions-key`` (Azure; the local host does not check keys).
    ``timeout_s`` bounds each call as a whole, attempts and the waits between them included: a
    server that answers one byte a second cannot hold a call past it (every read, write and connect
    gets what is left of it, not a fresh ``timeout_s``). ``retries`` bounds the attempts after the
    first for a transient failure; the waits between them grow from ``backoff_s`` and never exceed
    ``max_backoff_s``.
    """

    def __init__(
        self,
        base_url: str,
        *,
        function_key: str | None = None,
        timeout_s: float = 30.0,
        retries: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 10.0,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if retries < 0:
            raise ValueError("retries must be 0 or more")
        root = base_url.rstrip("/")
        self.api_url = root if root.endswith("/api") else f"{root}/api"
        headers = {"accept": "application/json"}
        if function_key:
            headers[FUNCTION_KEY_HEADER] = function_key
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._sleep = sleep
        self._http = httpx.Client(
            base_url=self.api_url,
            headers=headers,
            timeout=timeout_s,
            transport=transport or _deadline_transport(),
        )

    # --- the API ---------------------------------------------------------------------------------

    def submit(self, request: Mapping[str, Any]) -> str:
        """Validate and enqueue ``request`` (a training request body); returns its request id."""
        body = dict(request)
        body.setdefault("request_id", uuid.uuid4().hex)  # one id across retries: intake runs it once
        return str(self._call("POST", "/trainings", json=body)["request_id"])

    def get(self, request_id: str) -> dict[str, Any]:
        """The run record: state, progress, the completion message once there is one, deliveries."""
        return self._call("GET", f"/trainings/{_segment(request_id)}")

    def list(self, *, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Run records, newest first (``state``: only runs in that state)."""
        params: dict[str, Any] = {"limit": limit}
        if state is not None:
            params["state"] = state
        return list(self._call("GET", "/trainings", params=params)["items"])

    def retrain(
        self,
        request_id: str,
        *,
        config: Mapping[str, Any] | None = None,
        stop: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        new_request_id: str | None = None,
    ) -> str:
        """Submit a warm-started copy of run ``request_id`` (see :func:`retrain_request`); returns
        the new request id. Refused (:class:`RequestRejected`, naming ``restore_from``) when that
        run did not complete or left no checkpoint."""
        body = retrain_request(
            self.get(request_id), config=config, stop=stop, tags=tags, request_id=new_request_id
        )
        return self.submit(body)

    def cancel(self, request_id: str) -> dict[str, Any]:
        """Ask the run to stop; returns the run record (``cancel_requested`` set)."""
        return self._call("POST", f"/trainings/{_segment(request_id)}/cancel")

    def wait(self, request_id: str, timeout_s: float, *, interval_s: float = 2.0) -> dict[str, Any]:
        """The completion message, once the run has ended (whatever its ``status``: Completed,
        Failed, Canceled, TimedOut). Raises :class:`RequestRejected` when intake refused the
        request, :class:`WaitTimeout` after ``timeout_s``, :class:`RunNotFound` when no run of that
        id appeared within ``timeout_s`` (a request sent straight to the queue has no record until
        intake takes it, so an unknown id is waited for, not refused at once)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                record = self.get(request_id)
            except RunNotFound:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise
                self._sleep(min(interval_s, left))
                continue
            if record.get("completion") is not None:
                return dict(record["completion"])
            if record.get("state") == "rejected":
                raise RequestRejected(
                    [{"field": "(request)", "message": record.get("error") or "rejected at intake"}]
                )
            left = deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeout(
                    [
                        {
                            "field": "request_id",
                            "message": f"{request_id} is still {record.get('state')} after {timeout_s:g} s",
                        }
                    ],
                    record=record,
                )
            self._sleep(min(interval_s, left))

    # --- models and champions (docs/models.md): the API's JSON read as rlq's own contracts ----------

    def models(self, *, limit: int = 100) -> builtins.list[Model]:
        """The models by name (each without its history: :meth:`model` has it)."""
        from shared.contracts.models import Model

        items = self._call("GET", "/models", params={"limit": limit}, not_found=ModelNotFound)["items"]
        return [Model.model_validate(m) for m in items]

    def model(self, name: str, *, limit: int = 100) -> ModelDetail:
        """The model ``name``: its champion, its versions newest first with their evaluations (at
        most ``limit``), its champion changes. :class:`ModelNotFound` when there is no such model."""
        from shared.contracts.models import ModelDetail

        data = self._call("GET", f"/models/{_name(name)}", params={"limit": limit}, not_found=ModelNotFound)
        return ModelDetail.model_validate(data)

    def champion(self, name: str) -> ModelVersion | None:
        """The champion version of model ``name`` (its checkpoint, run and evaluation); None while the
        model has none. :class:`ModelNotFound` when there is no such model."""
        return self.model(name, limit=1).champion

    def promote(self, name: str, version: int, *, reason: str) -> ModelDetail:
        """Make ``version`` of ``name`` the champion (a person's decision, recorded with ``reason``);
        the model after it. A bad version or an empty reason raises :class:`RequestRejected`
        naming the field; an unknown model or version :class:`ModelNotFound`."""
        from shared.contracts.models import ModelDetail

        body = {"version": version, "reason": reason}
        data = self._call("POST", f"/models/{_name(name)}/promote", json=body, not_found=ModelNotFound)
        return ModelDetail.model_validate(data)

    def rollback(self, name: str, *, reason: str) -> ModelDetail:
        """Make the champion before the current one champion again, recorded with ``reason``."""
        from shared.contracts.models import ModelDetail

        data = self._call(
            "POST", f"/models/{_name(name)}/rollback", json={"reason": reason}, not_found=ModelNotFound
        )
        return ModelDetail.model_validate(data)

    # --- plumbing --------------------------------------------------------------------------------

    def _call(
        self, method: str, path: str, *, not_found: type[ApiError] = RunNotFound, **kwargs: Any
    ) -> dict[str, Any]:
        attempt = 0
        deadline = time.monotonic() + self.timeout_s
        while True:
            retry_after = None
            status = None
            try:
                with _until(deadline):
                    response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as err:  # refused, reset, timed out: nothing was answered
                problem = f"{type(err).__name__}: {err}"
            else:
                if response.status_code not in RETRIED_STATUS:
                    return _result(response, not_found)
                status = response.status_code
                said = _errors_of(response)
                problem = f"HTTP {status}" + (f": {said[0]['message']}" if said else "")
                retry_after = _retry_after(response)
            left = deadline - time.monotonic()
            if attempt >= self.retries or left <= 0:
                spent = "" if left > 0 else f", the call's timeout of {self.timeout_s:g} s spent"
                raise ServiceUnavailable(
                    [{"field": "(service)", "message": f"{problem} (after {attempt + 1} attempts{spent})"}],
                    status_code=status,
                )
            delay = min(self.max_backoff_s, self.backoff_s * 2**attempt) * (0.5 + random.random() / 2)
            if retry_after is not None:
                delay = min(self.max_backoff_s, max(delay, retry_after))
            self._sleep(min(delay, left))
            attempt += 1

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- one deadline for a whole call ---------------------------------------------------------------
# httpx's timeouts are per operation: a read that gets one byte before its timeout starts the next
# read with a fresh one. The transport's network streams here take their timeouts from what is
# left of the calling thread's deadline instead, and fail once it has passed.

_deadline = threading.local()


@contextlib.contextmanager
def _until(deadline: float) -> Iterator[None]:
    _deadline.at = deadline
    try:
        yield
    finally:
        _deadline.at = None


def _left(timeout: float | None, expired: type[Exception]) -> float | None:
    end = getattr(_deadline, "at", None)
    if end is None:
        return timeout
    left = end - time.monotonic()
    if left <= 0:
        raise expired("the call's timeout was spent")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> Any:
        return _DeadlineStream(
            self._inner.start_tls(ssl_context, server_hostname, _left(timeout, httpcore.ConnectTimeout))
        )

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(
            host, port, _left(timeout, httpcore.ConnectTimeout), local_address, socket_options
        )
        return _DeadlineStream(stream)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.NetworkStream:
        return _DeadlineStream(
            self._inner.connect_unix_socket(path, _left(timeout, httpcore.ConnectTimeout), socket_options)
        )

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def _deadline_transport() -> httpx.HTTPTransport:
    """httpx's own transport, its connection pool's network backend wrapped as above (httpx has no
    parameter for the backend; ``tests/client`` holds it to a trickling server)."""
    transport = httpx.HTTPTransport()
    pool = transport._pool  # private: the one way to hand httpcore a network backend through httpx
    pool._network_backend = _DeadlineBackend(pool._network_backend)
    return transport


def retrain_request(
    parent: Mapping[str, Any],
    *,
    config: Mapping[str, Any] | None = None,
    stop: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    request_id: str | None = None,
) -> dict[str, Any]:
    """The request body of a warm-started copy of ``parent`` (a run record as the API returns it):
    the same algorithm, env, experiment, compute (on the parent's backend, where its checkpoint
    lives), notifications and evaluation; ``config``, ``stop`` and ``tags`` merged over the
    parent's (a ``None`` value drops a stop criterion); ``restore_from: rlq://<parent id>``, which
    intake resolves to the parent's final checkpoint; a new ``request_id``."""
    request = parent.get("request")
    parent_id = parent.get("request_id")
    if not isinstance(request, Mapping) or not parent_id:
        raise RequestRejected(
            [{"field": "restore_from", "message": f"run {parent_id!r} has no recorded request to copy"}]
        )
    body: dict[str, Any] = json.loads(json.dumps(request))  # a deep copy of plain JSON
    body["request_id"] = request_id or uuid.uuid4().hex
    body["restore_from"] = f"rlq://{parent_id}"
    body["config"] = {**(body.get("config") or {}), **(config or {})}
    body["stop"] = {**(body.get("stop") or {}), **(stop or {})}
    if tags:
        body["tags"] = {**(body.get("tags") or {}), **tags}
    if parent.get("backend"):
        body["compute"] = {**(body.get("compute") or {}), "backend": parent["backend"]}
    return body


def servicebus_message(request: Mapping[str, Any], *, validate: bool = True) -> ServiceBusMessage:
    """The ``azure.servicebus.ServiceBusMessage`` intake expects, for producers that send to the
    ``training-requests`` queue themselves: the JSON body, ``message_id`` = ``request_id`` (one is
    added when the request has none, so Service Bus duplicate detection and intake both see one
    request), ``content_type`` ``application/json`` and the ``rlq_message_id`` property.

    ``validate`` checks the body here, as the API would, raising :class:`RequestRejected` with the
    same field errors, so a bad request is refused before it reaches the queue (checks that need the
    deployment, such as caps and ``rlq://`` references, still happen at intake). It needs the
    ``rlq`` package (pydantic); ``validate=False`` needs only ``azure-servicebus``.
    """
    from shared.adapters.broker.servicebus import request_message  # the one place rlq builds this message

    body = dict(request)
    body.setdefault("request_id", uuid.uuid4().hex)
    if validate:
        from shared.contracts.parsing import parse_request
        from shared.errors import InvalidRequest

        try:
            parse_request(body)
        except InvalidRequest as err:
            raise RequestRejected(err.errors) from None
    rid = body["request_id"]
    if not isinstance(rid, str) or not rid:
        raise RequestRejected([{"field": "request_id", "message": "expected a non-empty string"}])
    return request_message(json.dumps(body).encode("utf-8"), message_id=rid)


def _segment(request_id: str) -> str:
    if not request_id or "/" in request_id or request_id in (".", ".."):
        raise RequestRejected([{"field": "request_id", "message": f"{request_id!r} is not a request id"}])
    return request_id


def _name(name: str) -> str:
    if not name or "/" in name or name in (".", ".."):
        raise RequestRejected([{"field": "name", "message": f"{name!r} is not a model name"}])
    return name


def _errors_of(response: httpx.Response) -> list[dict[str, str]]:
    try:
        data = response.json()
    except ValueError:
        return []
    errors = data.get("errors") if isinstance(data, dict) else None
    if not isinstance(errors, list):
        return []
    return [
        {"field": str(e.get("field", "(body)")), "message": str(e.get("message", ""))}
        for e in errors
        if isinstance(e, dict)
    ]


def _result(response: httpx.Response, not_found: type[ApiError] = RunNotFound) -> dict[str, Any]:
    code = response.status_code
    if code < 400:
        data = response.json()
        if not isinstance(data, dict):
            raise ApiError([{"field": "(response)", "message": "expected a JSON object"}], status_code=code)
        return data
    errors = _errors_of(response) or [
        {"field": "(service)", "message": f"HTTP {code}: {response.text[:200] or response.reason_phrase}"}
    ]
    if code == 400:
        raise RequestRejected(errors, status_code=code)
    if code == 404:
        raise not_found(errors, status_code=code)
    raise ApiError(errors, status_code=code)  # 401/403 (a wrong function key), 500, ...


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers.get("retry-after", "")))
    except ValueError:
        return None
