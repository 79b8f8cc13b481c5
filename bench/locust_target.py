"""A target for bench/locustfile.py: lbcore on HTTPS with a certificate from
a throwaway test CA, in front of two nginx backends that serve the site the
locustfile walks (/, /api/..., /static/ files of 1 KiB to 1 MiB, 404 for
anything else) and name themselves in X-Backend. The pool uses lb_cookie sticky
sessions, so the locustfile can check that a user stays on one backend.

    .venv/bin/python -m bench.locust_target [--dir DIR] [--port 19543]

prints the LBCORE_CA to export and the host to point locust at, then runs
until interrupted (Ctrl-C / SIGTERM). Not part of `make bench`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bench.harness import ensure_free, wait_port

BACKEND_PORTS = (19101, 19102)
# Static files the backends serve (path under /static/ -> size), as the
# locustfile requests them.
STATIC = {"1k.txt": 1 << 10, "app-16k.css": 16 << 10, "app-256k.js": 256 << 10,
          "photo-1m.jpg": 1 << 20}


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


def write_configs(d: Path, port: int, workers: str) -> None:
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
           location / {{ return 404; }} }}""" for name, p in zip("ab", BACKEND_PORTS, strict=True))
    (d / "backends.conf").write_text(f"""worker_processes 1; daemon off; pid {d}/backends.pid;
error_log {d}/backends.err; events {{ worker_connections 4096; }}
http {{ access_log off; sendfile on; keepalive_requests 100000; {servers} }}
""")
    members = "".join(f"\n      - {{name: {name}, address: 127.0.0.1, port: {p}}}"
                      for name, p in zip("ab", BACKEND_PORTS, strict=True))
    (d / "lbcore.yaml").write_text(f"""load_balancer: {{workers: {workers}, admin: {{port: 19599}},
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.locust_target")
    p.add_argument("--dir", type=Path, default=None, help="where certificates and configs go")
    p.add_argument("--port", type=int, default=19543)
    p.add_argument("--workers", default="1", help="lbcore workers (a number or auto)")
    args = p.parse_args(argv)
    d = args.dir or Path(tempfile.mkdtemp(prefix="lbcore-locust-"))
    d.mkdir(parents=True, exist_ok=True)
    ca, _, _ = make_ca_and_server(d)
    write_configs(d, args.port, args.workers)
    for port in (*BACKEND_PORTS, args.port):
        ensure_free(port, "the locust target")
    procs = [subprocess.Popen(["nginx", "-c", str(d / "backends.conf")])]
    log = (d / "lbcore.log").open("ab")
    procs.append(subprocess.Popen([sys.executable, "-m", "lbcore", "run", "-c",
                                   str(d / "lbcore.yaml")], stdout=log, stderr=log))
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    try:
        for port, proc in zip((*BACKEND_PORTS, args.port), (procs[0], *procs), strict=True):
            wait_port(port, proc=proc)
        print(f"export LBCORE_CA={ca}\nhost: https://localhost:{args.port}\n"
              f"lbcore log: {d / 'lbcore.log'}", flush=True)
        while not stop and all(proc.poll() is None for proc in procs):
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
