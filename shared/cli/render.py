"""How ``rlq`` shows things: consoles, the run panel, the live progress view (``follow``), the
field-error table and the reward curve PNG."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from shared.contracts.run import FINAL, TERMINAL, RunRecord, RunState
from shared.errors import TransientError
from shared.settings import Settings
from shared.verdicts import verdict


def out_console() -> Console:
    # Wide enough for tables in CI logs (rich would use 80 columns on a pipe).
    return Console(highlight=False, width=None if sys.stdout.isatty() else 120)


def err_console() -> Console:
    return Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 120)


def fail(message: str, code: int) -> NoReturn:
    err_console().print(Text(f"error: {message}", style="bold red"))
    raise typer.Exit(code)


def print_field_errors(errors: list[dict[str, str]]) -> None:
    table = Table(
        title="invalid training request (nothing was sent)",
        title_justify="left",
        show_lines=False,
        expand=False,
    )
    table.add_column("field", style="bold")
    table.add_column("problem", overflow="fold")
    for e in errors:
        table.add_row(e.get("field", "(body)"), e.get("message", ""))
    err_console().print(table)


def fmt_num(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def fmt_time(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def state_style(state: RunState) -> str:
    return {
        RunState.completed: "green",
        RunState.notified: "green",
        RunState.failed: "red",
        RunState.timed_out: "red",
        RunState.rejected: "red",
        RunState.canceled: "yellow",
    }.get(state, "cyan")


def render_record(record: RunRecord) -> Panel:  # noqa: C901 - one row per optional field of the record, in display order
    """The ``rlq status`` panel."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    status = f" ({record.status})" if record.status else ""
    grid.add_row("state", Text(f"{record.state.value}{status}", style=state_style(record.state)))
    if record.waiting and record.state is RunState.received:
        grid.add_row("waiting", record.waiting.removeprefix("waiting "))
    req = record.request
    if req is not None:
        grid.add_row("request", f"{req.algorithm} on {req.env} · experiment {req.experiment}")
        grid.add_row("team", f"{req.team} · priority {req.priority}")
        stop = ", ".join(f"{k}={v}" for k, v in req.stop.model_dump(exclude_none=True).items())
        grid.add_row("stop", stop or "-")
    grid.add_row("backend", record.backend or "-")
    grid.add_row("run id", record.run_id or "-")
    if record.portal_url:
        grid.add_row("portal", record.portal_url)
    grid.add_row("created", fmt_time(record.created_at))
    if record.submitted_at:
        grid.add_row("submitted", fmt_time(record.submitted_at))
    if record.finished_at:
        grid.add_row("finished", fmt_time(record.finished_at))
    p = record.progress
    if p is not None:
        grid.add_row("progress", f"iteration {p.iteration} · {p.timesteps:,} steps · {p.time_total_s:,.0f} s")
        grid.add_row(
            "reward",
            f"mean {fmt_num(p.episode_reward_mean, 2)} (min {fmt_num(p.episode_reward_min, 1)}, "
            f"max {fmt_num(p.episode_reward_max, 1)})",
        )
        if p.env_steps_per_s is not None:
            grid.add_row("steps/s", fmt_num(p.env_steps_per_s, 0))
    if record.stop_reason:
        grid.add_row("stop reason", record.stop_reason)
    if record.completion is not None and record.completion.model is not None:
        grid.add_row("model", verdict(record.completion.model))
    if record.error:
        grid.add_row("error", Text(record.error, style="red"))
    if record.cancel_requested and record.state not in FINAL:
        grid.add_row("cancel", "requested")
    parts: list[Any] = [grid]
    if record.completion is not None:
        parts.append(Text("completion message", style="bold"))
        parts.append(Text(record.completion.model_dump_json(indent=2, exclude_none=True)))
    failed = [d for d in record.deliveries if not d.ok]
    if record.deliveries:
        deliveries = Table(title="notifications", title_justify="left", expand=False)
        for col in ("target", "ok", "attempts", "status", "error"):
            deliveries.add_column(col, overflow="fold")
        for d in record.deliveries:
            deliveries.add_row(
                d.target,
                "yes" if d.ok else Text("no", style="red"),
                str(d.attempts),
                str(d.status_code or "-"),
                d.error or "",
            )
        parts.append(deliveries)
        if failed:
            parts.append(Text(f"{len(failed)} notification(s) failed", style="red"))
    return Panel(Group(*parts), title=f"training {record.request_id}", title_align="left", expand=False)


