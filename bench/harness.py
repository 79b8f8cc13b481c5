"""lbcore, HAProxy and nginx configured alike (one worker, TLS policy tls-1-2
with the same ECDSA P-256 certificate, keep-alive to the origin,
X-Forwarded-For, no access log), run one at a time pinned to CPU 0 with the
load generator and the origin pinned to CPU 1.

The figure of merit is the proxy's CPU time per request (user+sys of all its
processes from /proc, divided by requests served): on 2 cores the load side
saturates first, so req/s alone would hide the difference.

Scenarios so far: HTTP/1.1 and HTTPS keep-alive, and a new connection per
request (HTTP and HTTPS), small responses, wrk -c50.
Output: a markdown table on stdout, and results/<date>.{json,md}."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

HERE = Path(__file__).resolve().parent
TICKS = os.sysconf("SC_CLK_TCK")
ORIGIN_PORT, HTTP_PORT, HTTPS_PORT = 19001, 19081, 19443
PROXY_CPU, LOAD_CPU = "0", "1"


def need(tool: str, package: str) -> None:
    if shutil.which(tool) is None:
        subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True,
                       stdout=subprocess.DEVNULL)


def make_cert(d: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
            .sign(key, hashes.SHA256()))
    crt, k = d / "ecdsa.crt", d / "ecdsa.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    (d / "ecdsa.pem").write_bytes(crt.read_bytes() + k.read_bytes())   # HAProxy's form
    return crt, k


def configs(d: Path, crt: Path, key: Path) -> dict[str, list[str]]:
    (d / "origin.conf").write_text(f"""worker_processes 1; daemon off; pid {d}/origin.pid;
error_log {d}/origin.err; events {{ worker_connections 8192; }}
http {{ access_log off; keepalive_requests 100000000;
  server {{ listen 127.0.0.1:{ORIGIN_PORT} backlog=4096;
           location / {{ return 200 "hello world\\n"; }} }} }}
""")
    (d / "lbcore.yaml").write_text(f"""load_balancer: {{workers: 1, admin: {{port: 19099}},
                access_log: {{path: "off"}}}}
certificates:
  c: {{type: server, certificate: "{crt}", private_key: "{key}"}}
listeners:
  - {{name: h, protocol: HTTP, address: 127.0.0.1, port: {HTTP_PORT}, default_pool: o,
     insert_headers: {{x_real_ip: false, x_forwarded_host: false}}}}
  - {{name: s, protocol: HTTPS, address: 127.0.0.1, port: {HTTPS_PORT}, default_pool: o,
     server_certificate: c, security_policy: tls-1-2,
     insert_headers: {{x_real_ip: false, x_forwarded_host: false}}}}
pools:
  o:
    health_check: {{enabled: false}}
    members: [{{address: 127.0.0.1, port: {ORIGIN_PORT}}}]
""")
    (d / "haproxy.cfg").write_text(f"""global
    nbthread 1
    maxconn 8000
    ssl-default-bind-options ssl-min-ver TLSv1.2 ssl-max-ver TLSv1.2
defaults
    mode http
    timeout connect 5s
    timeout client 120s
    timeout server 120s
    timeout http-keep-alive 120s
    option http-keep-alive
    option forwardfor
    http-reuse always
frontend fe
    bind 127.0.0.1:{HTTP_PORT} backlog 4096
    bind 127.0.0.1:{HTTPS_PORT} ssl crt {d}/ecdsa.pem alpn http/1.1 backlog 4096
    http-request set-header X-Forwarded-Proto https if {{ ssl_fc }}
    http-request set-header X-Forwarded-Proto http if !{{ ssl_fc }}
    default_backend be
backend be
    server origin 127.0.0.1:{ORIGIN_PORT}
""")
    (d / "nginx.conf").write_text(f"""worker_processes 1; daemon off; pid {d}/nginx.pid;
