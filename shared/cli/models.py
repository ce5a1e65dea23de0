"""``rlq models``: the models, their champions and versions (docs/models.md), and a person's promote
or rollback. Reads and writes through the same service the API uses (``wiring().service``)."""

from __future__ import annotations

import re
from typing import Annotated

import typer
from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from shared.cli.context import errors, state_of
from shared.cli.render import fmt_time, out_console
from shared.contracts.models import ModelDetail, ModelVersion
from shared.contracts.request import NAME_RE
from shared.errors import InvalidRequest, NotFound
from shared.verdicts import evaluation_text

app = typer.Typer(
    name="models",
    help="Models and their champions: list, show, promote a version, roll back.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)

NameArg = Annotated[
    str, typer.Argument(help="The model's name (a request's model, by default its experiment).")
]
ReasonOpt = Annotated[
    str, typer.Option("--reason", help="Why, in a sentence: recorded in the model's history.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _name(name: str) -> str:
    if not re.fullmatch(NAME_RE, name):
        raise InvalidRequest(
            [
                {
                    "field": "name",
                    "message": f"{name[:80]!r} is not a model name (letters, digits, '_' and '-', at most 64)",
                }
            ]
        )
    return name


def _decision(v: ModelVersion) -> Text:
    if v.promoted:
        return Text("promoted", style="green")
    return Text("kept the champion" if v.champion_version is not None else "not promoted")


def render_model(detail: ModelDetail) -> Panel:
    """The ``rlq models show`` panel: the champion, each version's evaluation, the champion changes."""
    model, champion = detail.model, detail.champion
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    if champion is None:
        grid.add_row("champion", "none yet")
    else:
        grid.add_row("champion", f"v{champion.version} · run {champion.request_id}")
        grid.add_row("evaluation", evaluation_text(champion.candidate))
        grid.add_row("checkpoint", champion.checkpoint_path)
    grid.add_row("versions", str(model.latest_version))
    grid.add_row("updated", fmt_time(model.updated_at))
    versions = Table(title="versions, newest first", title_justify="left", expand=False)
    for col in ("version", "run", "candidate", "champion then", "decision", "reason", "registered"):
        versions.add_column(col, overflow="fold", no_wrap=col in ("version", "decision"))
    for v in detail.versions:
        crown = " ★" if model.champion_version == v.version else ""
        versions.add_row(
            f"v{v.version}{crown}",
            v.request_id,
            evaluation_text(v.candidate),
            f"v{v.champion_version}: {evaluation_text(v.champion)}" if v.champion_version else "-",
            _decision(v),
            v.reason,
            fmt_time(v.created_at),
        )
    history = Table(title="champion changes", title_justify="left", expand=False)
    for col in ("#", "from", "to", "by", "reason", "at"):
        history.add_column(col, overflow="fold")
    for e in reversed(model.history):
        history.add_row(
            str(e.sequence),
            f"v{e.from_version}" if e.from_version else "-",
            f"v{e.to_version}",
            e.by,
            e.reason,
            fmt_time(e.at),
        )
    return Panel(
        Group(grid, versions, history), title=f"model {model.name}", title_align="left", expand=False
    )


@app.command("list")
def list_models(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="At most this many, by name.")] = 100,
    as_json: JsonOpt = False,
) -> None:
    """List the models: each one's champion and how many versions it has."""
    state = state_of(ctx)
    with errors(state):
        models = state.wiring().service.list_models(limit=limit)
        console = out_console()
        if as_json:
            for m in models:
                console.print(m.model_dump_json(exclude={"history"}), soft_wrap=True)
            return
        if not models:
            console.print("no models")
            return
        table = Table(expand=False)
        for col in ("model", "champion", "versions", "changes", "updated"):
            table.add_column(col, overflow="fold")
        for m in models:
            table.add_row(
                m.name,
                f"v{m.champion_version}" if m.champion_version else "-",
                str(m.latest_version),
                str(m.promotions),
                fmt_time(m.updated_at),
            )
        console.print(table)


def _print(detail: ModelDetail, as_json: bool) -> None:
    if as_json:
        out_console().print_json(detail.model_dump_json())
    else:
        out_console().print(render_model(detail))


@app.command()
def show(
    ctx: typer.Context,
    name: NameArg,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="At most this many versions.")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """Show a model: its champion, its versions with their evaluations, its champion changes."""
    state = state_of(ctx)
    with errors(state):
        detail = state.wiring().service.model(_name(name), limit=limit)
        if detail is None:
            raise NotFound(f"no model {name!r}")
        _print(detail, as_json)


@app.command()
def promote(
    ctx: typer.Context,
    name: NameArg,
    version: Annotated[int, typer.Argument(min=1, help="The version to make champion.")],
    reason: ReasonOpt,
    as_json: JsonOpt = False,
) -> None:
    """Make a version the champion (recorded with the reason; a model-promoted event goes out once)."""
    state = state_of(ctx)
    with errors(state):
        service = state.wiring().service
        detail = service.model(_name(name), limit=1)
        if detail is None:
            raise NotFound(f"no model {name!r}")
        if version > detail.model.latest_version:
            raise NotFound(
                f"model {name!r} has no version {version}; it has 1 to {detail.model.latest_version}"
            )
        _print(service.promote(name, version, reason=reason), as_json)


@app.command()
def rollback(ctx: typer.Context, name: NameArg, reason: ReasonOpt, as_json: JsonOpt = False) -> None:
    """Make the champion before the current one champion again (recorded with the reason)."""
    state = state_of(ctx)
    with errors(state):
        service = state.wiring().service
        if service.model(_name(name), limit=1) is None:
            raise NotFound(f"no model {name!r}")
        _print(service.rollback(name, reason=reason), as_json)
