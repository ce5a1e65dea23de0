"""The HTTP trigger driver: the app's route table, served on loopback by waitress.

waitress gives a bounded thread pool, a listen backlog, an idle timeout, and 400s for a malformed
request line, headers, ``Content-Length`` or chunked body; the routes stay the function app's:
every request goes through :meth:`HttpDriver.handle` and the app's route table (also usable
without a socket, as the tests do).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import azure.functions as func

from shared.localhost.bindings import (
    HostedFunction,
    Invocation,
    as_response,
    call_function,
    content_type,
    describe_error,
    json_response,
)

log = logging.getLogger(__name__)

MAX_HTTP_BODY_BYTES = 16 * 1024 * 1024

Record = Callable[..., Invocation]


class HttpDriver:
    """Serves the app's HTTP triggers (``functions``) under ``route_prefix``."""

    def __init__(
        self,
        functions: list[HostedFunction],
        *,
        route_prefix: str,
        record: Record,
        port: int,
        threads: int,
        backlog: int,
        idle_timeout_s: int,
    ) -> None:
        self.functions = sorted(functions, key=lambda f: f.route.sort_key if f.route else (9, 0, 0))
        self._route_prefix = route_prefix
        self._record = record
        self._requested_port = port
        self._threads = threads
        self._backlog = backlog
        self._idle_timeout_s = idle_timeout_s
        self.server: Any = None  # waitress.server.TcpWSGIServer while HTTP is served
        self.thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port the server listens on (the real one when started with port 0)."""
        return int(self.server.effective_port) if self.server is not None else self._requested_port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- the server ------------------------------------------------------------------------

    def start(self) -> None:
        from waitress.server import create_server  # the local host's own dependency, not the app's

        self.server = create_server(
            self.wsgi,
            host="127.0.0.1",
            port=self._requested_port,
            threads=self._threads,
            backlog=self._backlog,
            connection_limit=max(100, 4 * self._backlog),
            channel_timeout=self._idle_timeout_s,
            cleanup_interval=max(1, min(30, self._idle_timeout_s // 2)),
            max_request_body_size=MAX_HTTP_BODY_BYTES,
            # poll(), not select(): select() cannot watch a descriptor numbered FD_SETSIZE (1024) or
            # more, and its loop dies on the first such socket; a busy host gets there.
            asyncore_use_poll=True,
            ident="rlq-localhost",
            expose_tracebacks=False,
            clear_untrusted_proxy_headers=False,
        )
        self.thread = threading.Thread(target=self.server.run, name="rlq-http", daemon=True)
        self.thread.start()

    def stop(self, timeout_s: float) -> None:
        server, self.server = self.server, None
        if server is None:
            return
        # The request threads first: a thread finishing a request wakes the loop through the
        # trigger's pipe, which must still be open (a closed descriptor may by then be another file).
        server.task_dispatcher.shutdown(timeout=min(timeout_s, 5.0))
        sockets = server._map  # every channel, the listener and the trigger, on the server's loop

        def close_all() -> None:  # runs on the server's loop thread: closing empties the map, ending run()
            for dispatcher in list(sockets.values()):
                with contextlib.suppress(OSError):
                    dispatcher.close()

        try:
            server.trigger.pull_trigger(close_all)
        except OSError as err:
            # The loop cannot be woken (its wake-up pipe is gone): close from here; the loop's
            # next poll (at most 1 s away) finds nothing left to watch and run() returns.
            log.warning("HTTP server's wake-up pipe failed (%s); closing its sockets from this thread", err)
            close_all()
        if self.thread is not None:
            self.thread.join(timeout=timeout_s)
            self.thread = None

    def wsgi(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        """The WSGI face of :meth:`handle` (what the HTTP server calls)."""
        method = environ["REQUEST_METHOD"]
        # REQUEST_URI is the path as sent: matched still encoded, as handle expects
        raw = environ.get("REQUEST_URI") or environ.get("PATH_INFO", "/")
        if "?" not in raw and environ.get("QUERY_STRING"):
            raw += "?" + environ["QUERY_STRING"]
        url = f"http://{environ.get('HTTP_HOST') or self.base_url[7:]}{raw}"
        headers: dict[str, str] = {}
        for key, value in environ.items():
            if key.startswith("HTTP_"):
                headers[key[5:].replace("_", "-").title()] = value
            elif key in ("CONTENT_TYPE", "CONTENT_LENGTH") and value:
                headers[key.replace("_", "-").title()] = value
        length = int(environ.get("CONTENT_LENGTH") or 0)  # the server has checked it (400 if not)
        body = environ["wsgi.input"].read(length) if length > 0 else b""
        resp = self.handle(method, url, headers, body)
        payload = resp.get_body() if method != "HEAD" else b""
        out: list[tuple[str, str]] = []
        seen = set()
        for k, v in resp.headers.items():
            if k.lower() in ("content-length", "connection", "transfer-encoding"):
                continue  # the server frames the response itself
            seen.add(k.lower())
            out.append((k, v))
        if "content-type" not in seen:
            out.append(("Content-Type", content_type(resp)))
        out.append(("Content-Length", str(len(payload))))
        start_response(f"{resp.status_code} {_reason(resp.status_code)}", out)
        return [payload]

    # --- routing ---------------------------------------------------------------------------

    def handle(self, method: str, url: str, headers: Mapping[str, str], body: bytes) -> func.HttpResponse:
        """Route one request to its function."""
        parts = urlsplit(url)
        path = parts.path  # matched still encoded: an encoded '/' inside a parameter stays inside it
        prefix = "/" + self._route_prefix if self._route_prefix else ""
        if prefix and not (path == prefix or path.startswith(prefix + "/")):
            return _refused(404, "(path)", f"no function at {path}")
        sub = path[len(prefix) :]
        allowed: set[str] = set()
        for h in self.functions:
            assert h.route is not None
            params = h.route.match(sub)
            if params is None:
                continue
            if h.methods is not None and method.upper() not in h.methods:
                allowed |= h.methods
                continue
            # blank values kept (``?state=``), as the Functions host hands them to the function
            query = dict(parse_qsl(parts.query, keep_blank_values=True))
            return self._invoke(h, method, url, headers, body, params, query)
        if allowed:
            resp = _refused(
                405, "(method)", f"method {method} not allowed; allowed: {', '.join(sorted(allowed))}"
            )
            resp.headers["Allow"] = ", ".join(sorted(allowed))
            return resp
        return _refused(404, "(path)", f"no function at {path}")

    def _invoke(
        self,
        h: HostedFunction,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
        route_params: dict[str, str],
        query: dict[str, str],
    ) -> func.HttpResponse:
        t0 = time.perf_counter()
        req = func.HttpRequest(
            method=method.upper(),
            url=url,
            headers=dict(headers),
            params=query,
            route_params=route_params,
            body=body,
        )
        try:
            resp = as_response(call_function(h, req, {}))
        except Exception as err:  # noqa: BLE001 - a handler or broker fault never stops the host
            self._record(
                h, "error", t0, message_id=f"{method.upper()} {urlsplit(url).path}", error=describe_error(err)
            )
            return _refused(500, "(service)", "the function failed; see the host log")
        self._record(h, str(resp.status_code), t0, message_id=f"{method.upper()} {urlsplit(url).path}")
        return resp


def _refused(status: int, field: str, message: str) -> func.HttpResponse:
    """The host's own answers (no such route or method, a failed function) in the app's error shape:
    ``{"errors": [{"field", "message"}]}``, as every other 4xx / 5xx of the API."""
    return json_response(status, {"errors": [{"field": field, "message": message}]})


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Status"