error_log {d}/nginx.err; events {{ worker_connections 8192; }}
http {{ access_log off; keepalive_requests 100000000; keepalive_timeout 120s;
  client_body_temp_path {d}/nb; proxy_temp_path {d}/np;
  upstream origin {{ server 127.0.0.1:{ORIGIN_PORT}; keepalive 256;
                     keepalive_requests 100000000; }}
  proxy_http_version 1.1; proxy_set_header Connection "";
  proxy_set_header Host $host;
  proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
  proxy_set_header X-Forwarded-Proto $scheme;
  server {{ listen 127.0.0.1:{HTTP_PORT} backlog=4096;
           listen 127.0.0.1:{HTTPS_PORT} ssl backlog=4096;
           ssl_protocols TLSv1.2; ssl_certificate {crt}; ssl_certificate_key {key};
           location / {{ proxy_pass http://origin; }} }} }}
""")
    lbcore = [sys.executable, "-m", "lbcore", "run", "-c", str(d / "lbcore.yaml")]
    return {"lbcore": lbcore,
            "haproxy": ["haproxy", "-db", "-f", str(d / "haproxy.cfg")],
            "nginx": ["nginx", "-c", str(d / "nginx.conf")]}


def pids_of(root: int) -> list[int]:
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        for task in Path(f"/proc/{pid}/task").glob("*/children"):
            todo += [int(c) for c in task.read_text().split()]
    return out


def cpu_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError):
            pass
    return total


def wait_port(port: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


def wrk(url: str, seconds: int, close: bool = False) -> tuple[int, float, float, float]:
    extra = ["-H", "Connection: close"] if close else []
    out = subprocess.run(["taskset", "-c", LOAD_CPU, "wrk", "-t1", "-c50", f"-d{seconds}s",
                          "--latency", *extra, url], capture_output=True, text=True,
                         check=True).stdout
    reqs = int(next(line for line in out.splitlines() if "requests in" in line).split()[0])
    rps = float(next(line for line in out.splitlines() if "Requests/sec" in line).split()[1])

    def ms(tag):
        v = next(line for line in out.splitlines() if line.strip().startswith(tag)).split()[1]
        return float(v[:-2]) if v.endswith("ms") else (float(v[:-2]) / 1000 if v.endswith("us")
                                                      else float(v[:-1]) * 1000)

    return reqs, rps, ms("50%"), ms("99%")


# (name, url, a new connection per request). For HTTPS, wrk reconnects with
# its cached TLS session when it can, so this is mostly resumed handshakes;
# full-handshake rates need a client that never resumes (bench-anchors' tlsload).
SCENARIOS = (("http_ka", f"http://127.0.0.1:{HTTP_PORT}/", False),
             ("https_ka", f"https://127.0.0.1:{HTTPS_PORT}/", False),
             ("http_new_conn", f"http://127.0.0.1:{HTTP_PORT}/", True),
             ("https_new_conn", f"https://127.0.0.1:{HTTPS_PORT}/", True))


def run(seconds: int, runs: int) -> dict:
    need("wrk", "wrk")
    need("haproxy", "haproxy")
    need("nginx", "nginx-light")
    d = Path(tempfile.mkdtemp(prefix="lbcore-bench-"))
    crt, key = make_cert(d)
    cmds = configs(d, crt, key)
    origin = subprocess.Popen(["taskset", "-c", LOAD_CPU, "nginx", "-c", str(d / "origin.conf")])
    results: dict = {}
    try:
        wait_port(ORIGIN_PORT)
        for name, cmd in cmds.items():
            proc = subprocess.Popen(["taskset", "-c", PROXY_CPU, *cmd],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait_port(HTTP_PORT)
                wait_port(HTTPS_PORT)
                for scenario, url, close in SCENARIOS:
                    samples = []
                    for _ in range(runs):
                        pids = pids_of(proc.pid)
                        t0 = cpu_ticks(pids)
                        reqs, rps, p50, p99 = wrk(url, seconds, close)
                        us = (cpu_ticks(pids) - t0) / TICKS * 1e6 / max(1, reqs)
                        samples.append({"cpu_us_per_req": round(us, 2), "rps": rps,
                                        "p50_ms": p50, "p99_ms": p99})
                    med = sorted(samples, key=lambda s: s["cpu_us_per_req"])[len(samples) // 2]
                    results.setdefault(scenario, {})[name] = {**med, "runs": samples}
                    print(f"{scenario:20s} {name:8s} {med['cpu_us_per_req']:7.1f} us/req "
                          f"{med['rps']:>10,.0f} req/s  p99 {med['p99_ms']:.2f} ms",
                          file=sys.stderr, flush=True)
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                time.sleep(0.5)
    finally:
        origin.send_signal(signal.SIGQUIT)
        origin.wait(10)
    return results


def table(results: dict) -> str:
    rows = ["| scenario | lbcore µs/req | HAProxy µs/req | nginx µs/req | lbcore/HAProxy | "
            "lbcore/nginx | lbcore req/s | lbcore p99 ms |", "|---" * 8 + "|"]
    for scenario, r in results.items():
        lb, ha, ng = r["lbcore"], r["haproxy"], r["nginx"]
        rows.append(f"| {scenario} | {lb['cpu_us_per_req']} | {ha['cpu_us_per_req']} | "
                    f"{ng['cpu_us_per_req']} | "
                    f"{lb['cpu_us_per_req'] / ha['cpu_us_per_req']:.2f}x | "
                    f"{lb['cpu_us_per_req'] / ng['cpu_us_per_req']:.2f}x | {lb['rps']:,.0f} | "
                    f"{lb['p99_ms']} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench")
    p.add_argument("--seconds", type=int, default=6)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args(argv)
    results = run(args.seconds, args.runs)
    md = table(results)
    print(md)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y-%m-%d-%H%M")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=HERE).stdout.strip()
    meta = {"date": stamp, "commit": commit, "machine": platform.processor() or
            platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()}
    (out / f"{stamp}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    (out / f"{stamp}.md").write_text(f"# bench {stamp} (commit {commit})\n\n{md}\n")
    return 0
