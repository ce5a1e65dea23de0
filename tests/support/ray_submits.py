"""Count the submit calls rlq makes to Ray, not the jobs Ray keeps.

Ray refuses a second job with a submission id it has seen, so counting jobs (``list_jobs``) cannot
show a service that asks twice. :func:`record_submit_jobs` wraps
``ray.job_submission.JobSubmissionClient.submit_job`` (every client rlq builds is one, see
``shared.adapters.compute.ray_jobs._default_client_factory``) so that each call, refused or not, is noted
in a JSON-lines journal before it is sent; several processes can share one journal (one ``write``
per line). :func:`submit_job_calls` reads it back: calls per submission id.
"""

from __future__ import annotations

import functools
import json
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

JOURNAL_ENV = "RLQ_TEST_SUBMIT_JOURNAL"  # host processes record their submit_job calls here when set


def record_submit_jobs(journal: Path) -> Callable[[], None]:
    """Note every ``submit_job`` call of this process in ``journal``; returns the undo."""
    from ray.job_submission import JobSubmissionClient

    original = JobSubmissionClient.submit_job

    @functools.wraps(original)
    def recording(self: Any, *args: Any, **kwargs: Any) -> Any:
        line = json.dumps({"submission_id": kwargs.get("submission_id"), "pid": os.getpid()}) + "\n"
        fd = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())  # one write: a SIGKILL leaves whole lines
        finally:
            os.close(fd)
        return original(self, *args, **kwargs)

    JobSubmissionClient.submit_job = recording  # type: ignore[method-assign]

    def undo() -> None:
        JobSubmissionClient.submit_job = original  # type: ignore[method-assign]

    return undo


def submit_job_calls(journal: Path) -> Counter[str]:
    """``submit_job`` calls per submission id noted in ``journal`` (none when it does not exist)."""
    if not journal.exists():
        return Counter()
    return Counter(str(json.loads(line)["submission_id"]) for line in journal.read_text().splitlines())
