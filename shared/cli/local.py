"""The function app on this machine: ``rlq serve`` (host it until stopped) and ``rlq demo`` (host
it, train once, verify the signed webhook), with the pieces they share (the host's set-up, ports,
logging) and the demo's loopback webhook receiver."""

from __future__ import annotations

import base64
import contextlib
import logging
import secrets
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Annotated, Any, Self

import typer
from pydantic import SecretStr
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from shared.cli.context import EXIT_FAILED, EXIT_OK, errors, exit_code_for, state_of
from shared.cli.render import err_console, follow, out_console, save_curve
from shared.contracts.run import TERMINAL, RunState
from shared.errors import PermanentError
from shared.ports import ReadinessProbe
from shared.webhook_verify import verify as verify_webhook

if TYPE_CHECKING:
    from shared.composition import Wiring
    from shared.localhost import LocalHost

DEMO_REQUEST: dict[str, Any] = {
    "experiment": "demo",
    "algorithm": "IMPALA",
    "env": "CartPole-v1",
    "stop": {"episode_reward_mean": 150, "time_total_s": 300},
}


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted, not the stream that was
    current when logging was configured (an in-process CLI runner swaps and closes it)."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def configure_logging(level: int) -> None:
    root = logging.getLogger()
    if not any(getattr(h, "_rlq", False) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        )
        handler._rlq = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(logging.WARNING)
    for name in ("rlq", "shared", "functions"):
        logging.getLogger(name).setLevel(level)
    # Ray's job client narrates each upload at INFO on handlers of its own; keep it out of quiet output.
    for name in ("ray.dashboard.modules.dashboard_sdk", "ray._private.runtime_env.packaging"):
        logging.getLogger(name).setLevel(logging.INFO if level <= logging.INFO else logging.WARNING)


@contextlib.contextmanager
def hosted(
    w: Wiring,
    *,
    port: int,
    ray: bool = True,
    keep_ray: bool = False,
    on_ray: Callable[[str], None] | None = None,
) -> Iterator[LocalHost]:
    """The function app on a :class:`LocalHost` (background threads), with the local Ray head
    when the backend is Ray without an address; everything this started is stopped on exit."""
    from shared.localhost import LocalHost

    if w.broker is None:
        raise PermanentError(
            "the local host runs on the SQLite broker (RLQ_BROKER=sqlite); with Service Bus "
            "run the app with Azure Functions Core Tools (func start)",
            reason="Unsupported",
        )
    settings = w.settings
    started_ray = False
    if ray and settings.backend == "ray" and settings.ray_address is None:
        from shared.localhost import ray_head

        address = ray_head.ensure_local_head(
            data_dir=settings.data_dir,
            dashboard_port=settings.ray_dashboard_port,
            num_cpus=settings.ray_num_cpus,
            token=settings.ray_auth_token,
        )
        started_ray = True
        if on_ray is not None:
            on_ray(address)
    host = LocalHost.for_wiring(w, http_port=port)
    try:
        host.start()
        yield host
    finally:
        host.close()
        if started_ray and not keep_ray:
            from shared.localhost import ray_head

            # this head only, and not while another process (a second serve) still uses it
            ray_head.stop_local_head()


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def choose_port(port: int, *, fallback: bool) -> int:
    """``port`` when free; 0 or (with ``fallback``) a taken port: a free one picked now, so links in
    completion messages can name it before the server starts."""
    if port and _port_free(port):
        return port
    if port and not fallback:
        raise PermanentError(
            f"port {port} on 127.0.0.1 is in use; pick another with --port (0: any free port)",
            reason="PortInUse",
        )
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def functions_table(host: LocalHost) -> Table:
    table = Table(title="functions", title_justify="left", expand=False)
    table.add_column("name", style="bold")
    table.add_column("trigger")
    table.add_column("binding", overflow="fold")
    for f in host.functions:
        detail = f.detail
        if f.trigger == "httpTrigger":
            method, _, route = detail.partition(" ")
            detail = f"{method} {host.base_url}/{host.config.route_prefix}{route}"
        table.add_row(f.name, f.trigger, detail)
    return table


