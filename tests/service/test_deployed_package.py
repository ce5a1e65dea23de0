"""What the Function App zip holds: everything ``function_app`` imports, nothing from the tests.

``.funcignore`` (gitignore rules) decides what ``func azure functionapp publish`` leaves out; these
tests apply it to the tracked files and check it against a clean import of the app.
"""

from __future__ import annotations

import fnmatch
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _rules() -> list[str]:
    lines = (REPO / ".funcignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def left_out(rel: str, rules: list[str]) -> bool:
    """Whether ``.funcignore`` drops the repository path ``rel`` (the subset of gitignore it uses)."""
    parts = rel.split("/")
    for rule in rules:
        anchored = rule.rstrip("/")
        if "/" in anchored:  # a path from the root (``trainer/outputs/``)
            if rel == anchored or rel.startswith(anchored + "/"):
                return True
            continue
        dirs = parts[:-1] if rule.endswith("/") else parts
        if any(fnmatch.fnmatchcase(p, anchored) for p in dirs):
            return True
    return False


def _clean_import() -> dict[str, str | None]:
    code = (
        "import json, sys\n"
        "import function_app  # noqa: F401\n"
        "print(json.dumps({n: getattr(m, '__file__', None) for n, m in list(sys.modules.items())}))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RLQ_", "PYTEST"))}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_the_app_loads_nothing_from_the_tests_and_only_packaged_files() -> None:
    modules = _clean_import()
    assert "function_app" in modules and "shared.core.service" in modules
    assert sorted(n for n in modules if n == "tests" or n.startswith(("tests.", "pytest", "_pytest"))) == []
    rules = _rules()
    ours = {
        n: Path(f).resolve().relative_to(REPO).as_posix()
        for n, f in modules.items()
        if f and Path(f).resolve().is_relative_to(REPO) and ".venv" not in Path(f).resolve().parts
    }
    assert ours, "no module of the repository was imported"
    missing = sorted(f"{n} ({rel})" for n, rel in ours.items() if left_out(rel, rules))
    assert missing == [], "imported by the app but left out of the zip by .funcignore"


def test_the_zip_leaves_out_tests_and_their_helpers_and_keeps_the_trainer() -> None:
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    rules = _rules()
    shipped = [f for f in tracked if not left_out(f, rules)]
    assert not [f for f in shipped if f.startswith(("tests/", "bench/", "infra/", "docs/"))]
    assert "function_app.py" in shipped and "host.json" in shipped and "requirements.txt" in shipped
    assert "trainer/train.py" in shipped  # the Azure ML backends upload it as the run's snapshot
    assert any(f.startswith("shared/") for f in shipped) and any(f.startswith("functions/") for f in shipped)


def test_the_rules_match_like_gitignore() -> None:
    rules = ["tests/", "*.pyc", "trainer/outputs/", "Makefile"]
    assert left_out("tests/support/azurite.py", rules) and left_out("shared/x/__pycache__/a.pyc", rules)
    assert left_out("trainer/outputs/run/metrics.jsonl", rules) and left_out("Makefile", rules)
    assert not left_out("trainer/train.py", rules) and not left_out("shared/tests_like.py", rules)
