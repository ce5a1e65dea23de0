"""Real HTTP(S) receivers on 127.0.0.1, a resolver override, and a recording sleep.

The receivers are plain ``http.server`` servers in threads: what they record is what really went
over a socket, so the tests check the notifier's bytes and headers, not a mock's view of them.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # 24 random bytes, base64
OLD_SECRET = "whsec_dGhpcyBpcyB0aGUgb2xkIHNlY3JldCBrZXkh"


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: bytes
    sni: str | None = None


@dataclass
class Receiver:
    """One server. ``respond(...)`` queues (status, headers) answers; then it answers 200."""

    server: ThreadingHTTPServer
    scheme: str = "http"
    requests: list[Seen] = field(default_factory=list)
    script: deque[tuple[int, dict[str, str]]] = field(default_factory=deque)
    sni_names: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    def respond(self, *answers: int | tuple[int, dict[str, str]]) -> None:
        for a in answers:
            self.script.append(a if isinstance(a, tuple) else (a, {}))


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            with receiver.lock:
                sni = receiver.sni_names[-1] if receiver.sni_names else None
                receiver.requests.append(
                    Seen(self.path, {k.lower(): v for k, v in self.headers.items()}, body, sni)
                )
                status, headers = receiver.script.popleft() if receiver.script else (200, {})
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    return Handler


def _start(tls: ssl.SSLContext | None = None) -> Receiver:
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    server.daemon_threads = True
    receiver = Receiver(server=server, scheme="https" if tls else "http")
    server.RequestHandlerClass = _handler(receiver)
    if tls is not None:
        tls.sni_callback = lambda _sock, name, _ctx: receiver.sni_names.append(name or "")
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return receiver


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    """A factory of receivers, all stopped at the end of the test."""
    started: list[Receiver] = []

    def make(tls: ssl.SSLContext | None = None) -> Receiver:
        r = _start(tls)
        started.append(r)
        return r

    yield make
    for r in started:
        r.server.shutdown()
        r.server.server_close()


@pytest.fixture
def receiver(receivers: Callable[..., Receiver]) -> Receiver:
    return receivers()


class FakeDNS:
    """Answers chosen names with chosen addresses; real resolution for everything else.

    ``answers[name]`` is a list of address lists: each lookup takes the next one (the last one
    repeats), which lets a test change the answer between lookups (DNS rebinding).
    """

    def __init__(self, real: Callable[..., list]) -> None:
        self.real = real
        self.answers: dict[str, list[list[str]]] = {}
        self.asked: list[str] = []

    def set(self, name: str, *answers: list[str]) -> None:
        self.answers[name] = list(answers)

    def __call__(self, host, port, family=0, type=0, proto=0, flags=0):
        name = host.decode() if isinstance(host, bytes) else host
        if name not in self.answers:
            return self.real(host, port, family, type, proto, flags)
        self.asked.append(name)
        queue = self.answers[name]
        addrs = queue.pop(0) if len(queue) > 1 else queue[0]
        if not addrs:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        out = []
        for a in addrs:
            ip = ipaddress.ip_address(a)
            if ip.version == 4:
                out.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, int(port or 0))))
            else:
                out.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (a, int(port or 0), 0, 0)))
        return out


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> FakeDNS:
    fake = FakeDNS(socket.getaddrinfo)
    monkeypatch.setattr(socket, "getaddrinfo", fake)
    return fake


class Sleeps(list):
    """An injected ``sleep`` that records what it was asked to wait and returns at once."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@dataclass
class Pki:
    server: ssl.SSLContext
    client: ssl.SSLContext


def make_pki(hostname: str) -> Pki:
    """A throw-away CA and a server certificate for ``hostname`` (needs ``cryptography``)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("rlq test CA"))
        .issuer_name(name("rlq test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name(hostname))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        cert_file, key_file = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cadata=ca.public_bytes(serialization.Encoding.PEM).decode())
    return Pki(server=server, client=client)
