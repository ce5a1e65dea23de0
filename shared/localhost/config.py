"""What the local host reads before it hosts anything: host.json, app settings, schedules, routes.

Each piece follows the Azure Functions host's own rules: host.json durations are .NET TimeSpans,
``%NAME%`` binding expressions resolve from app settings, timer schedules are NCRONTAB (seconds
first) or a TimeSpan interval, and HTTP route templates are ASP.NET-style (``{name}``,
``{name:int}``, ``{name?}``, ``{*rest}``).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from croniter import croniter

from shared.settings import Settings


class LocalHostError(Exception):
    """The function app cannot be hosted as written (unknown trigger, unresolved %SETTING%)."""


# --- host.json -------------------------------------------------------------------------------


@dataclass(frozen=True)
class HostConfig:
    """The host.json settings the local host honours; defaults are the Functions host's own."""

    max_concurrent_calls: int = 16
    max_auto_lock_renewal_s: float = 300.0
    auto_complete_messages: bool = True
    route_prefix: str = "api"
    function_timeout_s: float | None = None

    @classmethod
    def load(cls, path: Path | None) -> HostConfig:
        """Read ``path``; a missing file gives the defaults, a malformed one fails naming the key."""
        if path is None or not Path(path).is_file():
            return cls()
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except ValueError as err:
            raise LocalHostError(f"{path}: not valid JSON ({err})") from None
        ext = data.get("extensions") or {}
        sb = ext.get("serviceBus") or {}
        handler_opts = sb.get("messageHandlerOptions") or {}  # extension 3.x/4.x spelling
        http = ext.get("http") or {}
        defaults = cls()
        try:
            calls = int(
                sb.get(
                    "maxConcurrentCalls",
                    handler_opts.get("maxConcurrentCalls", defaults.max_concurrent_calls),
                )
            )
            renewal = sb.get("maxAutoLockRenewalDuration", handler_opts.get("maxAutoRenewDuration"))
            auto_complete = sb.get("autoCompleteMessages", handler_opts.get("autoComplete", True))
            timeout = data.get("functionTimeout")
            return cls(
                max_concurrent_calls=max(1, calls),
                max_auto_lock_renewal_s=(
                    parse_timespan(renewal) if renewal is not None else defaults.max_auto_lock_renewal_s
                ),
                auto_complete_messages=bool(auto_complete),
                route_prefix=str(http.get("routePrefix", defaults.route_prefix)).strip("/"),
                function_timeout_s=parse_timespan(timeout) if timeout not in (None, "-1") else None,
            )
        except (TypeError, ValueError) as err:
            raise LocalHostError(f"{path}: {err}") from None


_TIMESPAN_RE = re.compile(r"^(?:(?P<d>\d+)\.)?(?P<h>\d{1,2}):(?P<m>\d{1,2}):(?P<s>\d{1,2}(?:\.\d+)?)$")


def parse_timespan(text: str) -> float:
    """A .NET TimeSpan (``[d.]hh:mm:ss[.fff]``, as host.json writes durations) in seconds."""
    m = _TIMESPAN_RE.match(str(text).strip())
    if not m:
        raise ValueError(f"{text!r} is not a duration; expected [d.]hh:mm:ss, e.g. 00:05:00")
    return int(m["d"] or 0) * 86400 + int(m["h"]) * 3600 + int(m["m"]) * 60 + float(m["s"])


def default_host_json() -> Path | None:
    """host.json at the repository root (beside function_app.py), when there is one."""
    candidate = Path(__file__).resolve().parents[2] / "host.json"
    return candidate if candidate.is_file() else None


# --- app settings ----------------------------------------------------------------------------

_SETTING_RE = re.compile(r"%([A-Za-z_][A-Za-z0-9_]*)%")


def resolve_app_settings(text: str, settings: Settings) -> str:
    """Replace ``%NAME%`` binding expressions as the host does: from the environment first, then
    from :class:`Settings` (``%RLQ_POLL_SCHEDULE%`` → ``settings.poll_schedule``)."""

    def one(m: re.Match[str]) -> str:
        name = m.group(1)
        if name in os.environ:
            return os.environ[name]
        field_name = name.lower()
        field_name = field_name.removeprefix("rlq_")
        if field_name in type(settings).model_fields:
            value = getattr(settings, field_name)
            if value is not None and not hasattr(value, "get_secret_value"):
                return str(value)
        raise LocalHostError(
            f"app setting {name} (binding expression %{name}%) is not set: set the environment "
            f"variable {name}" + (f" or Settings.{field_name}" if name.upper().startswith("RLQ_") else "")
        )

    return _SETTING_RE.sub(one, text)


