"""A target for bench/locustfile.py: lbcore on HTTPS with a certificate from
a throwaway test CA, in front of two backends that serve the site the
locustfile walks (/, /api/..., /static/ files of 1 KiB to 1 MiB, 404 for
anything else) and name themselves in X-Backend. The pool uses lb_cookie sticky
sessions, so the locustfile can check that a user stays on one backend.

    .venv/bin/python -m bench.locust_target [--port P] [--admin-port P]
        [--origin python|nginx] [--dir DIR] [--workers N]

Every port is free-chosen unless given. The backends are Python
(bench/locust_origin.py, in this process: nothing to install) or, with
`--origin nginx`, two nginx servers (`make locust-target ORIGIN=nginx`
installs nginx when it is missing). Prints the LBCORE_CA to export, the host
and a locust command line, then runs until interrupted (Ctrl-C / SIGTERM).
Not part of `make bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bench import locust_origin
from bench.harness import ensure_free, wait_port
from bench.locust_origin import STATIC

BACKENDS = ("a", "b")


def _pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_ca_and_server(d: Path) -> tuple[Path, Path, Path]:
    """A test CA, and a localhost / 127.0.0.1 server certificate it signs."""
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lbcore locust test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                       False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
    ca_path, crt, k = d / "ca.crt", d / "server.crt", d / "server.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(_pem(key))
    k.chmod(0o600)
    return ca_path, crt, k


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nginx_binary() -> str | None:
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")


def write_nginx(d: Path, ports: list[int]) -> Path:
    """The site as two nginx servers (--origin nginx)."""
    www = d / "www" / "static"
    www.mkdir(parents=True, exist_ok=True)
    for name, size in STATIC.items():
        (www / name).write_bytes(os.urandom(size))
    for path in (d, d / "www", www, *www.iterdir()):     # nginx's worker runs as www-data
        path.chmod(0o755)
    servers = "".join(f"""
  server {{ listen 127.0.0.1:{p}; add_header X-Backend {name} always;
           location = / {{ default_type text/html; return 200 "<h1>home ({name})</h1>\\n"; }}
           location /api/ {{ default_type application/json;
                            return 200 '{{"ok": true, "backend": "{name}"}}\\n'; }}
           location /static/ {{ root {d}/www; }}
           location / {{ return 404; }} }}""" for name, p in zip(BACKENDS, ports, strict=True))
    conf = d / "backends.conf"
    conf.write_text(f"""worker_processes 1; daemon off; pid {d}/backends.pid;
error_log {d}/backends.err; events {{ worker_connections 4096; }}
http {{ access_log off; sendfile on; keepalive_requests 100000; {servers} }}
""")
    return conf


def write_lbcore(d: Path, port: int, admin: int, backend_ports: list[int], workers: str
                 ) -> Path:
    members = "".join(f"\n      - {{name: {name}, address: 127.0.0.1, port: {p}}}"
                      for name, p in zip(BACKENDS, backend_ports, strict=True))
    conf = d / "lbcore.yaml"
    conf.write_text(f"""load_balancer: {{workers: {workers}, admin: {{port: {admin}}},
                access_log: {{path: "off"}}}}
certificates:
  www: {{type: server, certificate: "{d}/server.crt", private_key: "{d}/server.key"}}
listeners:
  - {{name: https, protocol: HTTPS, address: 127.0.0.1, port: {port}, default_pool: web,
     server_certificate: www, http2: true}}
pools:
  web:
    sticky_session: {{type: lb_cookie}}
    health_check: {{enabled: false}}
    members:{members}
""")
    return conf


async def serve(args: argparse.Namespace) -> int:
    d = args.dir or Path(tempfile.mkdtemp(prefix="lbcore-locust-"))
    d.mkdir(parents=True, exist_ok=True)
    ca, _, _ = make_ca_and_server(d)
    port = args.port or free_port()
    admin = args.admin_port or free_port()
    for p in (port, admin):
        ensure_free(p, "the locust target")
    procs: list[subprocess.Popen] = []
    servers = []
    if args.origin == "python":
        servers = await locust_origin.start([(name, 0) for name in BACKENDS])
        backend_ports = [s.sockets[0].getsockname()[1] for s in servers]
    else:
        nginx = nginx_binary()
        if nginx is None:
            print("nginx not found: `make locust-target ORIGIN=nginx` installs it (Debian "
                  "package nginx), or use the Python origin (--origin python, the default)",
                  file=sys.stderr)
            return 1
        backend_ports = [free_port() for _ in BACKENDS]
        procs.append(subprocess.Popen([nginx, "-c", str(write_nginx(d, backend_ports))]))
    conf = write_lbcore(d, port, admin, backend_ports, args.workers)
    log = (d / "lbcore.log").open("ab")
    procs.append(subprocess.Popen([sys.executable, "-m", "lbcore", "run", "-c", str(conf)],
                                  stdout=log, stderr=log))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        for p in (*backend_ports, port):
            owner = procs[0] if p in backend_ports and args.origin == "nginx" else procs[-1]
            await loop.run_in_executor(None, lambda p=p, o=owner: wait_port(p, proc=o))
        print(f"export LBCORE_CA={ca}\nhost: https://localhost:{port}\n"
              f"admin: http://127.0.0.1:{admin}/metrics\n"
              f"lbcore log: {d / 'lbcore.log'}\n"
              f"run: LBCORE_CA={ca} .venv/bin/locust -f bench/locustfile.py --headless "
              f"-H https://localhost:{port} -u 50 -r 10 -t 60s", flush=True)
        while not stop.is_set() and all(proc.poll() is None for proc in procs):
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        for server in servers:
            server.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.locust_target")
    p.add_argument("--dir", type=Path, default=None, help="where certificates and configs go "
                   "(default: a new temporary directory)")
    p.add_argument("--port", type=int, default=0, help="lbcore's HTTPS port (default: a free "
                   "one, printed)")
    p.add_argument("--admin-port", type=int, default=0, help="lbcore's admin port (default: a "
                   "free one)")
    p.add_argument("--origin", choices=("python", "nginx"), default="python",
                   help="the backends: Python in this process (default) or two nginx servers")
    p.add_argument("--workers", default="1", help="lbcore workers (a number or auto)")
    return asyncio.run(serve(p.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
