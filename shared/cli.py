"""``rlq``: submit, follow and manage training requests; host the function app on one machine.

Every command builds the same wiring the function app uses (``shared.composition.build``), so
``rlq submit`` validates exactly as intake does and sends to the same queue: the SQLite broker
under ``--data-dir`` locally, Service Bus when ``RLQ_BROKER=servicebus``.

Exit codes (all commands): 0 done; 1 failed (not found, unreachable, a run that did not
complete); 2 bad input (the field is named, nothing was sent); 3 the run was canceled
(``watch``/``demo``); 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import secrets
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, Self

import typer
from pydantic import SecretStr, ValidationError
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from shared.errors import InvalidRequest, NotFound, PermanentError, RlqError, TransientError
from shared.models import FINAL, TERMINAL, RunRecord, RunState
from shared.settings import Settings

if TYPE_CHECKING:
    from shared.composition import Wiring
    from shared.localhost import LocalHost

log = logging.getLogger("rlq.cli")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CANCELED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

DEMO_REQUEST: dict[str, Any] = {
    "experiment": "demo",
    "algorithm": "IMPALA",
    "env": "CartPole-v1",
    "stop": {"episode_reward_mean": 150, "time_total_s": 300},
}

app = typer.Typer(
    name="rlq",
    help="Queue-driven RL training: submit requests, follow runs, host the function app locally.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


# --- state shared by the commands ------------------------------------------------------------


@dataclass
class State:
    data_dir: Path | None = None
    debug: bool = False
    overrides: dict[str, Any] = field(default_factory=dict)
    _settings: Settings | None = None
    _wiring: Wiring | None = None

    def settings(self) -> Settings:
        if self._settings is None:
            values = dict(self.overrides)
            if self.data_dir is not None:
                values["data_dir"] = self.data_dir
            self._settings = Settings(**values)
        return self._settings

    def link_to_port(self, port: int) -> None:
        """Links in messages point at this host's API unless RLQ_PUBLIC_BASE_URL says otherwise."""
        if "public_base_url" not in self.settings().model_fields_set:
            self.overrides["public_base_url"] = f"http://127.0.0.1:{port}"
            self._settings = None

    def wiring(self) -> Wiring:
        if self._wiring is None:
            from shared.composition import build

            self._wiring = build(self.settings())
        return self._wiring


def _state(ctx: typer.Context) -> State:
    obj = ctx.find_root().obj
    if not isinstance(obj, State):
        obj = ctx.find_root().obj = State()
    return obj


def _console() -> Console:
    # Wide enough for tables in CI logs (rich would use 80 columns on a pipe).
    return Console(highlight=False, width=None if sys.stdout.isatty() else 120)


def _err_console() -> Console:
    return Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 120)


def _fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    _err_console().print(Text(f"error: {message}", style="bold red"))
    raise typer.Exit(code)


@contextlib.contextmanager
def _errors(state: State) -> Iterator[None]:
    """Turn the error tree into one readable line and an exit code (``--debug``: the traceback)."""
    try:
        yield
    except typer.Exit:
        raise
    except InvalidRequest as err:
        if state.debug:
            raise
        _print_field_errors(err.errors)
        raise typer.Exit(EXIT_USAGE) from None
    except PermanentError as err:
        if state.debug:
            raise
        _fail(f"{err.reason}: {err.description}", EXIT_USAGE)
    except NotFound as err:
        if state.debug:
            raise
        _fail(str(err), EXIT_FAILED)
    except TransientError as err:
        if state.debug:
            raise
        _fail(f"{err} (temporary: try again)", EXIT_FAILED)
    except ValidationError as err:  # settings from the environment
        if state.debug:
            raise
        problems = "; ".join(
            f"RLQ_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            for e in err.errors(include_url=False)
        )
        _fail(f"invalid settings: {problems}", EXIT_USAGE)
    except KeyboardInterrupt:
        _err_console().print("interrupted")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except (RlqError, ValueError, OSError) as err:
        if state.debug:
            raise
        _fail(f"{type(err).__name__}: {err}" if isinstance(err, OSError) else str(err), EXIT_FAILED)


