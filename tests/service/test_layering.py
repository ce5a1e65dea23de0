"""The core depends on ports and policy modules only: no adapter, no SDK, no HTTP client."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CORE = (
    "shared.service",
    "shared.ports",
    "shared.readiness",
    "shared.urlguard",
    "shared.contracts.trainer",
    "shared.contracts.base",
    "shared.contracts.catalog",
    "shared.contracts.completion",
    "shared.contracts.parsing",
    "shared.contracts.request",
    "shared.contracts.run",
    "shared.contracts.vm_sizes",
)


def test_the_core_modules_import_no_adapter_even_lazily() -> None:
    for name in CORE:
        tree = ast.parse((REPO / (name.replace(".", "/") + ".py")).read_text())
        imported = [
            node.module if isinstance(node, ast.ImportFrom) else alias.name
            for node in ast.walk(tree)
            if isinstance(node, (ast.Import, ast.ImportFrom))
            for alias in node.names
        ]
        assert [m for m in imported if m and m.startswith("shared.adapters")] == [], name


def test_importing_the_core_loads_no_adapter_sdk_or_http_client() -> None:
    code = f"import json, sys\nfor m in {list(CORE)!r}: __import__(m)\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    loaded = json.loads(done.stdout)
    banned = ("shared.adapters", "azure", "ray", "httpx", "tenacity")
    assert [m for m in loaded if m.split(".")[0] in banned or m.startswith(banned[0])] == []
