"""The one parser of request bodies: :func:`load_json` (refuses repeated keys), :func:`parse_request`
(size, encoding, depth, schema), and :func:`field_errors` (pydantic errors as ``[{field, message}]``)."""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from shared.contracts.request import TrainingRequest
from shared.errors import InvalidRequest


def field_errors(err: ValidationError) -> list[dict[str, str]]:
    """Pydantic errors as ``[{field, message}]`` with dotted field paths a person can find."""
    out = []
    for e in err.errors(include_url=False):
        loc = ".".join(str(p) for p in e["loc"] if p != "__root__") or "(body)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field; remove it (see the request schema in the README)"
        elif e["type"] == "literal_error":
            msg = f"{e.get('input')!r} is not allowed; {msg[0].lower()}{msg[1:]}"
        elif e["type"] == "missing":
            msg = "field required"
        elif e["type"] in ("int_type", "float_type", "bool_type") and isinstance(
            e.get("input"), (bool, str, float)
        ):
            want = {"int_type": "an integer", "float_type": "a number", "bool_type": "true or false"}[
                e["type"]
            ]
            msg = f"{json.dumps(e['input'])[:40]} is not allowed; expected {want}"
        out.append({"field": loc, "message": msg})
    return out


class DuplicateKey(ValueError):
    """A JSON object names the same key twice; ``field`` is the dotted path of the repeated key."""

    def __init__(self, field: str) -> None:
        self.field = field
        self.message = (
            "this key appears more than once in the same JSON object; give it once "
            "(parsers disagree on which copy wins)"
        )
        super().__init__(f"{field}: {self.message}")


class _Repeated(dict):  # type: ignore[type-arg]
    """A decoded object that had repeated keys (``repeated`` names them), found after decoding."""

    repeated: list[str]


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    repeated: list[str] = []
    for key, value in pairs:
        if key in obj and key not in repeated:
            repeated.append(key)
        obj[key] = value
    if not repeated:
        return obj
    marked = _Repeated(obj)
    marked.repeated = repeated
    return marked


def _first_repeated(obj: Any, path: str = "") -> str | None:
    if isinstance(obj, _Repeated):
        return f"{path}.{obj.repeated[0]}" if path else obj.repeated[0]
    items: Any = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for key, value in items:
        found = _first_repeated(value, f"{path}.{key}" if path else str(key))
        if found is not None:
            return found
    return None


def load_json(text: str | bytes) -> Any:
    """``json.loads`` that refuses an object with a repeated key (:class:`DuplicateKey`, naming it).

    The one parser for request bodies (queue intake, the HTTP API, request files): a body whose
    keys repeat means different things to parsers that keep the first copy and those that keep
    the last, which is how a value slips past validation.
    """
    value = json.loads(text, object_pairs_hook=_pairs)
    where = _first_repeated(value)
    if where is not None:
        raise DuplicateKey(where)
    return value


# C901: one early refusal per way a body can be bad (size, encoding, JSON, repeated key, shape,
# depth, surrogates, schema), read top to bottom as the intake contract (tests/poison) lists them.
def parse_request(  # noqa: C901
    body: bytes | str | dict[str, Any], *, default_id: str | None = None, max_bytes: int = 256 * 1024
) -> TrainingRequest:
    """Decode and validate a request body; raise :class:`InvalidRequest` naming each bad field."""
    if isinstance(body, (bytes, bytearray)):
        if len(body) > max_bytes:
            raise InvalidRequest(
                [{"field": "(body)", "message": f"body is {len(body)} bytes; the limit is {max_bytes}"}]
            )
        try:
            body = bytes(body).decode("utf-8")
        except UnicodeDecodeError as err:
            raise InvalidRequest(
                [{"field": "(body)", "message": f"not UTF-8 text ({err.reason} at byte {err.start})"}]
            ) from None
    if isinstance(body, str):
        if len(body.encode("utf-8", "surrogatepass")) > max_bytes:
            raise InvalidRequest([{"field": "(body)", "message": f"body is larger than {max_bytes} bytes"}])
        try:
            body = load_json(body)
        except RecursionError:
            raise InvalidRequest([{"field": "(body)", "message": "JSON nested too deeply"}]) from None
        except DuplicateKey as err:
            raise InvalidRequest([{"field": err.field, "message": err.message}]) from None
        except ValueError as err:
            raise InvalidRequest([{"field": "(body)", "message": f"malformed JSON: {err}"}]) from None
    if not isinstance(body, dict):
        raise InvalidRequest(
            [{"field": "(body)", "message": f"expected a JSON object, got {type(body).__name__}"}]
        )
    if _depth(body) > 8:
        raise InvalidRequest([{"field": "(body)", "message": "JSON nested deeper than 8 levels"}])
    where = _unencodable(body)
    if where is not None:
        # A lone surrogate (``"\ud800"``) parses but can never be stored or sent as UTF-8.
        raise InvalidRequest(
            [{"field": where, "message": "text contains an unpaired surrogate (not valid Unicode)"}]
        )
    data = dict(body)
    if data.get("request_id") is None and default_id is not None:
        data["request_id"] = default_id
    try:
        return TrainingRequest.model_validate(data)
    except ValidationError as err:
        raise InvalidRequest(field_errors(err)) from None


def _unencodable(obj: Any, path: str = "") -> str | None:
    """The dotted path of the first key or string value that is not encodable as UTF-8."""
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
        except UnicodeEncodeError:
            return path or "(body)"
        return None
    items: Any = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for key, value in items:
        here = f"{path}.{key}" if path else str(key)
        if isinstance(key, str) and _unencodable(key) is not None:
            return path or "(body)"
        found = _unencodable(value, here)
        if found is not None:
            return found
    return None


def _depth(obj: Any, level: int = 0) -> int:
    if level > 8:
        return level
    if isinstance(obj, dict):
        return max((_depth(v, level + 1) for v in obj.values()), default=level + 1)
    if isinstance(obj, list):
        return max((_depth(v, level + 1) for v in obj), default=level + 1)
    return level