def _print_field_errors(errors: list[dict[str, str]]) -> None:
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
    _err_console().print(table)


@app.callback()
def _main(
    ctx: typer.Context,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir", help="Local state (SQLite queue and store, run outputs); overrides RLQ_DATA_DIR."
        ),
    ] = None,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks instead of one-line errors.")
    ] = False,
) -> None:
    state = _state(ctx)
    state.data_dir = data_dir
    state.debug = debug


# --- submit ----------------------------------------------------------------------------------


def _json_option(text: str | None, field_name: str) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as err:
        raise InvalidRequest([{"field": field_name, "message": f"not valid JSON: {err}"}]) from None
    if not isinstance(value, dict):
        raise InvalidRequest(
            [{"field": field_name, "message": "expected a JSON object, e.g. '{\"lr\": 0.001}'"}]
        )
    return value


def build_request(
    *,
    file: Path | None = None,
    algorithm: str | None = None,
    env: str | None = None,
    config: str | None = None,
    stop: str | None = None,
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
) -> dict[str, Any]:
    """The request body from ``--file`` and the flags (a flag wins over the file's value)."""
    body: dict[str, Any] = {}
    if file is not None:
        try:
            loaded = json.loads(Path(file).read_text(encoding="utf-8"))
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
    }
    body.update({k: v for k, v in simple.items() if v is not None})
    for key, text in (("config", config), ("stop", stop)):
        parsed = _json_option(text, key)
        if parsed is not None:
            base = body.get(key) if isinstance(body.get(key), dict) else {}
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


@app.command()
def submit(
    ctx: typer.Context,
    algorithm: Annotated[
        str | None, typer.Option("--run", "--algorithm", help="IMPALA, APPO or PPO.")
    ] = None,
    env: Annotated[
        str | None, typer.Option("--env", help="e.g. PongNoFrameskip-v4, ALE/Pong-v5, CartPole-v1.")
    ] = None,
    config: Annotated[
        str | None, typer.Option("--config", help="RLlib overrides as JSON, e.g. '{\"num_workers\": 13}'.")
    ] = None,
    stop: Annotated[
        str | None,
        typer.Option("--stop", help="Stop criteria as JSON, e.g. '{\"episode_reward_mean\": 18}'."),
    ] = None,
    experiment: Annotated[str | None, typer.Option("--experiment", help="Experiment name.")] = None,
    request_id: Annotated[
        str | None, typer.Option("--request-id", help="Idempotency key (default: a new id).")
    ] = None,
    backend: Annotated[
        str | None, typer.Option("--backend", help="ray, azureml or twin (default: the deployment's).")
    ] = None,
    head_vm_size: Annotated[
        str | None, typer.Option("--head-vm-size", help="Head cluster VM size, e.g. STANDARD_NC6.")
    ] = None,
    worker_vm_size: Annotated[
        str | None, typer.Option("--worker-vm-size", help="Worker VM size, e.g. STANDARD_D2_V2.")
    ] = None,
    worker_nodes: Annotated[int | None, typer.Option("--worker-nodes", help="Worker node count.")] = None,
    max_run_duration_s: Annotated[
        int | None, typer.Option("--max-run-duration-s", help="Hard time limit of the run.")
    ] = None,
    restore_from: Annotated[
        str | None, typer.Option("--restore-from", help="Checkpoint URI to warm-start from.")
    ] = None,
    webhook: Annotated[
        list[str] | None, typer.Option("--webhook", help="Webhook URL to notify (repeatable).")
    ] = None,
    teams: Annotated[
        list[str] | None, typer.Option("--teams", help="Teams workflow URL to notify (repeatable).")
    ] = None,
    reply_to: Annotated[
        str | None, typer.Option("--reply-to", help="Queue to send the completion message to.")
    ] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="name=value tag (repeatable).")] = None,
    evaluate_episodes: Annotated[
        int | None, typer.Option("--evaluate-episodes", help="Evaluate the final policy over N episodes.")
    ] = None,
    gif: Annotated[bool, typer.Option("--gif", help="Record an evaluation replay GIF.")] = False,
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help="Request JSON file; flags override its fields.")
    ] = None,
) -> None:
    """Validate a training request and put it on the intake queue; prints the request id."""
    state = _state(ctx)
    with _errors(state):
        body = build_request(
            file=file,
            algorithm=algorithm,
            env=env,
            config=config,
            stop=stop,
            experiment=experiment,
            request_id=request_id,
            backend=backend,
            head_vm_size=head_vm_size,
            worker_vm_size=worker_vm_size,
            worker_nodes=worker_nodes,
            max_run_duration_s=max_run_duration_s,
            restore_from=restore_from,
            webhooks=webhook,
            teams=teams,
            reply_to=reply_to,
            tags=tag,
            evaluate_episodes=evaluate_episodes,
            gif=gif,
        )
        from shared.models import parse_request

        # Field errors first, before any wiring is built: a typo never needs a queue to be reported.
        parse_request(body, default_id=body.get("request_id") or "cli-check")
        w = state.wiring()
        rid = w.service.enqueue(body)
        _console().print(rid, soft_wrap=True)
        _err_console().print(f"queued on {w.settings.queue_name}; follow it with: rlq watch {rid}")