def _sparkline(values: list[float]) -> str:
    from shared.plots import sparkline  # matplotlib loads only when a command draws

    return sparkline(values)


def _rewards(record: RunRecord, settings: Settings) -> list[float]:
    from shared.artifacts import metrics_points
    from shared.curves import rewards

    try:
        points = metrics_points(record, settings)
    except (OSError, ValueError):  # a metrics file being written or unreadable: no sparkline yet
        points = []
    return rewards(points)


def render_progress(record: RunRecord, rewards: list[float], *, started: float) -> Group:
    """The live view of ``watch`` and ``demo``."""
    p = record.progress
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    grid.add_row("request", record.request_id)
    grid.add_row("state", Text(record.state.value, style=state_style(record.state)))
    grid.add_row("iteration", str(p.iteration) if p else "-")
    grid.add_row("reward", fmt_num(p.episode_reward_mean, 2) if p else "-")
    grid.add_row("steps/s", fmt_num(p.env_steps_per_s, 0) if p and p.env_steps_per_s is not None else "-")
    grid.add_row(
        "elapsed",
        f"{p.time_total_s:,.0f} s training · {time.monotonic() - started:,.0f} s watching"
        if p
        else f"{time.monotonic() - started:,.0f} s watching",
    )
    grid.add_row("rewards", _sparkline(rewards) or "-")
    return Group(Panel(grid, title="rlq watch", title_align="left", expand=False))


def run_ended(record: RunRecord) -> bool:
    return record.state in TERMINAL or record.state in (RunState.notified, RunState.rejected)


def follow(
    get: Callable[[], RunRecord],
    settings: Settings,
    *,
    console: Console,
    interval_s: float = 2.0,
    timeout_s: float | None = None,
    until: Callable[[RunRecord], bool] = run_ended,
    stop_event: threading.Event | None = None,
) -> RunRecord:
    """Re-read the run every ``interval_s`` and show it until ``until(record)``: a live panel on a
    terminal, one line per change on a pipe (CI logs). Returns the last record read."""
    started = time.monotonic()
    waiter = stop_event or threading.Event()
    record = get()
    last_line = ""

    def line(r: RunRecord) -> str:
        p = r.progress
        if p is None:
            return f"{r.request_id}: {r.state.value}"
        return (
            f"{r.request_id}: {r.state.value} · iteration {p.iteration} · reward "
            f"{fmt_num(p.episode_reward_mean, 2)} · steps/s {fmt_num(p.env_steps_per_s, 0)} · "
            f"{p.time_total_s:,.0f} s"
        )

    def expired() -> bool:
        return timeout_s is not None and time.monotonic() - started > timeout_s

    if console.is_terminal:
        with Live(
            render_progress(record, _rewards(record, settings), started=started),
            console=console,
            auto_refresh=False,
            transient=False,
        ) as live:
            while not until(record) and not expired():
                if waiter.wait(interval_s):
                    break
                record = get()
                live.update(
                    render_progress(record, _rewards(record, settings), started=started), refresh=True
                )
    else:
        while True:
            text = line(record)
            if text != last_line:
                console.print(text, soft_wrap=True)
                last_line = text
            if until(record) or expired() or waiter.wait(interval_s):
                break
            record = get()
        spark = _sparkline(_rewards(record, settings))
        if spark:
            console.print(f"rewards {spark}")
    if not until(record) and expired():
        raise TransientError(f"{record.request_id} is still {record.state.value} after {timeout_s:g} s")
    return record


def save_curve(record: RunRecord, settings: Settings, out: Path | None = None) -> Path | None:
    """Write the run's reward curve PNG (default ``<runs_dir>/<id>/reward.png``); None: no points yet."""
    from shared.artifacts import reward_curve_for

    png = reward_curve_for(record, settings)
    if png is None:
        return None
    path = out or Path(settings.runs_dir) / record.request_id / "reward.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
    return path
