"""Timer trigger: poll every active run once per tick (schedule: app setting RLQ_POLL_SCHEDULE)."""

import logging

import azure.functions as func

from shared.composition import wiring

bp = func.Blueprint()
log = logging.getLogger(__name__)


@bp.function_name("poller")
@bp.timer_trigger(arg_name="timer", schedule="%RLQ_POLL_SCHEDULE%", run_on_startup=False, use_monitor=False)
def poller(timer: func.TimerRequest) -> None:
    report = wiring().service.poll_once()
    if report.polled or report.errors or report.skipped:
        log.info(
            "poll tick: polled=%d transitions=%s published=%d errors=%d skipped=%d in %.2fs",
            report.polled,
            report.transitions,
            report.published,
            len(report.errors),
            report.skipped,
            report.wall_s,
        )
