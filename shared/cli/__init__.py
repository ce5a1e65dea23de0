"""``rlq``: submit, follow and manage training requests; host the function app on one machine.

Every command builds the same wiring the function app uses (``shared.composition.build``), so
``rlq submit`` validates exactly as intake does and sends to the same queue: the SQLite broker
under ``--data-dir`` locally, Service Bus when ``RLQ_BROKER=servicebus``.

The package: this module holds the typer app and the commands; ``context`` the global options and
the error-to-exit-code translation; ``render`` the rich rendering and ``follow``; ``request`` the
request body built from flags; ``local`` ``serve`` and ``demo`` (the function app on this machine);
``models`` the ``rlq models`` commands (champions: list, show, promote, rollback).

Exit codes (all commands): 0 done; 1 failed (not found, unreachable, a run that did not
complete); 2 bad input (the field is named, nothing was sent); 3 the run was canceled
(``watch``/``demo``); 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from shared.cli import local, models
from shared.cli.context import errors, exit_code_for, state_of
from shared.cli.render import (
    err_console,
    fmt_num,
    fmt_time,
    follow,
    out_console,
    render_record,
    save_curve,
    state_style,
)
from shared.cli.request import build_request
from shared.contracts.run import FINAL, RunState
from shared.errors import InvalidRequest, NotFound, PermanentError
from shared.ports import DeadLetterInbox

if TYPE_CHECKING:
    from shared.composition import Wiring

app = typer.Typer(
    name="rlq",
    help="Queue-driven RL training: submit requests, follow runs, host the function app locally.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


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
    state = state_of(ctx)
    state.data_dir = data_dir
    state.debug = debug


@app.command()
def submit(
    ctx: typer.Context,
    algorithm: Annotated[
        str | None, typer.Option("--run", "--algorithm", help="IMPALA, APPO or PPO.")
    ] = None,
    env: Annotated[
        str | None,
        typer.Option(
            "--env",
            help="e.g. PongNoFrameskip-v4, CartPole-v1, FrozenLake-v1 or a catalogued acme/Warehouse-v1.",
        ),
    ] = None,
    env_config: Annotated[
        str | None,
        typer.Option(
            "--env-config", help="The environment's keyword arguments as JSON, e.g. '{\"lead_time\": 2}'."
        ),
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
        str | None, typer.Option("--head-vm-size", help="Head cluster VM size, e.g. STANDARD_NC4AS_T4_V3.")
    ] = None,
    worker_vm_size: Annotated[
        str | None, typer.Option("--worker-vm-size", help="Worker VM size, e.g. STANDARD_D2AS_V5.")
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
    team: Annotated[
        str | None, typer.Option("--team", help="The team whose quota the run counts against.")
    ] = None,
    priority: Annotated[
        str | None,
        typer.Option("--priority", help="high, normal or low: its place when the service is full."),
    ] = None,
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help="Request JSON file; flags override its fields.")
    ] = None,
) -> None:
    """Validate a training request and put it on the intake queue; prints the request id."""
    state = state_of(ctx)
    with errors(state):
        body = build_request(
            file=file,
            algorithm=algorithm,
            env=env,
            config=config,
            stop=stop,
            env_config=env_config,
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
            team=team,
            priority=priority,
        )
        from shared.contracts.parsing import parse_request

        # Field errors first, before any wiring is built: a typo never needs a queue to be reported.
        parse_request(body, default_id=body.get("request_id") or "cli-check")
        w = state.wiring()
        rid = w.service.enqueue(body)
        out_console().print(rid, soft_wrap=True)
        err_console().print(f"queued on {w.settings.queue_name}; follow it with: rlq watch {rid}")


@app.command()
def retrain(
    ctx: typer.Context,
    request_id: Annotated[str, typer.Argument(help="The completed run to warm-start from.")],
    config: Annotated[
        str | None, typer.Option("--config", help="RLlib overrides as JSON, merged over the run's config.")
    ] = None,
    stop: Annotated[
        str | None,
        typer.Option(
            "--stop",
            help="Stop criteria as JSON, merged over the run's (counts continue from the parent's).",
        ),
    ] = None,
    new_request_id: Annotated[
        str | None, typer.Option("--request-id", help="Id of the new run (default: a new id).")
    ] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="name=value tag (repeatable).")] = None,
) -> None:
    """Submit a warm-started copy of a completed run: the same algorithm, env and compute, restored
    from its final checkpoint (restore_from rlq://ID); prints the new request id."""
    from shared.client import RequestRejected, retrain_request

    state = state_of(ctx)
    with errors(state):
        flags = build_request(config=config, stop=stop, tags=tag)
        w = state.wiring()
        parent = w.service.get(request_id)
        try:
            body = retrain_request(
                parent.model_dump(mode="json"),
                config=flags.get("config"),
                stop=flags.get("stop"),
                tags=flags.get("tags"),
                request_id=new_request_id,
            )
        except RequestRejected as err:
            raise InvalidRequest(err.errors) from None
        rid = w.service.enqueue(body)
        out_console().print(rid, soft_wrap=True)
        err_console().print(
            f"warm-started from {request_id}'s final checkpoint; follow it with: rlq watch {rid}"
        )


@app.command()
def status(
    ctx: typer.Context,
    request_id: Annotated[str, typer.Argument(help="The request id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the run record as JSON.")] = False,
) -> None:
    """Show one run: state, progress, reward, error, completion message, notification failures."""
    state = state_of(ctx)
    with errors(state):
        record = state.wiring().service.get(request_id)
        if as_json:
            out_console().print_json(record.model_dump_json())
        else:
            out_console().print(render_record(record))


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
    state = state_of(ctx)
    with errors(state):
        states = _parse_states(state_filter)
        records = state.wiring().service.list(states=states, limit=limit)
        console = out_console()
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
                Text(r.state.value, style=state_style(r.state)),
                r.request.algorithm if r.request else "-",
                r.request.env if r.request else "-",
                str(p.iteration) if p else "-",
                fmt_num(
                    r.completion.final_reward
                    if r.completion and r.completion.final_reward is not None
                    else (p.episode_reward_mean if p else None),
                    2,
                ),
                fmt_time(r.created_at),
            )
        console.print(table)


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
    state = state_of(ctx)
    with errors(state):
        w = state.wiring()
        console = out_console()
        record = follow(
            lambda: w.service.get(request_id),
            w.settings,
            console=console,
            interval_s=interval_s,
            timeout_s=timeout_s,
        )
        console.print(render_record(record))
        raise typer.Exit(exit_code_for(record))


