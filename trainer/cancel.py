"""Cancellation: SIGTERM (rlq's cancel, Ray's ``stop_job``) and SIGINT as one :class:`CancelToken`.

Outside ``algo.train()`` (Ray start, the algorithm build, which can wait for resources) a signal
stops the run at once; inside it, or while the run is being finished, the signal is only recorded
and :meth:`CancelToken.check` raises it after the iteration, so a cancel takes effect within one
iteration and the final checkpoint and summary are still written.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from trainer.console import log


class Canceled(BaseException):
    """Raised where a cancel takes effect; a BaseException so no ``except Exception`` swallows it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 143 if self.signum == signal.SIGTERM else 130


class CancelToken:
    def __init__(self) -> None:
        self.signum: int | None = None  # the first signal received
        self._deferring = False

    def install(self) -> None:
        """(Re)install the handlers: Ray's core worker replaces SIGTERM's with an abort."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def check(self) -> None:
        if self.signum is not None:
            raise Canceled(self.signum)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Within the block a signal is only recorded (for ``algo.train()``)."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False

    def defer(self) -> None:
        """From now on a signal is only recorded: the run is finishing its checkpoint and summary."""
        self._deferring = True

    @staticmethod
    def ignore() -> None:
        """A second signal after the cancel took effect does nothing."""
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
        if not self._deferring:
            raise Canceled(signum)
        log(f"received signal {signum}; stopping after the current iteration")
