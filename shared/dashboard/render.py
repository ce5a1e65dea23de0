"""Templates of the dashboard: one Jinja environment, autoescaping every value it is given.

The static files (CSS, JS) are read from the package once, so the pages work offline, from any
working directory, with nothing built or fetched.
"""

from __future__ import annotations

import math
from datetime import datetime
from functools import lru_cache
from importlib import resources
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup, escape

from shared.verdicts import evaluation_text, verdict

STATIC_TYPES = {".css": "text/css", ".js": "text/javascript"}


def _duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "—"
    whole = int(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def _reward(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value:.4g}" if abs(value) < 1000 else f"{value:,.0f}"


def _count(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


def _when(value: datetime | None) -> str:
    return "—" if value is None else value.strftime("%Y-%m-%d %H:%M:%S UTC")


def _percent(fraction: float | None) -> str:
    return "—" if fraction is None else f"{fraction * 100:.0f} %"


def _badge(state: str) -> Markup:
    return Markup('<span class="badge state-{0}">{0}</span>').format(escape(state))


@lru_cache(maxsize=1)
def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("shared.dashboard", "templates"),
        autoescape=True,  # every template, whatever its file name
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["badge"] = _badge
    env.filters.update(duration=_duration, reward=_reward, count=_count, when=_when, percent=_percent)
    env.filters.update(evaluation=evaluation_text, verdict=verdict)  # a model's champion decision
    return env


def render(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)


def render_block(template: str, block: str, **context: Any) -> str:
    """One ``{% block %}`` of a template on its own: the regions a live page swaps in."""
    env = environment()
    tpl = env.get_template(template)
    ctx = tpl.new_context(context)
    return "".join(tpl.blocks[block](ctx))


@lru_cache(maxsize=1)
def static_files() -> dict[str, tuple[bytes, str]]:
    """``name -> (bytes, content type)`` of every vendored static file."""
    out: dict[str, tuple[bytes, str]] = {}
    for entry in resources.files("shared.dashboard").joinpath("static").iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in STATIC_TYPES:
            out[entry.name] = (entry.read_bytes(), STATIC_TYPES[suffix])
    return out