@app.command()
def cancel(
    ctx: typer.Context,
    request_id: Annotated[str, typer.Argument(help="The request id.")],
) -> None:
    """Ask a run to stop; the poller records it as canceled once the job has stopped."""
    state = state_of(ctx)
    with errors(state):
        record = state.wiring().service.cancel(request_id)
        console = out_console()
        if record.state in FINAL:
            console.print(f"{request_id} already ended: {record.state.value}")
        else:
            console.print(f"cancel requested for {request_id} (state {record.state.value})")


def _dead_letter_source(w: Wiring) -> DeadLetterInbox:
    if w.dead_letters is None:
        raise PermanentError(
            "dead-letter inspection needs the local SQLite broker (RLQ_BROKER=sqlite); for Service Bus "
            "use the Azure portal's Service Bus Explorer",
            reason="Unsupported",
        )
    return w.dead_letters


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
    state = state_of(ctx)
    with errors(state):
        w = state.wiring()
        source = _dead_letter_source(w)
        entity = queue or w.settings.queue_name
        console = out_console()
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
                ("dead-lettered", fmt_time(d.dead_lettered_at)),
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
                fmt_time(d.dead_lettered_at),
            )
        console.print(table)


@app.command()
def plot(
    ctx: typer.Context,
    request_id: Annotated[str, typer.Argument(help="The request id.")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="PNG path (default: <runs_dir>/<id>/reward.png).")
    ] = None,
) -> None:
    """Write the run's reward curve as a PNG and print its path."""
    state = state_of(ctx)
    with errors(state):
        w = state.wiring()
        record = w.service.get(request_id)
        path = save_curve(record, w.settings, out)
        if path is None:
            raise NotFound(f"{request_id} has no training iterations recorded yet")
        out_console().print(str(path), soft_wrap=True)


app.command()(local.serve)
app.command()(local.demo)
app.add_typer(models.app, name="models")


def main() -> None:
    """Console-script entry point (``rlq``)."""
    app()


if __name__ == "__main__":
    main()
