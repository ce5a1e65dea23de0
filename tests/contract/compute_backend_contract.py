"""The ComputeBackend contract, one suite for every backend: the compute twin, the Ray backend on a
real local head, the Azure ML backend over its in-package workspace twin.

What the core relies on (``shared/core/intake.py``): a redelivered request finds the job already
submitted before it would submit, submit and cancel can be repeated without a second job or an
error, an unknown run id gets a status that says so (or a permanent error naming it, which the
poller records as a failure), and the terminal status carries the trainer's summary.

A backend joins by adding a :class:`Case` factory and a param of the ``case`` fixture in
``test_compute_backends.py``. A case says how to make a request that finishes quickly and one that
runs until it is stopped, how to get the compute ready and how to let a job move on: nothing in
the tests themselves may depend on which backend it is.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from shared.contracts.request import TrainingRequest
from shared.errors import PermanentError
from shared.ports import ComputeBackend, JobStatus

TERMINAL = ("succeeded", "failed", "stopped")


@dataclass
class Case:
    """One backend under the contract, with the few backend-specific moves the tests need."""

    backend: ComputeBackend
    # (request_id, long_running) -> a request this backend can run
    make_request: Callable[[str, bool], TrainingRequest]
    # how many jobs exist for a request (a second submit must not add one)
    jobs_for: Callable[[str], int]
    # how many times the backend asked its platform to create a job for a request (the twin's
    # submit calls, Ray's submit_job, Azure ML's jobs.create_or_update): every platform keeps one
    # job per name, so only the calls show a backend that asks again where it should have found
    submit_calls_for: Callable[[str], int]
    # get the request's compute ready (ensure_compute until it says submit now)
    ready: Callable[[TrainingRequest], None] = lambda request: None
    # let a job move on one step (the twins' clocks); real backends run on their own
    advance: Callable[[str], None] = lambda run_id: None
    timeout_s: float = 10.0
    poll_s: float = 0.0
    cleanup: list[Callable[[], None]] = field(default_factory=list)


def new_id(prefix: str = "cc") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def wait_terminal(case: Case, run_id: str) -> JobStatus:
    deadline = time.monotonic() + case.timeout_s
    while True:
        status = case.backend.status(run_id)
        if status.state in TERMINAL:
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"{run_id} still {status.state} after {case.timeout_s:g} s")
        case.advance(run_id)
        if case.poll_s:
            time.sleep(case.poll_s)


def submitted(case: Case, *, long_running: bool = False) -> tuple[TrainingRequest, str]:
    request = case.make_request(new_id(), long_running)
    case.ready(request)
    return request, case.backend.submit(request)


class ComputeBackendContract:
    """Subclass and provide a ``case`` fixture yielding a :class:`Case`."""

    def test_the_backend_satisfies_the_port(self, case: Case) -> None:
        assert isinstance(case.backend, ComputeBackend)
        assert isinstance(case.backend.name, str) and case.backend.name

    def test_find_before_submit_is_none_then_names_the_submitted_run(self, case: Case) -> None:
        request = case.make_request(new_id(), False)
        case.ready(request)
        assert case.backend.find(request.request_id) is None
        run_id = case.backend.submit(request)
        assert run_id
        assert case.submit_calls_for(request.request_id) == 1
        assert case.backend.find(request.request_id) == run_id
        assert case.backend.find(new_id("other")) is None  # another request's job is not this one

    def test_submit_again_returns_the_same_run_and_starts_no_second_job(self, case: Case) -> None:
        request, run_id = submitted(case)
        assert case.backend.submit(request) == run_id
        assert case.jobs_for(request.request_id) == 1
        # a redelivery does what the service does: find first, submit only when nothing was found
        calls = case.submit_calls_for(request.request_id)
        assert (case.backend.find(request.request_id) or case.backend.submit(request)) == run_id
        assert case.jobs_for(request.request_id) == 1
        assert case.submit_calls_for(request.request_id) == calls  # found: the platform was not asked

    def test_an_unknown_run_gets_a_status_that_names_it(self, case: Case) -> None:
        unknown = f"rlq-{new_id('gone')}-head"
        try:
            status = case.backend.status(unknown)
        except PermanentError as err:  # the poller records this as a failed run with this text
            assert unknown in err.description
        else:
            assert status.state == "failed"
            assert status.error and unknown in status.error

    def test_terminal_status_carries_the_summary(self, case: Case) -> None:
        _request, run_id = submitted(case)
        status = wait_terminal(case, run_id)
        assert status.state == "succeeded", status
        assert status.summary, "the terminal status carries the trainer's summary"
        assert isinstance(status.summary.final_reward, (int, float))
        assert status.summary.checkpoint_path
        assert status.progress is not None and status.progress.iteration >= 1
        assert case.backend.status(run_id).summary == status.summary  # asking again says the same

    def test_cancel_twice_stops_the_job_once_and_never_raises(self, case: Case) -> None:
        request, run_id = submitted(case, long_running=True)
        case.backend.cancel(run_id)
        case.backend.cancel(run_id)
        status = wait_terminal(case, run_id)
        assert status.state == "stopped", status
        case.backend.cancel(run_id)  # after the end: nothing to do, no error
        assert case.backend.status(run_id).state == "stopped"
        assert case.jobs_for(request.request_id) == 1

    def test_cancel_after_success_changes_nothing(self, case: Case) -> None:
        _request, run_id = submitted(case)
        assert wait_terminal(case, run_id).state == "succeeded"
        case.backend.cancel(run_id)
        assert case.backend.status(run_id).state == "succeeded"
