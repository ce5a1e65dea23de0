"""A local Functions host: runs the same ``function_app.py`` on one machine, on the SQLite broker.

Its rooms: :mod:`.config` (host.json, app settings, schedules, route templates), :mod:`.bindings`
(the function table, the objects handed to functions, message conversion), :mod:`.host`
(:class:`LocalHost`: the lifecycle, the worker pool, the invocation log), one driver per trigger
kind (:mod:`.queue_driver`, :mod:`.timer_driver`, :mod:`.http_driver`), and :mod:`.ray_head` (the
private local Ray head the Ray Jobs backend starts on demand in one-machine mode).

Two ways to drive it:

* background threads for ``rlq serve`` / ``rlq demo``: :meth:`LocalHost.start` / :meth:`LocalHost.stop`
  (or :meth:`LocalHost.run_forever`, which stops on Ctrl-C / SIGTERM);
* deterministic steps for tests, with no sleeps: :meth:`LocalHost.drain` (every deliverable
  message, on the calling thread), :meth:`LocalHost.tick_timers` (every timer due at ``now``),
  :meth:`LocalHost.renew_locks` (one pass of the lock renewer).

:meth:`LocalHost.for_wiring` is the one set-up: the repository's function app on a wiring's broker
and settings, with the wiring installed for the handlers.

What it does not do: enforce function keys (``func start`` does not either; the server listens on
127.0.0.1 only), sessions, batch (``cardinality=many``) triggers, or kill a handler that overruns
``functionTimeout`` (Python cannot stop a thread; the overrun is logged).
"""

from shared.localhost.bindings import FunctionInfo, Invocation
from shared.localhost.config import (
    HostConfig,
    LocalHostError,
    Route,
    Schedule,
    default_host_json,
    parse_timespan,
    resolve_app_settings,
)
from shared.localhost.host import LocalHost, load_function_app, running
from shared.localhost.http_driver import MAX_HTTP_BODY_BYTES
from shared.localhost.queue_driver import DEAD_LETTER_REASON

__all__ = [
    "DEAD_LETTER_REASON",
    "MAX_HTTP_BODY_BYTES",
    "FunctionInfo",
    "HostConfig",
    "Invocation",
    "LocalHost",
    "LocalHostError",
    "Route",
    "Schedule",
    "default_host_json",
    "load_function_app",
    "parse_timespan",
    "resolve_app_settings",
    "running",
]
