"""Readiness (``/api/health``): run each dependency's probe, bounded in time, and reuse the answer briefly.

A health endpoint may be hit every few seconds (a load balancer, Azure's health check, a person
with ``watch curl``); each probe is a real call (a write to the run table, a link opened on the
queue, a call to the compute). So:

* the probes run side by side, each on its own thread, and the answer waits at most
  ``timeout_s`` for them: a probe still running then is reported as not answering (a check that
  fails), whatever its SDK's own timeouts do;
* a probe that has not returned yet is not started again: the next answer says how long it has
  been running, so a hung dependency never piles up threads;
* an answer is reused for ``ttl_s`` (concurrent callers wait for the one check in flight), so the
  dependencies see at most one round of probes per ``ttl_s``, however often the endpoint is hit.

A probe is :class:`shared.ports.ReadinessProbe`: ``check()`` returns what it checked and raises
when the dependency is not ready; a dependency without one is listed with ``ok`` None.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from shared.ports import ReadinessProbe

TTL_S = 5.0  # an answer is reused this long
TIMEOUT_S = 8.0  # the answer waits at most this long for the probes
MAX_DETAIL = 1000  # room for a damaged file's two ways out, with its path twice


@dataclass(frozen=True)
class Check:
    """One dependency's readiness: ``ok`` None when the dependency has no check of its own."""

    name: str
    ok: bool | None
    detail: str


@dataclass(frozen=True)
class Readiness:
    """Whether this instance can take work now (``/api/health``): every check that ran passed.

    ``age_s``: how long ago the checks ran (0 for a fresh answer, up to the gate's ``ttl_s``)."""

    checks: list[Check]
    age_s: float = 0.0

    @property
    def ready(self) -> bool:
        return all(c.ok is not False for c in self.checks)


def _failure(err: BaseException) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())}"[:MAX_DETAIL]


class _Probe:
    """One probe running on its own thread; ``result`` once it returned or raised."""

    def __init__(self, probe: ReadinessProbe, started: float) -> None:
        self.started = started
        self.done = threading.Event()
        self.result: tuple[bool, str] | None = None
        self._probe = probe
        threading.Thread(target=self._run, name="rlq-readiness", daemon=True).start()

    def _run(self) -> None:
        try:
            self.result = (True, " ".join(str(self._probe.check()).split())[:MAX_DETAIL])
        except Exception as err:  # noqa: BLE001 - any failure means not ready: reported, not raised
            self.result = (False, _failure(err))
        finally:
            self.done.set()


class ReadinessGate:
    """Runs the probes of ``deps`` (name, dependency) with the bounds above; one per service."""

    def __init__(
        self,
        deps: Callable[[], Sequence[tuple[str, object]]],
        *,
        ttl_s: float = TTL_S,
        timeout_s: float = TIMEOUT_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._deps = deps
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._answer: tuple[float, list[Check]] | None = None
        self._running: dict[str, _Probe] = {}

    def readiness(self) -> Readiness:
        with self._lock:  # callers arriving during a check wait for it and share its answer
            now = self._monotonic()
            if self._answer is not None and now - self._answer[0] < self.ttl_s:
                return Readiness(list(self._answer[1]), age_s=round(now - self._answer[0], 3))
            checks = self._check_all()
            self._answer = (self._monotonic(), checks)
            return Readiness(list(checks))

    def _check_all(self) -> list[Check]:
        started = self._monotonic()
        probes: list[tuple[str, _Probe | None, bool]] = []  # name, probe, started by this round
        for name, dep in self._deps():
            if not isinstance(dep, ReadinessProbe):
                probes.append((name, None, False))
                continue
            previous = self._running.get(name)
            if previous is not None and not previous.done.is_set():
                probes.append((name, previous, False))
                continue
            self._running[name] = _Probe(dep, started)
            probes.append((name, self._running[name], True))
        deadline = started + self.timeout_s
        checks = []
        for name, probe, fresh in probes:
            if probe is None:
                checks.append(Check(name, None, "no readiness check"))
                continue
            probe.done.wait(max(0.0, deadline - self._monotonic()))
            if probe.result is not None and fresh:
                ok, detail = probe.result
                checks.append(Check(name, ok, detail))
            elif probe.result is not None:  # a hung probe from an earlier round has just returned
                ok, detail = probe.result
                checks.append(Check(name, ok, detail + " (a check started earlier, answered late)"))
            else:
                running = self._monotonic() - probe.started
                checks.append(
                    Check(name, False, f"no answer within {self.timeout_s:g}s (checking for {running:.0f}s)")
                )
        return checks
