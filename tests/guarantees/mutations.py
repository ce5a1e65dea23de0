"""Break each guarantee on purpose and check that its suite notices (by hand, not in CI).

    nice -n 5 .venv/bin/python -m tests.guarantees.mutations            # every mutation
    nice -n 5 .venv/bin/python -m tests.guarantees.mutations skip-find  # some of them
    .venv/bin/python -m tests.guarantees.mutations --list

For each mutation in :data:`MUTATIONS` the working tree (the files git tracks or would track) is
copied to a temporary directory, one textual change is made there (the text to replace must occur
exactly once, so a mutation that no longer applies says so instead of passing), and the tests that
claim to catch it run in that copy with this interpreter (subprocesses of the suites take the copy
too: they run with ``PYTHONPATH`` set to the repository they were started from). ``caught``: the
tests failed; ``MISSED``: they passed with the guarantee broken. The unmutated copy runs the same
tests first, so a failure there is reported as a broken baseline, not as a catch. The table it
prints is the one in docs/guarantees.md.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Mutation:
    name: str
    guarantee: int  # the promise's number in docs/guarantees.md
    what: str  # the mutation, in words
    path: str
    old: str
    new: str
    tests: tuple[str, ...]  # pytest arguments: the tests that must catch it


MUTATIONS: tuple[Mutation, ...] = (
    Mutation(
        "drop-dead-letter",
        1,
        "a rejected request is not dead-lettered (the handler returns without telling the queue)",
        "shared/core/intake.py",
        "        if self.core.rejecter is not None:\n            raw = body",
        "        if False:\n            raw = body",
        ("tests/poison/test_corpus.py",),
    ),
    Mutation(
        "defer-without-resend",
        1,
        "a request over the in-flight cap is counted as deferred but never sent again",
        "shared/core/intake.py",
        "            record, state=RunState.received, deferrals=record.deferrals + 1, waiting=reason, **back\n"
        "        )\n",
        "            record, state=RunState.received, deferrals=record.deferrals + 1, waiting=reason, **back\n"
        "        )\n        return record\n",
        ("tests/guarantees/test_caps.py",),
    ),
    Mutation(
        "retry-at-once",
        1,
        "a transient fault is not re-sent later: the message is abandoned and redelivered at once",
        "shared/core/intake.py",
        "        if sender is None:\n            return None\n        try:\n            request = parse_request(",
        "        if True:\n            return None\n        try:\n            request = parse_request(",
        ("tests/guarantees/test_outages.py",),
    ),
    Mutation(
        "submit-twice",
        2,
        "every job is asked for twice (the twin's submit runs twice per call)",
        "shared/adapters/compute/compute_twin.py",
        "    def submit(self, request: TrainingRequest, attempt: int = 1) -> str:\n",
        "    def submit(self, request: TrainingRequest, attempt: int = 1) -> str:\n"
        "        self._submit_once(request, attempt)\n"
        "        return self._submit_once(request, attempt)\n\n"
        "    def _submit_once(self, request: TrainingRequest, attempt: int = 1) -> str:\n",
        ("tests/guarantees",),
    ),
    Mutation(
        "skip-find",
        2,
        "submit without asking the backend for the request's job first",
        "shared/core/intake.py",
        "run_id = backend.find(record.request_id, attempt) or backend.submit(request, attempt)",
        "run_id = backend.submit(request, attempt)",
        ("tests/guarantees/test_crash_matrix.py", "tests/guarantees/test_outages.py"),
    ),
    Mutation(
        "skip-claim-recheck",
        2,
        "no claim re-check before the submit call",
        "shared/core/intake.py",
        "            rechecked = self._recheck_claim(record)\n",
        "            rechecked = record\n",
        ("tests/guarantees/test_claims.py",),
    ),
    Mutation(
        "claim-ignores-lease",
        2,
        "a copy of the request takes over a claim that is still fresh",
        "shared/core/intake.py",
        "if record.claimed_at is not None and now - record.claimed_at < lease and not own:",
        "if False:",
        ("tests/guarantees/test_claims.py", "tests/guarantees/test_concurrency.py"),
    ),
    Mutation(
        "insert-overwrites",
        2,
        "the run record is written whether or not one exists (insert-if-absent dropped)",
        "shared/adapters/store/sqlite_store.py",
        '"INSERT OR IGNORE INTO runs (request_id',
        '"INSERT OR REPLACE INTO runs (request_id',
        ("tests/guarantees/test_claims.py", "tests/guarantees/test_crash_matrix.py"),
    ),
    Mutation(
        "fresh-message-id",
        3,
        "each publish of a completion gets a new message id (duplicate detection cannot drop repeats)",
        "shared/contracts/message_ids.py",
        '    return f"{request_id}:completed"\n',
        "    return f\"{request_id}:completed:{__import__('time').time()}\"\n",
        ("tests/guarantees/test_crash_matrix.py",),
    ),
    Mutation(
        "publish-before-terminal",
        3,
        "the completion is published before the terminal state is recorded (no outbox)",
        "shared/core/outbox.py",
        '        changes["completion"] = self._completion(ended, summary or TrainerSummary())\n',
        '        changes["completion"] = self._completion(ended, summary or TrainerSummary())\n'
        "        self.core.publisher.publish(changes['completion'], reply_to=None)\n"
        '        self.core.fault("terminal")\n',
        ("tests/guarantees/test_crash_matrix.py", "tests/guarantees/test_outages.py"),
    ),
    Mutation(
        "publish-once-unconfirmed",
        3,
        "a publish that fails is not repeated (the run is marked published anyway)",
        "shared/core/outbox.py",
        "        self.core.publisher.publish(record.completion, reply_to=reply_to)  # TransientError: next tick retries\n",
        "        try:\n"
        "            self.core.publisher.publish(record.completion, reply_to=reply_to)\n"
        "        except Exception:\n"
        "            pass\n",
        ("tests/guarantees/test_outages.py",),
    ),
    Mutation(
        "queue-before-record",
        4,
        "POST /api/trainings queues the request before recording it",
        "shared/core/intake.py",
        "        record, inserted = self.core.store.insert_if_absent(\n            RunRecord(\n"
        "                request_id=request.request_id,\n                request=resolved,\n",
        "        sender.send(request.model_dump_json().encode(), message_id=request.request_id)\n"
        "        record, inserted = self.core.store.insert_if_absent(\n            RunRecord(\n"
        "                request_id=request.request_id,\n                request=resolved,\n",
        ("tests/e2e/test_host_reliability.py",),
    ),
    Mutation(
        "lost-fails-the-run",
        5,
        "a job lost with its machines fails its run instead of resuming it from its checkpoint",
        "shared/core/poller.py",
        'if status.state == "failed" and status.end is JobEnd.lost and not record.cancel_requested:',
        'if status.state == "failed" and status.end is JobEnd.lost and False:',
        ("tests/core/test_resume.py",),
    ),
    Mutation(
        "partial-checkpoint-is-latest",
        5,
        "a checkpoint still under its .partial- name counts as complete: a job killed while writing one resumes from it",
        "trainer/run.py",
        "        if path.name.startswith(PARTIAL) or not meta.is_file():",
        "        if not meta.is_file():",
        ("tests/e2e/test_ray_faults.py", "-k", "checkpoint"),
    ),
    Mutation(
        "resumed-rows-repeat",
        5,
        "a resumed run's metrics are read with the lost attempt's rows: iterations repeat in its curve",
        "shared/curves.py",
        "    return one_timeline(out)",
        "    return out",
        ("tests/dashboard/test_resumed_curve.py",),
    ),
    Mutation(
        "model-last-writer-wins",
        7,
        "the model registry writes what it is given: no etag check, a version number or run taken twice overwritten",
        "shared/adapters/store/sqlite_store.py",
        "            if model.etag == 0:\n                cur = conn.execute(\n"
        '                    "INSERT OR IGNORE INTO models (name, etag, record) VALUES (?,?,?)",\n'
        "                    (model.name, stored.etag, stored.model_dump_json()),\n"
        "                )\n            else:\n                cur = conn.execute(\n"
        '                    "UPDATE models SET etag=?, record=? WHERE name=? AND etag=?",\n'
        "                    (stored.etag, stored.model_dump_json(), model.name, model.etag),\n"
        "                )\n            if cur.rowcount != 1:\n"
        '                raise Conflict(f"model {model.name!r} changed since etag {model.etag}: re-read and retry")\n'
        "            if new_version is not None:\n                try:\n                    conn.execute(\n"
        '                        "INSERT INTO model_versions',
        "            if True:\n                cur = conn.execute(\n"
        '                    "INSERT OR REPLACE INTO models (name, etag, record) VALUES (?,?,?)",\n'
        "                    (model.name, stored.etag, stored.model_dump_json()),\n"
        "                )\n"
        "            if new_version is not None:\n                try:\n                    conn.execute(\n"
        '                        "INSERT OR REPLACE INTO model_versions',
        ("tests/contract/test_model_registry.py", "tests/core/test_models.py"),
    ),
    Mutation(
        "event-with-every-completion",
        7,
        "each completion of a model publishes its first champion change again, promoted or not",
        "shared/core/outbox.py",
        "        if section is not None and section.event_id is not None and champions is not None:\n"
        "            champions.publish(section.name, section.event_id)",
        "        if section is not None and champions is not None and section.champion_version:\n"
        "            champions.publish(section.name, message_ids.promoted(section.name, 1))",
        ("tests/core/test_models.py",),
    ),
    Mutation(
        "team-cap-ignored",
        6,
        "a team's quota holds nothing back (its requests run as if it had none)",
        "shared/core/admission.py",
        "        if request is None or not settings.has_team_quotas:\n            return None\n",
        "        if True:\n            return None\n",
        ("tests/core/test_quotas.py", "tests/guarantees/test_quotas_load.py"),
    ),
    Mutation(
        "gpu-hours-ignored",
        6,
        "the GPU-hours a team used today hold none of its GPU runs back",
        "shared/core/quotas.py",
        "    if budget is not None and gpus > 0 and use.gpu_hours >= budget:\n",
        "    if False:\n",
        ("tests/core/test_quotas.py",),
    ),
    Mutation(
        "no-recount-after-claim",
        6,
        "a request that took the last slot at the same moment as another keeps it (no count after the claim)",
        "shared/core/intake.py",
        "if record.state is RunState.received and (reason := self.admission.over_cap(claimed)):",
        "if False:",
        ("tests/core/test_quotas.py",),
    ),
    Mutation(
        "line-ignored",
        6,
        "a freed slot goes to whichever deferred request comes back first (the line is not read)",
        "shared/core/admission.py",
        "        if not ahead:\n            return None",
        "        if True:\n            return None",
        ("tests/core/test_quotas.py", "tests/guarantees/test_quotas_load.py"),
    ),
    Mutation(
        "priority-ignored",
        6,
        "the line is first come, first served: priorities do not order it",
        "shared/core/quotas.py",
        "    return (-level(record, now, aging_s), record.created_at, record.request_id)\n",
        "    return (0, record.created_at, record.request_id)\n",
        ("tests/core/test_quotas.py", "tests/guarantees/test_quotas_load.py"),
    ),
    Mutation(
        "no-aging",
        6,
        "a waiting request never moves up a level (a stream of high requests starves a low one)",
        "shared/core/quotas.py",
        "    return min(TOP, base + int(waited // aging_s))\n",
        "    return base\n",
        ("tests/core/test_quotas.py",),
    ),
)


def tracked_files(repo: Path) -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=repo,
        capture_output=True,
        check=True,
    ).stdout
    return [p for p in out.decode().split("\0") if p and (repo / p).is_file()]


def copy_tree(repo: Path, dest: Path) -> None:
    for rel in tracked_files(repo):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / rel, target)


def apply(m: Mutation, root: Path) -> None:
    path = root / m.path
    text = path.read_text()
    n = text.count(m.old)
    if n != 1:
        raise SystemExit(f"mutation {m.name}: the text to replace occurs {n} times in {m.path}, not once")
    path.write_text(text.replace(m.old, m.new))


def run_tests(root: Path, tests: tuple[str, ...], *, stop_at_first: bool) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RLQ_")}
    env["PYTHONPATH"] = str(root)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not ray", *tests]
    if stop_at_first:
        cmd.insert(4, "-x")
    p = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, check=False)
    return p.returncode, p.stdout + p.stderr


def tally(output: str) -> str:
    """pytest's last line, e.g. '3 failed, 32 passed in 97.4s'."""
    lines = [ln for ln in output.strip().splitlines() if re.search(r"\b(passed|failed|error)", ln)]
    return lines[-1].strip("= ") if lines else output.strip().splitlines()[-1:][0] if output.strip() else "?"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("names", nargs="*", help="mutations to apply (default: all)")
    p.add_argument("--list", action="store_true", help="list the mutations and exit")
    p.add_argument("--all-failures", action="store_true", help="run every test, not up to the first failure")
    args = p.parse_args(argv)
    if args.list:
        for m in MUTATIONS:
            print(f"{m.name:26} promise {m.guarantee}  {m.what}  [{' '.join(m.tests)}]")
        return 0
    chosen = [m for m in MUTATIONS if not args.names or m.name in args.names]
    unknown = set(args.names) - {m.name for m in MUTATIONS}
    if unknown:
        p.error(f"unknown mutations: {sorted(unknown)}; allowed: {[m.name for m in MUTATIONS]}")

    rows = []
    with tempfile.TemporaryDirectory(prefix="rlq-mutations-") as tmp:
        base = Path(tmp) / "base"
        copy_tree(REPO, base)
        baselines: dict[tuple[str, ...], str] = {}
        for m in chosen:
            if m.tests not in baselines:
                rc, out = run_tests(base, m.tests, stop_at_first=False)
                if rc != 0:
                    print(out[-3000:], file=sys.stderr)
                    raise SystemExit(f"baseline: {' '.join(m.tests)} fails unmutated ({tally(out)})")
                baselines[m.tests] = tally(out)
                print(f"baseline {' '.join(m.tests)}: {baselines[m.tests]}", flush=True)
            work = Path(tmp) / m.name
            shutil.copytree(base, work)
            apply(m, work)
            # --all-failures, and always for submit-twice: how many tests notice, not only whether
            rc, out = run_tests(
                work, m.tests, stop_at_first=not (args.all_failures or m.name == "submit-twice")
            )
            verdict = "caught" if rc == 1 else ("MISSED" if rc == 0 else f"error (pytest exit {rc})")
            first = next((ln for ln in out.splitlines() if ln.startswith("FAILED ")), "")
            rows.append((m, verdict, tally(out), first.removeprefix("FAILED ").split(" - ")[0]))
            print(f"{m.name}: {verdict}: {tally(out)} {first[:160]}", flush=True)
            shutil.rmtree(work, ignore_errors=True)

    print()
    print("| promise | mutation | tests run | result | first test that failed |")
    print("|---|---|---|---|---|")
    for m, verdict, summary, first in rows:
        print(
            f"| {m.guarantee} | `{m.name}`: {m.what} | `{' '.join(m.tests)}` | {verdict} ({summary}) | "
            f"{f'`{first}`' if first else '—'} |"
        )
    return 0 if all(v == "caught" for _, v, _, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
