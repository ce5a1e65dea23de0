"""Timer trigger: poll every active run once per tick (schedule: app setting RLQ_POLL_SCHEDULE)."""

import logging

import azure.functions as func

from shared.composition import wiring
from shared.errors import TransientError

bp = func.Blueprint()
log = logging.getLogger(__name__)


@bp.function_name("poller")
@bp.timer_trigger(arg_name="timer", schedule="%RLQ_POLL_SCHEDULE%", run_on_startup=False, use_monitor=False)
def poller(timer: func.TimerRequest) -> None:
    report = wiring().service.poll_once()
    if report.errors:  # a tick with failures is a failure: logged as one, and the invocation fails
        log.warning(
            "poll tick failed for %d of %d run(s) (transitions=%s published=%d skipped=%d in %.2fs): %s",
            len(report.errors),
            report.polled + len(report.errors),
            report.transitions,
            report.published,
            report.skipped,
            report.wall_s,
            "; ".join(report.errors[:3])
            + (f"; and {len(report.errors) - 3} more" if len(report.errors) > 3 else ""),
        )
        raise TransientError(f"{len(report.errors)} run(s) could not be polled; first: {report.errors[0]}")
    if report.polled or report.skipped:
        log.info(
            "poll tick: polled=%d transitions=%s published=%d errors=%d skipped=%d in %.2fs",
            report.polled,
            report.transitions,
            report.published,
            len(report.errors),
            report.skipped,
            report.wall_s,
        )
