"""The documentation tells the truth about the code: its examples validate, its paths and routes exist.

* Every ```json block in README.md and docs/*.md is a training request that the real parser accepts,
  a completion message, a webhook envelope around one, or a Teams payload; every request a doc
  shows inline (``rlq submit`` flags, ``curl -d``, ``Client.submit({...})``) is accepted too, and a
  ``rlq submit`` shown failing fails naming exactly the fields its output table names.
* The README's Layout table names paths that exist and every module under shared/, functions/ and
  trainer/; its route tables list exactly the HTTP routes the function app registers.
* Every ``shared/…``, ``functions/…``, ``trainer/…`` path a doc names exists.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
from pathlib import Path

import pytest
import typer.main

from shared.cli import app as cli_app
from shared.cli.request import build_request
from shared.contracts.completion import CompletionMessage
from shared.contracts.models import PromotionEvent
from shared.contracts.parsing import load_json, parse_request
from shared.errors import InvalidRequest
from shared.localhost.bindings import list_functions
from shared.urlguard import check_request_urls

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def _blocks(lang: str | None = None) -> list[tuple[str, str, str]]:
    """``(where, language, text)`` of every fenced block (``where`` is ``file:line``)."""
    out = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for m in FENCE.finditer(text):
            if lang is None or m.group(1) == lang:
                where = f"{doc.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}"
                out.append((where, m.group(1), m.group(2)))
    return out


def _accepted(body: str | dict, where: str) -> None:
    """The request is accepted as intake accepts it: the schema, then the URL rules (local mode)."""
    try:
        request = parse_request(body, default_id="doc-example")
    except InvalidRequest as err:
        pytest.fail(f"{where}: the request example is refused: {err.errors}")
    problems = check_request_urls(request, local_mode=True)
    assert problems == [], f"{where}: the request example's URLs are refused: {problems}"


# --- JSON blocks -------------------------------------------------------------------------------

JSON_BLOCKS = _blocks("json")


def test_the_docs_show_a_request_and_a_completion_message():
    kinds = [_kind(load_json(text)) for _, _, text in JSON_BLOCKS]
    assert "request" in kinds and "completion" in kinds


def _kind(obj: object) -> str:
    if isinstance(obj, dict) and obj.get("event") == "model-promoted":
        return "model-promoted"
    if isinstance(obj, dict) and "message_id" in obj:
        return "completion"
    if isinstance(obj, dict) and obj.get("type") == "training.completed":
        return "webhook"
    if isinstance(obj, dict) and obj.get("type") == "message" and "attachments" in obj:
        return "teams"  # the cards themselves are validated against their schema in tests/notify
    return "request"


@pytest.mark.parametrize(
    ("where", "text"), [(w, t) for w, _, t in JSON_BLOCKS], ids=[w for w, _, _ in JSON_BLOCKS]
)
def test_every_json_example_is_what_it_shows(where, text):
    obj = load_json(text)  # valid JSON, no key given twice
    kind = _kind(obj)
    if kind == "request":
        _accepted(text, where)
    elif kind == "completion":
        CompletionMessage.model_validate(obj)
    elif kind == "model-promoted":
        PromotionEvent.model_validate(obj)
    elif kind == "webhook":
        assert set(obj) == {"type", "timestamp", "data"}, where
        shown = {k: v for k, v in obj["data"].items() if k != "..."}  # "...": the fields left out
        unknown = set(shown) - set(CompletionMessage.model_fields)
        assert unknown == set(), f"{where}: not completion message fields: {sorted(unknown)}"
        full = CompletionMessage(
            message_id=shown["message_id"],
            request_id=shown["request_id"],
            run_id=shown["run_id"],
            status=shown["status"],
            algorithm=shown["algorithm"],
            env=shown["env"],
        ).model_dump(mode="json")
        CompletionMessage.model_validate({**full, **shown})


# --- requests shown inline ---------------------------------------------------------------------

SUBMIT = typer.main.get_command(cli_app).commands["submit"]  # type: ignore[attr-defined]
# build_request's parameter for each of the submit command's that is named differently
RENAMED = {"webhook": "webhooks", "tag": "tags"}


def _commands(text: str) -> list[str]:
    """The shell commands of a block: continuation lines joined, ``$ `` prompts dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [line.removeprefix("$ ").strip() for line in joined.splitlines()]


def _submits() -> list[tuple[str, list[str], str]]:
    """``(where, argv after 'submit', the rest of the block)`` of every ``rlq submit`` example."""
    found = []
    for where, lang, text in _blocks():
        if lang not in ("bash", "console", "sh"):
            continue
        lines = _commands(text)
        for i, line in enumerate(lines):
            m = re.match(r"^(?:\S*/)?rlq(?: --data-dir \S+)? submit(?: (.*))?$", line)
            if m:
                argv = shlex.split(m.group(1) or "", comments=True)
                found.append((f"{where} `{line[:60]}`", argv, "\n".join(lines[i + 1 :])))
    return found


SUBMITS = _submits()


def test_the_docs_show_rlq_submit():
    assert len(SUBMITS) >= 3


@pytest.mark.parametrize(("where", "argv", "after"), SUBMITS, ids=[w for w, _, _ in SUBMITS])
def test_every_rlq_submit_example_builds_the_request_it_claims(where, argv, after):
    ctx = SUBMIT.make_context("submit", list(argv))  # the real flags: an unknown one fails here
    params = {RENAMED.get(k, k): v for k, v in ctx.params.items()}
    params = {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}
    body = build_request(**params)
    shown = re.search(r"^invalid training request.*?\n((?:[┃│].*\n?)+)", after, re.M)
    if shown is None:
        _accepted(body, where)
        return
    # an example of a refusal: the same fields are refused as the output table shows
    table_fields = {row.split("│")[1].strip() for row in shown.group(1).splitlines() if row.startswith("│")}
    with pytest.raises(InvalidRequest) as err:
        parse_request(body, default_id="doc-example")
    assert {e["field"] for e in err.value.errors} == table_fields, where


