"""The core depends on ports, errors, settings, contracts and policy modules only: no adapter, no
SDK, no HTTP client, and its roles stand in no circle."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CORE_DIR = REPO / "shared" / "core"
CORE = (
    *(f"shared.core.{p.stem}" for p in sorted(CORE_DIR.glob("*.py")) if p.stem != "__init__"),
    *(f"shared.contracts.{p.stem}" for p in sorted((REPO / "shared/contracts").glob("*.py"))),
    "shared.ports",
    "shared.urlguard",
    "shared.curves",
    "shared.telemetry",
)
# What shared/core/* may import from rlq: the core itself and the modules below the adapters.
ALLOWED = (
    "shared.core",
    "shared.ports",
    "shared.errors",
    "shared.settings",
    "shared.urlguard",
    "shared.contracts",
    "shared.curves",
    "shared.telemetry",  # the OpenTelemetry API only (a no-op until the composition edge installs the SDK)
)
SDKS = ("azure", "ray", "httpx", "tenacity", "requests", "urllib3", "aiohttp")


def _imports(path: Path) -> list[str]:
    """Every module ``path`` imports, at the top or lazily; ``from a.b import c`` names ``a.b`` and
    ``a.b.c`` (``c`` may be a module: ``from shared import curves``, ``from shared.core import intake``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found += [node.module] if node.module != "shared" else []
            found += [f"{node.module}.{alias.name}" for alias in node.names]
    return found


def test_the_core_imports_no_adapter_and_no_sdk_even_lazily() -> None:
    found = {}
    for path in sorted(CORE_DIR.glob("*.py")):
        names = [m for m in _imports(path) if m.split(".")[0] in (*SDKS, "shared", "functions", "trainer")]
        bad = [m for m in names if m.split(".")[0] in SDKS or not m.startswith(ALLOWED)]
        if bad:
            found[path.name] = bad
    assert found == {}


def test_the_core_modules_stand_in_no_import_circle() -> None:
    modules = {f"shared.core.{p.stem}": p for p in CORE_DIR.glob("*.py")}
    graph = {name: {m for m in _imports(path) if m in modules} for name, path in modules.items()}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    assert [m for m in graph if reaches(m, m, set())] == []


def test_importing_the_core_loads_no_adapter_sdk_or_http_client() -> None:
    code = f"import json, sys\nfor m in {list(CORE)!r}: __import__(m)\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    loaded = json.loads(done.stdout)
    banned = ("shared.adapters", "azure", "ray", "httpx", "tenacity")
    assert [m for m in loaded if m.split(".")[0] in banned or m.startswith(banned[0])] == []
    # the telemetry the core calls is the API: no SDK, no exporter (shared/telemetry_export.py has them)
    assert [m for m in loaded if m.startswith(("opentelemetry.sdk", "opentelemetry.exporter"))] == []