# --- status / list ---------------------------------------------------------------------------


def _fmt_num(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def _fmt_time(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _state_style(state: RunState) -> str:
    return {
        RunState.completed: "green",
        RunState.notified: "green",
        RunState.failed: "red",
        RunState.timed_out: "red",
        RunState.rejected: "red",
        RunState.canceled: "yellow",
    }.get(state, "cyan")


def render_record(record: RunRecord) -> Panel:
    """The ``rlq status`` panel."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    status = f" ({record.status})" if record.status else ""
    grid.add_row("state", Text(f"{record.state.value}{status}", style=_state_style(record.state)))
    req = record.request
    if req is not None:
        grid.add_row("request", f"{req.algorithm} on {req.env} · experiment {req.experiment}")
        stop = ", ".join(f"{k}={v}" for k, v in req.stop.model_dump(exclude_none=True).items())
        grid.add_row("stop", stop or "-")
    grid.add_row("backend", record.backend or "-")
    grid.add_row("run id", record.run_id or "-")
    if record.portal_url:
        grid.add_row("portal", record.portal_url)
    grid.add_row("created", _fmt_time(record.created_at))
    if record.submitted_at:
        grid.add_row("submitted", _fmt_time(record.submitted_at))
    if record.finished_at:
        grid.add_row("finished", _fmt_time(record.finished_at))
    p = record.progress
    if p is not None:
        grid.add_row("progress", f"iteration {p.iteration} · {p.timesteps:,} steps · {p.time_total_s:,.0f} s")
        grid.add_row(
            "reward",
            f"mean {_fmt_num(p.episode_reward_mean, 2)} (min {_fmt_num(p.episode_reward_min, 1)}, "
            f"max {_fmt_num(p.episode_reward_max, 1)})",
        )
        if p.env_steps_per_s is not None:
            grid.add_row("steps/s", _fmt_num(p.env_steps_per_s, 0))
    if record.stop_reason:
        grid.add_row("stop reason", record.stop_reason)
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


@app.command()
def status(
    ctx: typer.Context,
    request_id: Annotated[str, typer.Argument(help="The request id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the run record as JSON.")] = False,
) -> None:
    """Show one run: state, progress, reward, error, completion message, notification failures."""
    state = _state(ctx)
    with _errors(state):
        record = state.wiring().service.get(request_id)
        if as_json:
            _console().print_json(record.model_dump_json())
        else:
            _console().print(render_record(record))


def _parse_states(values: list[str] | None) -> list[RunState] | None:
    if not values:
        return None
    allowed = [s.value for s in RunState]
    out = []
    for v in values:
        if v not in allowed:
            raise InvalidRequest(
                [{"field": "--state", "message": f"{v!r} is not allowed; allowed: {', '.join(allowed)}"}]
            )
        out.append(RunState(v))
    return out


@app.command("list")
def list_runs(
    ctx: typer.Context,
    state_filter: Annotated[
        list[str] | None, typer.Option("--state", help="Only runs in this state (repeatable).")
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", min=1, max=1000, help="At most this many, newest first.")
    ] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """List runs, newest first."""
    state = _state(ctx)
    with _errors(state):
        states = _parse_states(state_filter)
        records = state.wiring().service.list(states=states, limit=limit)
        console = _console()
        if as_json:
            for r in records:
                console.print(r.model_dump_json(exclude={"curve"}), soft_wrap=True)
            return
        if not records:
            console.print("no runs")
            return
        table = Table(expand=False)
        for col in ("request id", "state", "algorithm", "env", "iteration", "reward", "created"):
            table.add_column(col, no_wrap=col in ("state", "iteration"), overflow="fold")
        for r in records:
            p = r.progress
            table.add_row(
                r.request_id,
                Text(r.state.value, style=_state_style(r.state)),
                r.request.algorithm if r.request else "-",
                r.request.env if r.request else "-",
                str(p.iteration) if p else "-",
                _fmt_num(
                    r.completion.final_reward
                    if r.completion and r.completion.final_reward is not None
                    else (p.episode_reward_mean if p else None),
                    2,
                ),
                _fmt_time(r.created_at),
            )
        console.print(table)


# --- watch -----------------------------------------------------------------------------------


def _sparkline(values: list[float]) -> str:
    try:
        from shared.plots import sparkline
    except ImportError:  # the plots module is optional for the CLI
        blocks = "▁▂▃▄▅▆▇█"
        if not values:
            return ""
        lo, hi = min(values), max(values)
        span = (hi - lo) or 1.0
        return "".join(blocks[round((v - lo) / span * 7)] for v in values[-40:])
    return sparkline(values)


def _rewards(record: RunRecord, settings: Settings) -> list[float]:
    try:
        from shared.artifacts import metrics_points

        points = metrics_points(record, settings)
    except (ImportError, OSError, ValueError):
        points = []
    rewards = [p.get("episode_reward_mean") for p in points]
    return [float(r) for r in rewards if isinstance(r, (int, float))]


def render_progress(record: RunRecord, rewards: list[float], *, started: float) -> Group:
    """The live view of ``watch`` and ``demo``."""
    p = record.progress
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    grid.add_row("request", record.request_id)
    grid.add_row("state", Text(record.state.value, style=_state_style(record.state)))
    grid.add_row("iteration", str(p.iteration) if p else "-")
    grid.add_row("reward", _fmt_num(p.episode_reward_mean, 2) if p else "-")
    grid.add_row("steps/s", _fmt_num(p.env_steps_per_s, 0) if p and p.env_steps_per_s is not None else "-")
    grid.add_row(
        "elapsed",
        f"{p.time_total_s:,.0f} s training · {time.monotonic() - started:,.0f} s watching"
        if p
        else f"{time.monotonic() - started:,.0f} s watching",
    )
    grid.add_row("rewards", _sparkline(rewards) or "-")
    return Group(Panel(grid, title="rlq watch", title_align="left", expand=False))


def exit_code_for(record: RunRecord) -> int:
    """0 completed, 3 canceled, 1 anything else that ended (failed, timed out, rejected)."""
    status_ = record.status
    if status_ == "Completed":
        return EXIT_OK
    if status_ == "Canceled":
        return EXIT_CANCELED
    return EXIT_FAILED


def _done(record: RunRecord) -> bool:
    return record.state in TERMINAL or record.state in (RunState.notified, RunState.rejected)


def follow(
    get: Callable[[], RunRecord],
    settings: Settings,
    *,
    console: Console,
    interval_s: float = 2.0,
    timeout_s: float | None = None,
    until: Callable[[RunRecord], bool] = _done,
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
            f"{_fmt_num(p.episode_reward_mean, 2)} · steps/s {_fmt_num(p.env_steps_per_s, 0)} · "
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


@app.command()
def watch(
    ctx: typer.Context,
    request_id: Annotated[str, typer.Argument(help="The request id.")],
    interval_s: Annotated[float, typer.Option("--interval-s", min=0.1, help="Seconds between reads.")] = 2.0,
    timeout_s: Annotated[
        float | None, typer.Option("--timeout-s", help="Give up after this long (exit 1).")
    ] = None,
) -> None:
    """Follow a run until it ends. Exit 0 completed, 1 failed / timed out / rejected, 3 canceled,
    130 on Ctrl-C (the run goes on; only the watching stops)."""
    state = _state(ctx)
    with _errors(state):
        w = state.wiring()
        console = _console()
        record = follow(
            lambda: w.service.get(request_id),
            w.settings,
            console=console,
            interval_s=interval_s,
            timeout_s=timeout_s,
        )
        console.print(render_record(record))
        raise typer.Exit(exit_code_for(record))


# --- cancel ----------------------------------------------------------------------------------


@app.command()
def cancel(
    ctx: typer.Context,
    request_id: Annotated[str, typer.Argument(help="The request id.")],
) -> None:
    """Ask a run to stop; the poller records it as canceled once the job has stopped."""
    state = _state(ctx)
    with _errors(state):
        record = state.wiring().service.cancel(request_id)
        console = _console()
        if record.state in FINAL:
            console.print(f"{request_id} already ended: {record.state.value}")
        else:
            console.print(f"cancel requested for {request_id} (state {record.state.value})")


# --- dead letters ----------------------------------------------------------------------------


def _dead_letter_source(w: Wiring) -> Any:
    source = w.broker if w.broker is not None else w.sender
    if not hasattr(source, "dead_letters"):
        raise PermanentError(
            "dead-letter inspection needs the local SQLite broker (RLQ_BROKER=sqlite); for Service Bus "
            "use the Azure portal's Service Bus Explorer",
            reason="Unsupported",
        )
    return source


def _body_text(body: bytes) -> str:
    try:
        return json.dumps(json.loads(body), indent=2, ensure_ascii=False)
    except ValueError:
        return body.decode("utf-8", "replace")


@app.command("dead-letters")
def dead_letters(
    ctx: typer.Context,
    queue: Annotated[
        str | None, typer.Option("--queue", help="Queue or topic (default: the intake queue).")
    ] = None,
    subscription: Annotated[
        str | None, typer.Option("--subscription", help="Topic subscription, e.g. notifier.")
    ] = None,
    show: Annotated[
        int | None, typer.Option("--show", help="Print one dead letter in full (sequence number).")
    ] = None,
    resubmit: Annotated[
        int | None, typer.Option("--resubmit", help="Send one dead letter back (sequence number).")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 100,
) -> None:
    """List dead-lettered messages with their reason; show one; resubmit one."""
    state = _state(ctx)
    with _errors(state):
        w = state.wiring()
        source = _dead_letter_source(w)
        entity = queue or w.settings.queue_name
        console = _console()
        if resubmit is not None:
            try:
                new_id = source.resubmit_dead_letter(entity, resubmit, subscription=subscription)
            except KeyError:
                raise NotFound(f"no dead letter with sequence number {resubmit} on {entity}") from None
            console.print(f"resubmitted {resubmit} to {entity} as message {new_id}")
            return
        letters = source.dead_letters(
            entity, subscription=subscription, limit=1000 if show is not None else limit
        )
        if show is not None:
            match = [d for d in letters if d.sequence_number == show]
            if not match:
                raise NotFound(f"no dead letter with sequence number {show} on {entity}")
            d = match[0]
            grid = Table.grid(padding=(0, 2))
            grid.add_column(style="bold")
            grid.add_column(overflow="fold")
            for k, v in (
                ("sequence", str(d.sequence_number)),
                ("message id", d.message_id),
                ("reason", d.reason),
                ("description", d.description),
                ("deliveries", str(d.delivery_count)),
                ("dead-lettered", _fmt_time(d.dead_lettered_at)),
            ):
                grid.add_row(k, v)
            console.print(
                Panel(
                    Group(grid, Text("body", style="bold"), Text(_body_text(d.body))),
                    title=f"dead letter on {entity}",
                    title_align="left",
                    expand=False,
                )
            )
            return
        if not letters:
            console.print(f"no dead letters on {entity}")
            return
        table = Table(title=f"dead letters on {entity}", title_justify="left")
        for col in ("seq", "message id", "reason", "description", "deliveries", "when"):
            table.add_column(col, overflow="fold", no_wrap=col in ("seq", "deliveries"))
        for d in letters:
            table.add_row(
                str(d.sequence_number),
                d.message_id,
                d.reason,
                d.description,
                str(d.delivery_count),
                _fmt_time(d.dead_lettered_at),
            )
        console.print(table)


# --- serve / demo ----------------------------------------------------------------------------


def load_function_app() -> Any:
    """``function_app.app``: importable from the repository root whatever the working directory."""
    try:
        import function_app
    except ModuleNotFoundError as err:
        if err.name != "function_app":
            raise
        root = Path(__file__).resolve().parents[1]
        if not (root / "function_app.py").is_file():
            raise PermanentError(
                f"function_app.py not found beside {root / 'shared'}", reason="NoApp"
            ) from None
        sys.path.insert(0, str(root))
        import function_app
    return function_app.app


def _configure_logging(level: int) -> None:
    root = logging.getLogger()
    if not any(getattr(h, "_rlq", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        )
        handler._rlq = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(logging.WARNING)
    for name in ("rlq", "shared", "functions"):
        logging.getLogger(name).setLevel(level)
    # Ray's job client narrates each upload at INFO on handlers of its own; keep it out of quiet output.
    for name in ("ray.dashboard.modules.dashboard_sdk", "ray._private.runtime_env.packaging"):
        logging.getLogger(name).setLevel(logging.INFO if level <= logging.INFO else logging.WARNING)


@contextlib.contextmanager
def hosted(
    w: Wiring,
    *,
    port: int,
    ray: bool = True,
    keep_ray: bool = False,
    on_ray: Callable[[str], None] | None = None,
) -> Iterator[LocalHost]:
    """The function app on a :class:`LocalHost` (background threads), with the local Ray head
    when the backend is Ray without an address; everything this started is stopped on exit."""
    from shared import composition
    from shared.localhost import LocalHost

    if w.broker is None:
        raise PermanentError(
            "the local host runs on the SQLite broker (RLQ_BROKER=sqlite); with Service Bus "
            "run the app with Azure Functions Core Tools (func start)",
            reason="Unsupported",
        )
    s = w.settings
    started_ray = False
    if ray and s.backend == "ray" and s.ray_address is None:
        from shared.adapters import ray_local

        address = ray_local.ensure_local_head(
            data_dir=s.data_dir,
            dashboard_port=s.ray_dashboard_port,
            num_cpus=s.ray_num_cpus,
            token=s.ray_auth_token,
        )
        started_ray = True
        if on_ray is not None:
            on_ray(address)
    composition.install(w)
    host = LocalHost(load_function_app(), broker=w.broker, settings=s, http_port=port)
    try:
        host.start()
        yield host
    finally:
        host.stop()
        composition.install(None)
        if started_ray and not keep_ray:
            from shared.adapters import ray_local

            ray_local.stop_local_head()  # only heads this process started


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def choose_port(port: int, *, fallback: bool) -> int:
    """``port`` when free; 0 or (with ``fallback``) a taken port: a free one picked now, so links in
    completion messages can name it before the server starts."""
    if port and _port_free(port):
        return port
    if port and not fallback:
        raise PermanentError(
            f"port {port} on 127.0.0.1 is in use; pick another with --port (0: any free port)",
            reason="PortInUse",
        )
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _functions_table(host: LocalHost) -> Table:
    table = Table(title="functions", title_justify="left", expand=False)
    table.add_column("name", style="bold")
    table.add_column("trigger")
    table.add_column("binding", overflow="fold")
    for f in host.functions:
        detail = f.detail
        if f.trigger == "httpTrigger":
            method, _, route = detail.partition(" ")
            detail = f"{method} {host.base_url}/{host.config.route_prefix}{route}"
        table.add_row(f.name, f.trigger, detail)
    return table


@app.command()
def serve(
    ctx: typer.Context,
    port: Annotated[int, typer.Option("--port", help="HTTP port on 127.0.0.1 (0: any free port).")] = 7071,
    keep_ray: Annotated[
        bool, typer.Option("--keep-ray", help="Leave the local Ray head running on exit.")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Run the function app locally (queue, timer and HTTP triggers) until Ctrl-C or SIGTERM."""
    import signal

    state = _state(ctx)
    _configure_logging(logging.DEBUG if verbose else logging.INFO)
    with _errors(state):
        port = choose_port(port, fallback=False)
        state.link_to_port(port)
        w = state.wiring()
        console = _console()
        stop = threading.Event()
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            with hosted(
                w, port=port, keep_ray=keep_ray, on_ray=lambda a: console.print(f"Ray head: {a}")
            ) as host:
                console.print(_functions_table(host))
                console.print(f"serving {w.settings.data_dir} · API {host.base_url}/api · Ctrl-C stops")
                stop.wait()
                console.print("stopping: finishing in-flight work")
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


class _WebhookReceiver:
    """A loopback endpoint for the demo: verifies each delivery's signature and keeps the events."""

    def __init__(self, secrets_: list[str]) -> None:
        self.secrets = secrets_
        self.events: list[dict[str, Any]] = []
        self.failures: list[str] = []
        self.received = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    event = receiver.verify(body, dict(self.headers.items()))
                except Exception as err:  # noqa: BLE001 - any failure is a refused delivery
                    receiver.failures.append(str(err))
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                receiver.events.append(event)
                receiver.received.set()
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.2,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/rlq-demo"

    def verify(self, body: bytes, headers: dict[str, str]) -> dict[str, Any]:
        try:
            from shared.webhook_verify import verify
        except ImportError:
            return json.loads(body)
        return verify(body, headers, self.secrets)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def _new_webhook_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


@app.command()
def demo(
    ctx: typer.Context,
    port: Annotated[
        int, typer.Option("--port", help="HTTP port of the local API (0: any free port).")
    ] = 7071,
    backend: Annotated[
        str | None, typer.Option("--backend", help="ray (default) or twin (no training: a smoke run).")
    ] = None,
    timeout_s: Annotated[float, typer.Option("--timeout-s", help="Give up after this long.")] = 900.0,
    interval_s: Annotated[
        float, typer.Option("--interval-s", min=0.1, help="Seconds between progress reads.")
    ] = 2.0,
    keep_ray: Annotated[bool, typer.Option("--keep-ray", help="Leave the local Ray head running.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show the host's log lines.")] = False,
) -> None:
    """End to end on this machine: host the app, train IMPALA on CartPole to a mean reward of 150,
    publish the completion message, deliver a signed webhook, write the reward curve."""
    state = _state(ctx)
    _configure_logging(logging.INFO if verbose else logging.WARNING)
    with _errors(state):
        if backend is not None:
            state.overrides["backend"] = backend
        wanted, port = port, choose_port(port, fallback=True)
        if wanted and port != wanted:
            _err_console().print(f"port {wanted} is in use; the demo's API is on port {port}")
        state.link_to_port(port)
        settings = state.settings()
        secret_list = [s.get_secret_value() for s in settings.webhook_secrets]
        if not secret_list:  # sign the demo's webhook with a fresh secret of its own
            secret_list = [_new_webhook_secret()]
            state.overrides["webhook_secrets"] = [SecretStr(secret_list[0])]
            state._settings = None
            settings = state.settings()
        console = _console()
        with _WebhookReceiver(secret_list) as receiver:
            w = state.wiring()
            with hosted(
                w,
                port=port,
                keep_ray=keep_ray,
                on_ray=lambda a: console.print(f"local Ray head ready at {a}"),
            ) as host:
                console.print(f"function app hosted at {host.base_url}/api (queue, timer and HTTP triggers)")
                body = {
                    **DEMO_REQUEST,
                    "request_id": f"demo-{uuid.uuid4().hex[:10]}",
                    "notify": {"webhooks": [receiver.url]},
                }
                rid = w.service.enqueue(body)
                console.print(f"submitted {rid}: IMPALA on CartPole-v1, stop at mean reward 150 or 300 s")
                record = follow(
                    lambda: w.service.get(rid),
                    settings,
                    console=console,
                    interval_s=interval_s,
                    timeout_s=timeout_s,
                    until=lambda r: (
                        r.state in (RunState.notified, RunState.rejected)
                        or (r.state in TERMINAL and r.completion is None)
                    ),
                )
                notified = record.state is RunState.notified and record.published_at is not None
                if notified:
                    receiver.received.wait(max(30.0, 3 * settings.webhook_timeout_s))
                    for _ in range(int(10 / 0.2)):  # the notifier records deliveries just after sending
                        record = w.service.get(rid)
                        if record.deliveries:
                            break
                        time.sleep(0.2)
        if record.completion is not None:
            console.print(
                Panel(
                    record.completion.model_dump_json(indent=2, exclude_none=True),
                    title="completion message",
                    title_align="left",
                    expand=False,
                )
            )
        if receiver.events:
            console.print("webhook delivered and verified")
        elif notified:
            why = receiver.failures[-1] if receiver.failures else "no delivery arrived"
            console.print(Text(f"webhook not verified: {why}", style="yellow"))
        png = _save_curve(record, settings)
        if png is not None:
            console.print(f"reward curve: {png}")
        if record.error:
            console.print(Text(f"error: {record.error}", style="red"))
        ok = notified and record.status == "Completed"
        console.print(
            Text(
                f"demo {'passed' if ok else 'did not complete'}: {record.state.value}"
                f"{' (' + record.status + ')' if record.status else ''}",
                style="green" if ok else "red",
            )
        )
        raise typer.Exit(EXIT_OK if ok else exit_code_for(record) or EXIT_FAILED)


# --- plot ------------------------------------------------------------------------------------


def _save_curve(record: RunRecord, settings: Settings, out: Path | None = None) -> Path | None:
    from shared.artifacts import reward_curve_for

    png = reward_curve_for(record, settings)
    if png is None:
        return None
    path = out or Path(settings.runs_dir) / record.request_id / "reward.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
    return path


@app.command()
def plot(
    ctx: typer.Context,
    request_id: Annotated[str, typer.Argument(help="The request id.")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="PNG path (default: <runs_dir>/<id>/reward.png).")
    ] = None,
) -> None:
    """Write the run's reward curve as a PNG and print its path."""
    state = _state(ctx)
    with _errors(state):
        w = state.wiring()
        record = w.service.get(request_id)
        path = _save_curve(record, w.settings, out)
        if path is None:
            raise NotFound(f"{request_id} has no training iterations recorded yet")
        _console().print(str(path), soft_wrap=True)


def main() -> None:
    """Console-script entry point (``rlq``)."""
    app()


if __name__ == "__main__":
    main()
