"""shared/contracts/ sits below everything else in shared/: it imports none of rlq but the error tree,
so any room may import it without a circle (README, Layout)."""

from __future__ import annotations

import ast
from pathlib import Path

CONTRACTS = Path(__file__).resolve().parents[2] / "shared" / "contracts"


def test_the_contracts_import_only_each_other_and_the_error_tree():
    above = {}
    for path in sorted(CONTRACTS.glob("*.py")):
        tree = ast.parse(path.read_text())
        imported = [
            node.module if isinstance(node, ast.ImportFrom) else alias.name
            for node in ast.walk(tree)
            if isinstance(node, (ast.Import, ast.ImportFrom))
            for alias in node.names
        ]
        rlq = [m for m in imported if m and m.split(".")[0] in ("shared", "functions", "trainer")]
        bad = [m for m in rlq if m != "shared.errors" and not m.startswith("shared.contracts")]
        if bad:
            above[path.name] = bad
    assert above == {}
    assert len(list(CONTRACTS.glob("*.py"))) >= 10  # the suite reads the real folder