def _inline_requests() -> list[tuple[str, str | dict]]:
    found: list[tuple[str, str | dict]] = []
    for where, lang, text in _blocks():
        if lang in ("bash", "console", "sh"):
            for line in _commands(text):
                if line.startswith("curl") and "/api/trainings" in line and " -d " in line:
                    argv = shlex.split(line, comments=True)
                    found.append((f"{where} `{line[:60]}`", argv[argv.index("-d") + 1]))
        elif lang == "python":
            for node in ast.walk(ast.parse(text)):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "submit"
                    and node.args
                    and isinstance(node.args[0], ast.Dict)
                ):
                    found.append((f"{where} `{ast.unparse(node)[:60]}`", ast.literal_eval(node.args[0])))
    return found


INLINE = _inline_requests()


def test_the_docs_show_inline_requests():
    assert len(INLINE) >= 2


@pytest.mark.parametrize(("where", "body"), INLINE, ids=[w for w, _ in INLINE])
def test_every_inline_request_is_accepted(where, body):
    _accepted(body, where)


# --- the README's Layout table -----------------------------------------------------------------


def _section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert m, f"README has no '## {title}' section"
    return m.group(1)


def _layout_rows() -> dict[str, str]:
    """First-column path -> the row's text, for every row of the Layout table."""
    rows = {}
    for line in _section("Layout").splitlines():
        cells = line.split("|")
        if len(cells) < 3 or not cells[1].strip().startswith("`"):
            continue
        for path in re.findall(r"`([^`]+)`", cells[1]):
            rows[path] = line
    return rows


def test_every_path_in_the_layout_table_exists():
    rows = _layout_rows()
    assert rows
    missing = [p for p in rows if not (ROOT / p).exists()]
    assert missing == []


def _packages() -> list[Path]:
    return [
        d
        for top in ("shared", "functions", "trainer")
        for d in [ROOT / top, *sorted((ROOT / top).rglob("*"))]
        if d.is_dir() and (d / "__init__.py").is_file()
    ]


def test_the_layout_table_names_every_module_and_package():
    rows = _layout_rows()
    unnamed = []
    for pkg in _packages():
        rel = pkg.relative_to(ROOT).as_posix()
        for child in sorted(pkg.iterdir()):
            if child.is_dir() and (child / "__init__.py").is_file():
                if f"{rel}/{child.name}/" not in rows:
                    unnamed.append(f"{rel}/{child.name}/ (a package: give it a row)")
            elif child.suffix == ".py" and child.name != "__init__.py":
                path = f"{rel}/{child.name}"
                in_own_row = path in rows
                in_package_row = f"{rel}/" in rows and f"`{child.name}`" in rows[f"{rel}/"]
                if not (in_own_row or in_package_row):
                    unnamed.append(path)
    assert unnamed == [], "the README's Layout table does not name these"


def test_set_up_is_make_run_and_make_test():
    blocks = FENCE.findall(_section("Set up"))
    commands = [c.split("#")[0].strip() for _, text in blocks for c in text.splitlines() if c.strip()]
    assert commands == ["make run", "make test"]


# --- the README's route tables -----------------------------------------------------------------


def _registered_routes() -> set[str]:
    import function_app

    host = json.loads((ROOT / "host.json").read_text(encoding="utf-8"))
    prefix = host.get("extensions", {}).get("http", {}).get("routePrefix", "api")
    routes = set()
    for fn in list_functions(function_app.app):
        trigger = fn.get_trigger()
        if trigger.get_binding_name() == "httpTrigger":
            for method in trigger.methods:
                routes.add(f"{getattr(method, 'value', method)} /{prefix}/{trigger.route}")
    return {_normal(r) for r in routes}


def _normal(route: str) -> str:
    return re.sub(r"\{[^}]*\}", "{}", route.split("?")[0])


def _documented_routes() -> set[str]:
    documented = set()
    for title in ("Dashboard", "The local flow"):  # the route tables: HTTP API (under the local flow), pages
        for line in _section(title).splitlines():
            cells = line.split("|")
            if len(cells) >= 3:
                documented |= {
                    _normal(r) for r in re.findall(r"`((?:GET|POST|PUT|DELETE) /[^`]+)`", cells[1])
                }
    return documented


def test_the_readme_route_tables_list_exactly_the_registered_routes():
    registered, documented = _registered_routes(), _documented_routes()
    assert registered, "the function app registers no HTTP routes?"
    assert sorted(registered - documented) == [], "registered but not in the README"
    assert sorted(documented - registered) == [], "in the README but not registered"


# --- paths named anywhere in the docs ----------------------------------------------------------

PATH_RE = re.compile(r"(?<![\w/.-])((?:shared|functions|trainer|tests|bench|docs|infra)/[\w./-]*[\w/])")


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_every_repository_path_a_doc_names_exists(doc):
    text = doc.read_text(encoding="utf-8")
    missing = sorted(
        {
            p
            for p in PATH_RE.findall(text)
            if not (ROOT / p).exists()
            and not p.startswith("infra/main.parameters.json")  # made by the reader from the example
        }
    )
    assert missing == []
