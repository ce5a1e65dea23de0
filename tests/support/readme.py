"""The figures the README (and docs/) claim, read from them, so a test asserts exactly what they say."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
GUARANTEES = ROOT / "docs" / "guarantees.md"


def readme_number(pattern: str, doc: Path = README) -> int:
    """The one number ``pattern``'s first group matches in ``doc`` (``1,024`` reads as 1024).

    Fails when the document does not say it, or says it twice with different numbers: a claim the
    tests cannot find is a claim nothing checks.
    """
    text = doc.read_text(encoding="utf-8")
    found = {int(m.group(1).replace(",", "")) for m in re.finditer(pattern, text)}
    assert len(found) == 1, f"{doc.name} states {pattern!r} {len(found)} ways: {sorted(found)}"
    return found.pop()
