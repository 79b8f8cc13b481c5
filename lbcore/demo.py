"""`lbcore demo`: the embedded default. No files needed: a self-signed
certificate kept in a state directory, two demo backends on loopback, HTTPS on
8443 and HTTP on 8080 balancing across them, all through the normal config
loader and worker (the demo is a config like any other)."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import os
import socket
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from lbcore.config import load_config_text

CERT_DAYS = 365
RENEW_BEFORE_DAYS = 14
BACKENDS = ("demo-a", "demo-b")


def state_dir() -> Path:
    if os.environ.get("LBCORE_STATE_DIR"):
        return Path(os.environ["LBCORE_STATE_DIR"])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "lbcore"


def ensure_self_signed(directory: Path) -> tuple[Path, Path]:
    """A self-signed ECDSA P-256 certificate for localhost, made once and
    reused until it nears expiry."""
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "demo.crt", directory / "demo.key"
    if cert_path.exists() and key_path.exists():
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            left = cert.not_valid_after_utc - dt.datetime.now(dt.timezone.utc)
            if left > dt.timedelta(days=RENEW_BEFORE_DAYS):
                return cert_path, key_path
        except ValueError:
            pass
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lbcore demo (self-signed)")])
    now = dt.datetime.now(dt.timezone.utc)
    san = x509.SubjectAlternativeName([
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=CERT_DAYS))
            .add_extension(san, critical=False)
            .sign(key, hashes.SHA256()))
    key_bytes = key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_bytes)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


class DemoBackend(asyncio.Protocol):
    """A tiny keep-alive HTTP/1.1 backend that says its own name."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.buf = b""

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, self.buf = self.buf.split(b"\r\n\r\n", 1)
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    self.buf = self.buf[int(value):]
            body = f"hello from {self.name}\n".encode()
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Demo-Backend: "
                + self.name.encode() + b"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


def free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def demo_config_text(cert: Path, key: Path, backend_ports: list[int], https_port: int = 8443,
                     http_port: int = 8080, admin_port: int = 9100) -> str:
    members = "\n".join(f"      - {{name: {name}, address: 127.0.0.1, port: {port}}}"
                        for name, port in zip(BACKENDS, backend_ports, strict=True))
    return f"""\
load_balancer: {{name: lbcore-demo, admin: {{port: {admin_port}}}}}
certificates:
  demo: {{type: server, certificate: "{cert}", private_key: "{key}"}}
listeners:
  - name: demo-https
    protocol: HTTPS
    port: {https_port}
    server_certificate: demo
    http2: true
    default_pool: demo
  - name: demo-http
    protocol: HTTP
    port: {http_port}
    default_pool: demo
pools:
  demo:
    health_check: {{interval: 2, healthy_threshold: 1, unhealthy_threshold: 2}}
    members:
{members}
"""


def run_demo(https_port: int = 8443, http_port: int = 8080, admin_port: int = 9100) -> int:
    from lbcore.worker import serve

    directory = state_dir()
    cert, key = ensure_self_signed(directory)
    ports = free_ports(len(BACKENDS))
    cfg = load_config_text(demo_config_text(cert, key, ports, https_port, http_port,
                                            admin_port),
                           filename="demo.yaml", base_dir=directory)

    async def start_backends(loop: asyncio.AbstractEventLoop) -> None:
        for name, port in zip(BACKENDS, ports, strict=True):
            await loop.create_server(lambda n=name: DemoBackend(n), "127.0.0.1", port)

    policy = cfg.listeners[0].security_policy
    print(f"lbcore demo: HTTPS on :{https_port} ({policy}, self-signed certificate in "
          f"{directory}), HTTP on :{http_port}, balancing across {', '.join(BACKENDS)}; "
          f"admin on 127.0.0.1:{admin_port}.\n"
          f"  try: curl -k https://localhost:{https_port}/", file=sys.stderr, flush=True)
    return serve(cfg, on_loop_started=start_backends)
