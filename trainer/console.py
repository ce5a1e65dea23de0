"""The trainer's stderr: one line per event, prefixed with the program name."""

from __future__ import annotations

import sys

PROG = "rlq-trainer"


def log(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def error(message: str) -> None:
    """A run's one-line refusal (exit code 2): ``rlq-trainer: error: <field>: ...``."""
    log(f"error: {message}")