# --- schedules -------------------------------------------------------------------------------


class Schedule:
    """An NCRONTAB expression (6 fields, seconds first; 5 fields accepted) or a TimeSpan interval."""

    def __init__(self, expression: str) -> None:
        self.expression = expression.strip()
        self._interval_s: float | None = None
        if _TIMESPAN_RE.match(self.expression):
            self._interval_s = parse_timespan(self.expression)
            if self._interval_s <= 0:
                raise LocalHostError(f"timer schedule {expression!r}: the interval must be positive")
            return
        fields = self.expression.split()
        if len(fields) not in (5, 6) or not croniter.is_valid(
            self.expression, second_at_beginning=len(fields) == 6
        ):
            raise LocalHostError(
                f"timer schedule {expression!r} is not an NCRONTAB expression "
                "({second} {minute} {hour} {day} {month} {day-of-week}, e.g. '*/10 * * * * *')"
            )
        self._six = len(fields) == 6

    def next_after(self, t: float) -> float:
        """The first occurrence strictly after epoch second ``t``."""
        if self._interval_s is not None:
            return t + self._interval_s
        return float(croniter(self.expression, t, second_at_beginning=self._six).get_next(float))

    def period_s(self, t: float = 0.0) -> float:
        """Seconds between the two occurrences that follow ``t`` (the interval a poller gets)."""
        first = self.next_after(t)
        return self.next_after(first) - first

    def __repr__(self) -> str:
        return f"Schedule({self.expression!r})"


# --- HTTP routes -----------------------------------------------------------------------------

_CONSTRAINTS = {
    "int": r"-?\d+",
    "long": r"-?\d+",
    "alpha": r"[A-Za-z]+",
    "bool": r"(?:true|false)",
    "guid": r"[0-9A-Fa-f]{8}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{12}",
    "double": r"-?\d+(?:\.\d+)?",
    "float": r"-?\d+(?:\.\d+)?",
    "decimal": r"-?\d+(?:\.\d+)?",
}
_PARAM_RE = re.compile(r"\{(\*?)([A-Za-z_][A-Za-z0-9_]*)(?::([a-z]+)(?:\([^)]*\))?)?(\?)?\}")


@dataclass(frozen=True)
class Route:
    """A compiled route template (``trainings/{request_id}/cancel``)."""

    template: str
    pattern: re.Pattern[str]
    params: tuple[str, ...]
    literal_segments: int
    catch_all: bool

    @classmethod
    def compile(cls, template: str) -> Route:
        template = template.strip("/")
        names: list[str] = []
        parts: list[str] = []
        literals = 0
        catch_all = False
        for i, segment in enumerate(template.split("/") if template else []):
            sep = "/" if i else ""
            whole = _PARAM_RE.fullmatch(segment)
            if whole and whole.group(4):  # an optional segment: {name?}
                names.append(whole.group(2))
                parts.append(f"(?:{sep}(?P<p{len(names) - 1}>{_param_regex(whole)}))?")
                continue
            if whole and whole.group(1):  # catch-all: {*rest}
                names.append(whole.group(2))
                catch_all = True
                parts.append(f"(?:{sep}(?P<p{len(names) - 1}>.*))?")
                continue
            out, pos, has_param = [], 0, False
            for m in _PARAM_RE.finditer(segment):
                out.append(re.escape(segment[pos : m.start()]))
                names.append(m.group(2))
                out.append(f"(?P<p{len(names) - 1}>{_param_regex(m)})")
                pos, has_param = m.end(), True
            out.append(re.escape(segment[pos:]))
            literals += 0 if has_param else 1
            parts.append(sep + "".join(out))
        pattern = re.compile("^" + "".join(parts) + "$", re.IGNORECASE)
        return cls(template, pattern, tuple(names), literals, catch_all)

    def match(self, path: str) -> dict[str, str] | None:
        m = self.pattern.match(path.strip("/"))
        if m is None:
            return None
        return {
            name: unquote(m.group(f"p{i}"))
            for i, name in enumerate(self.params)
            if m.group(f"p{i}") is not None
        }

    @property
    def sort_key(self) -> tuple[int, int, int]:
        """Literal segments beat parameters; catch-alls go last (as ASP.NET routing orders them)."""
        return (int(self.catch_all), -self.literal_segments, len(self.params))


def _param_regex(m: re.Match[str]) -> str:
    return _CONSTRAINTS.get(m.group(3) or "", r"[^/]+")