def serve(
    ctx: typer.Context,
    port: Annotated[int, typer.Option("--port", help="HTTP port on 127.0.0.1 (0: any free port).")] = 7071,
    keep_ray: Annotated[
        bool, typer.Option("--keep-ray", help="Leave the local Ray head running on exit.")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Run the function app locally (queue, timer and HTTP triggers) until Ctrl-C or SIGTERM."""
    import signal

    state = state_of(ctx)
    configure_logging(logging.DEBUG if verbose else logging.INFO)
    with errors(state):
        port = choose_port(port, fallback=False)
        state.link_to_port(port)
        w = state.wiring()
        if isinstance(w.store, ReadinessProbe):
            w.store.check()  # a damaged or read-only run store stops serve here, said once
        console = out_console()
        stop = threading.Event()
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            with hosted(
                w, port=port, keep_ray=keep_ray, on_ray=lambda a: console.print(f"Ray head: {a}")
            ) as host:
                console.print(functions_table(host))
                console.print(f"dashboard: {host.base_url}/api/ui")
                console.print(f"serving {w.settings.data_dir} · API {host.base_url}/api · Ctrl-C stops")
                stop.wait()
                console.print("stopping: finishing in-flight work")
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


class WebhookReceiver:
    """A loopback endpoint for the demo: verifies each delivery's signature and keeps the events."""

    def __init__(self, secrets_: list[str]) -> None:
        self.secrets = secrets_
        self.events: list[dict[str, Any]] = []
        self.failures: list[str] = []
        self.received = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    event = receiver.verify(body, dict(self.headers.items()))
                except Exception as err:  # noqa: BLE001 - any failure is a refused delivery
                    receiver.failures.append(str(err))
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                receiver.events.append(event)
                receiver.received.set()
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.2,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/rlq-demo"

    def verify(self, body: bytes, headers: dict[str, str]) -> dict[str, Any]:
        """The event, once its Standard Webhooks signature checks out; raises otherwise."""
        return verify_webhook(body, headers, self.secrets)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def new_webhook_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def demo(
    ctx: typer.Context,
    port: Annotated[
        int, typer.Option("--port", help="HTTP port of the local API (0: any free port).")
    ] = 7071,
    backend: Annotated[
        str | None, typer.Option("--backend", help="ray (default) or twin (no training: a smoke run).")
    ] = None,
    timeout_s: Annotated[float, typer.Option("--timeout-s", help="Give up after this long.")] = 900.0,
    interval_s: Annotated[
        float, typer.Option("--interval-s", min=0.1, help="Seconds between progress reads.")
    ] = 2.0,
    keep_ray: Annotated[bool, typer.Option("--keep-ray", help="Leave the local Ray head running.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show the host's log lines.")] = False,
) -> None:
    """End to end on this machine: host the app, train IMPALA on CartPole to a mean reward of 150,
    publish the completion message, deliver a signed webhook, write the reward curve."""
    state = state_of(ctx)
    configure_logging(logging.INFO if verbose else logging.WARNING)
    with errors(state):
        if backend is not None:
            state.override(backend=backend)
        wanted, port = port, choose_port(port, fallback=True)
        if wanted and port != wanted:
            err_console().print(f"port {wanted} is in use; the demo's API is on port {port}")
        state.link_to_port(port)
        settings = state.settings()
        secret_list = [s.get_secret_value() for s in settings.webhook_secrets]
        if not secret_list:  # sign the demo's webhook with a fresh secret of its own
            secret_list = [new_webhook_secret()]
            state.override(webhook_secrets=[SecretStr(secret_list[0])])
            settings = state.settings()
        console = out_console()
        with WebhookReceiver(secret_list) as receiver:
            w = state.wiring()
            with hosted(
                w,
                port=port,
                keep_ray=keep_ray,
                on_ray=lambda a: console.print(f"local Ray head ready at {a}"),
            ) as host:
                console.print(f"function app hosted at {host.base_url}/api (queue, timer and HTTP triggers)")
                body = {
                    **DEMO_REQUEST,
                    "request_id": f"demo-{uuid.uuid4().hex[:10]}",
                    "notify": {"webhooks": [receiver.url]},
                }
                rid = w.service.enqueue(body)
                console.print(f"submitted {rid}: IMPALA on CartPole-v1, stop at mean reward 150 or 300 s")
                console.print(f"dashboard: {host.base_url}/api/ui/runs/{rid}")
                record = follow(
                    lambda: w.service.get(rid),
                    settings,
                    console=console,
                    interval_s=interval_s,
                    timeout_s=timeout_s,
                    until=lambda r: (
                        r.state in (RunState.notified, RunState.rejected)
                        or (r.state in TERMINAL and r.completion is None)
                    ),
                )
                notified = record.state is RunState.notified and record.published_at is not None
                if notified:
                    receiver.received.wait(max(30.0, 3 * settings.webhook_timeout_s))
                    for _ in range(int(10 / 0.2)):  # the notifier records deliveries just after sending
                        record = w.service.get(rid)
                        if record.deliveries:
                            break
                        time.sleep(0.2)
        if record.completion is not None:
            console.print(
                Panel(
                    record.completion.model_dump_json(indent=2, exclude_none=True),
                    title="completion message",
                    title_align="left",
                    expand=False,
                )
            )
        if receiver.events:
            console.print("webhook delivered and verified")
        elif notified:
            why = receiver.failures[-1] if receiver.failures else "no delivery arrived"
            console.print(Text(f"webhook not verified: {why}", style="yellow"))
        png = save_curve(record, settings)
        if png is not None:
            console.print(f"reward curve: {png}")
        if record.error:
            console.print(Text(f"error: {record.error}", style="red"))
        ok = notified and record.status == "Completed"
        console.print(
            Text(
                f"demo {'passed' if ok else 'did not complete'}: {record.state.value}"
                f"{' (' + record.status + ')' if record.status else ''}",
                style="green" if ok else "red",
            )
        )
        raise typer.Exit(EXIT_OK if ok else exit_code_for(record) or EXIT_FAILED)
