"""lbcore, HAProxy and nginx configured alike (one worker, TLS policy tls-1-2
with the same ECDSA P-256 certificate, and TLS 1.2 + 1.3 on one more
listener, keep-alive to the origin,
X-Forwarded-For, no access log), run one at a time pinned to CPU 0 with the
load generator and the origin pinned to CPU 1, in rounds: each round runs
every scenario on each proxy in turn, and a figure is the median over the
rounds (so a neighbour's load that drifts over minutes falls on all three).

The figure of merit is the proxy's CPU time per request (user+sys of all its
processes from /proc, divided by requests served): on 2 cores the load side
saturates first, so req/s alone would hide the difference.

Scenarios so far: HTTP/1.1 and HTTPS keep-alive, and a new connection per
request (HTTP and HTTPS), small responses, wrk -c50; full TLS handshakes
(ECDSA P-256 and RSA-2048, never resumed) and TLS 1.3 resumed handshakes
(each connection offers the previous one's ticket) with bench/loadclients.py; HTTP/2
over TLS with h2load (-c20 -m10); 1 MiB responses over HTTPS (wrk -c10);
10,000 idle HTTPS keep-alive connections (RSS per connection on a fresh
proxy, and a new request's latency while they are open).
Output: a markdown table on stdout, and results/<date>.{json,md,png} (the PNG:
grouped bars of µs per request and KiB per idle connection, if matplotlib is
installed)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import queue
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from bench import policies
from bench.loadclients import client_context, one_request, percentile

HERE = Path(__file__).resolve().parent
TICKS = os.sysconf("SC_CLK_TCK")
ORIGIN_PORT, HTTP_PORT, HTTPS_PORT = 19001, 19081, 19443
RSA_PORT = 19444            # HTTPS with the RSA-2048 certificate (full-handshake scenario)
H2_PORT = 19445             # HTTPS offering ALPN h2 (the ECDSA certificate)
TLS13_PORT = 19446          # HTTPS with TLS 1.2 and 1.3 (the ECDSA certificate)
POL_PORT = 19447            # HTTP with 100 routing rules (bench/policies.py)
# TLS 1.3 suites alike on all three: OpenSSL's default order, which HAProxy
# and nginx use; lbcore's custom policy lists them so (with the TLS 1.2 suite
# the tls-1-2 listeners negotiate).
TLS13_SUITES = "TLS_AES_256_GCM_SHA384, TLS_CHACHA20_POLY1305_SHA256, TLS_AES_128_GCM_SHA256"
LARGE = 1 << 20             # the origin's /1m body
IDLE_CONNS = 10_000         # idle_10k; the proxies are configured to hold this many
PROXY_CPU, LOAD_CPU = "0", "1"
# (name in results, label, bar colour), in table and chart order
PROXIES = (("lbcore", "lbcore", "#d62728"), ("haproxy", "HAProxy", "#1f77b4"),
           ("nginx", "nginx", "#2ca02c"))


def need(tool: str, package: str) -> None:
    if shutil.which(tool) is None:
        subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True,
                       stdout=subprocess.DEVNULL)


def make_cert(d: Path, kind: str) -> tuple[Path, Path]:
    """A self-signed localhost certificate: kind "ecdsa" (P-256) or "rsa" (2048)."""
    key = (ec.generate_private_key(ec.SECP256R1()) if kind == "ecdsa"
           else rsa.generate_private_key(public_exponent=65537, key_size=2048))
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
            .sign(key, hashes.SHA256()))
    crt, k = d / f"{kind}.crt", d / f"{kind}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    (d / f"{kind}.pem").write_bytes(crt.read_bytes() + k.read_bytes())   # HAProxy's form
    return crt, k


def configs(d: Path) -> dict[str, list[str]]:
    (d / "www").mkdir(exist_ok=True)
    (d / "www" / "1m").write_bytes(os.urandom(LARGE))
    for path in (d, d / "www", d / "www" / "1m"):   # nginx's worker runs as www-data
        path.chmod(0o755)
    (d / "origin.conf").write_text(f"""worker_processes 1; daemon off; pid {d}/origin.pid;
error_log {d}/origin.err; events {{ worker_connections 8192; }}
http {{ access_log off; keepalive_requests 100000000; sendfile on;
  server {{ listen 127.0.0.1:{ORIGIN_PORT} backlog=4096;
           location = /1m {{ root {d}/www; default_type application/octet-stream; }}
           location / {{ return 200 "hello world\\n"; }} }} }}
""")
    (d / "lbcore.yaml").write_text(f"""load_balancer: {{workers: 1, admin: {{port: 19099}},
                access_log: {{path: "off"}}}}
certificates:
  c: {{type: server, certificate: "{d}/ecdsa.crt", private_key: "{d}/ecdsa.key"}}
  r: {{type: server, certificate: "{d}/rsa.crt", private_key: "{d}/rsa.key"}}
security_policies:
  t13: {{protocols: [TLSv1.2, TLSv1.3],
        ciphers: [ECDHE-ECDSA-AES256-GCM-SHA384, {TLS13_SUITES}]}}
listeners:
  - {{name: h, protocol: HTTP, address: 127.0.0.1, port: {HTTP_PORT}, default_pool: o,
     idle_timeout: 120, insert_headers: {{x_real_ip: false, x_forwarded_host: false}}}}
  - {{name: s, protocol: HTTPS, address: 127.0.0.1, port: {HTTPS_PORT}, default_pool: o,
     server_certificate: c, security_policy: tls-1-2,
     idle_timeout: 120, insert_headers: {{x_real_ip: false, x_forwarded_host: false}}}}
  - {{name: r, protocol: HTTPS, address: 127.0.0.1, port: {RSA_PORT}, default_pool: o,
     server_certificate: r, security_policy: tls-1-2,
     idle_timeout: 120, insert_headers: {{x_real_ip: false, x_forwarded_host: false}}}}
  - {{name: h2, protocol: HTTPS, address: 127.0.0.1, port: {H2_PORT}, default_pool: o,
     server_certificate: c, security_policy: tls-1-2, http2: true,
     idle_timeout: 120, insert_headers: {{x_real_ip: false, x_forwarded_host: false}}}}
  - {{name: t13, protocol: HTTPS, address: 127.0.0.1, port: {TLS13_PORT}, default_pool: o,
     server_certificate: c, security_policy: t13,
     idle_timeout: 120, insert_headers: {{x_real_ip: false, x_forwarded_host: false}}}}
{policies.lbcore_listener(POL_PORT, "o")}pools:
  o:
    health_check: {{enabled: false}}
    members: [{{address: 127.0.0.1, port: {ORIGIN_PORT}}}]
""")
    tls13 = "ssl-min-ver TLSv1.2 ssl-max-ver TLSv1.3"    # over the global TLS 1.2 only
    (d / "haproxy.cfg").write_text(f"""global
    nbthread 1
    maxconn {IDLE_CONNS + 100}
    no strict-limits          # 20,000 descriptors here: HAProxy wants 2 per maxconn
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
    bind 127.0.0.1:{RSA_PORT} ssl crt {d}/rsa.pem alpn http/1.1 backlog 4096
    bind 127.0.0.1:{H2_PORT} ssl crt {d}/ecdsa.pem alpn h2,http/1.1 backlog 4096
    bind 127.0.0.1:{TLS13_PORT} ssl crt {d}/ecdsa.pem alpn http/1.1 backlog 4096 {tls13}
    http-request set-header X-Forwarded-Proto https if {{ ssl_fc }}
    http-request set-header X-Forwarded-Proto http if !{{ ssl_fc }}
    default_backend be
{policies.haproxy_frontend(POL_PORT, "be")}backend be
    server origin 127.0.0.1:{ORIGIN_PORT}
""")
    (d / "nginx.conf").write_text(f"""worker_processes 1; daemon off; pid {d}/nginx.pid;
worker_rlimit_nofile {IDLE_CONNS * 2};
error_log {d}/nginx.err; events {{ worker_connections {IDLE_CONNS + 6000}; }}
http {{ access_log off; keepalive_requests 100000000; keepalive_timeout 120s;
  client_body_temp_path {d}/nb; proxy_temp_path {d}/np;
  upstream origin {{ server 127.0.0.1:{ORIGIN_PORT}; keepalive 256;
                     keepalive_requests 100000000; }}
  proxy_http_version 1.1; proxy_set_header Connection "";
  proxy_max_temp_file_size 0;
  proxy_set_header Host $host;
  proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
  proxy_set_header X-Forwarded-Proto $scheme;
  ssl_protocols TLSv1.2;
  server {{ listen 127.0.0.1:{HTTP_PORT} backlog=4096;
           listen 127.0.0.1:{HTTPS_PORT} ssl backlog=4096;
           ssl_certificate {d}/ecdsa.crt; ssl_certificate_key {d}/ecdsa.key;
           location / {{ proxy_pass http://origin; }} }}
  server {{ listen 127.0.0.1:{H2_PORT} ssl http2 backlog=4096;
           ssl_certificate {d}/ecdsa.crt; ssl_certificate_key {d}/ecdsa.key;
           location / {{ proxy_pass http://origin; }} }}
  server {{ listen 127.0.0.1:{RSA_PORT} ssl backlog=4096;
           ssl_certificate {d}/rsa.crt; ssl_certificate_key {d}/rsa.key;
           location / {{ proxy_pass http://origin; }} }}
  server {{ listen 127.0.0.1:{TLS13_PORT} ssl backlog=4096;
           ssl_protocols TLSv1.2 TLSv1.3;
           ssl_certificate {d}/ecdsa.crt; ssl_certificate_key {d}/ecdsa.key;
           location / {{ proxy_pass http://origin; }} }}
{policies.nginx_servers(POL_PORT, "origin")}}}
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


def cpu_busy() -> dict[str, tuple[int, int]]:
    """(busy, total) jiffies of the proxy's and the load's CPU, from /proc/stat."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *v = line.split()
        if name in (f"cpu{PROXY_CPU}", f"cpu{LOAD_CPU}"):
            n = [int(x) for x in v[:8]]
            out[name] = (sum(n) - n[3] - n[4], sum(n))
    return out


def busy_pct(before: dict, after: dict, cpu: str) -> float:
    (b0, t0), (b1, t1) = before[f"cpu{cpu}"], after[f"cpu{cpu}"]
    return 100 * (b1 - b0) / max(1, t1 - t0)


def ensure_free(port: int, who: str) -> None:
    try:
        socket.create_connection(("127.0.0.1", port), 0.2).close()
    except OSError:
        return
    raise RuntimeError(f"port {port} is taken before {who} starts: stop whatever listens "
                       "there (ss -ltnp) first")


QUIET_BUDGET = [120.0]      # seconds the whole run may spend waiting for a quiet machine


def settle(limit: float = 20.0) -> None:
    """Before a run: wait (a bounded time) until neither CPU is busy with
    something else, e.g. a test suite on a shared machine."""
    deadline = time.monotonic() + min(limit, QUIET_BUDGET[0])
    t0 = time.monotonic()
    while True:
        b0 = cpu_busy()
        time.sleep(0.5)
        b1 = cpu_busy()
        busy = max(busy_pct(b0, b1, PROXY_CPU), busy_pct(b0, b1, LOAD_CPU))
        if busy < 20 or time.monotonic() > deadline:
            break
    QUIET_BUDGET[0] -= time.monotonic() - t0
    if busy >= 20:
        print(f"note: the machine is busy ({busy:.0f}% of a CPU) with something else; "
              "running anyway", file=sys.stderr)


def wait_port(port: int, timeout: float = 15, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"exited with status {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


def wrk(url: str, seconds: int, close: bool = False, conns: int = 50,
        headers: tuple = ()) -> tuple[int, float, float, float, int]:
    extra = ["-H", "Connection: close"] if close else []
    for name, value in headers:
        extra += ["-H", f"{name}: {value}"]
    out = subprocess.run(["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{conns}", f"-d{seconds}s",
                          "--latency", *extra, url], capture_output=True, text=True,
                         check=True).stdout
    reqs = int(next(line for line in out.splitlines() if "requests in" in line).split()[0])
    rps = float(next(line for line in out.splitlines() if "Requests/sec" in line).split()[1])

    def ms(tag):
        v = next(line for line in out.splitlines() if line.strip().startswith(tag)).split()[1]
        return float(v[:-2]) if v.endswith("ms") else (float(v[:-2]) / 1000 if v.endswith("us")
                                                      else float(v[:-1]) * 1000)

    errors = 0
    for line in out.splitlines():
        if "Non-2xx or 3xx responses:" in line:
            errors += int(line.split(":")[1])
        elif "Socket errors:" in line:
            errors += sum(int(part.split()[-1]) for part in line.split(":")[1].split(","))
    return reqs, rps, ms("50%"), ms("99%"), errors


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: str                # how the load is made: wrk | handshake | resume | h2load | idle
    port: int
    path: str = "/"
    close: bool = False      # a new connection per request
    conns: int = 50
    unit: str = "µs/req"     # the figure of merit: proxy CPU per request
    rate: str = "req/s"
    rate_key: str = "rps"
    metric: str = "cpu_us_per_req"
    headers: tuple = ()      # more request fields (wrk -H)

    @property
    def url(self) -> str:
        scheme = "http" if self.port in (HTTP_PORT, POL_PORT) else "https"
        return f"{scheme}://127.0.0.1:{self.port}{self.path}"


# For HTTPS, wrk reconnects with its cached TLS session when it can, so
# https_new_conn is mostly resumed handshakes. https_full_handshake_* never
# resume (bench/loadclients.py handshake: blocking Python clients that never
# offer a session back), one GET with Connection: close on each connection.
# https_tls13_resumed: the same client, TLS 1.3 only, each process offering the
# ticket of its previous connection (the run fails under 90% resumed).
# h2: HTTP/2 over TLS, h2load -c20 -m10 (ten streams in flight per connection).
# large_1m: 1 MiB responses over HTTPS keep-alive, wrk -c10.
# policies_100: http_ka through 100 routing rules, the request matching only
# the last (bench/policies.py); against http_ka, the cost of the rules.
# idle_10k: 10,000 idle HTTPS keep-alive connections (each served one request)
# held open on a freshly started proxy: RSS growth per connection, and the time
# a new connection's request takes meanwhile (bench/loadclients.py idle).
SCENARIOS = (Scenario("http_ka", "wrk", HTTP_PORT),
             Scenario("https_ka", "wrk", HTTPS_PORT),
             Scenario("http_new_conn", "wrk", HTTP_PORT, close=True),
             Scenario("https_new_conn", "wrk", HTTPS_PORT, close=True),
             Scenario("https_full_handshake_ecdsa", "handshake", HTTPS_PORT,
                      unit="µs/handshake", rate="handshakes/s"),
             Scenario("https_full_handshake_rsa", "handshake", RSA_PORT,
                      unit="µs/handshake", rate="handshakes/s"),
             Scenario("https_tls13_resumed", "resume", TLS13_PORT),
             Scenario("h2", "h2load", H2_PORT, conns=20),
             Scenario("large_1m", "wrk", HTTPS_PORT, path="/1m", conns=10, rate="MB/s",
                      rate_key="mb_s"),
             Scenario("policies_100", "wrk", POL_PORT, path=policies.PATH,
                      headers=policies.HEADERS),
             Scenario("idle_10k", "idle", HTTPS_PORT, unit="KiB/conn", rate="ms new req",
                      rate_key="new_req_ms", metric="kib_per_conn"))
BY_NAME = {s.name: s for s in SCENARIOS}
LISTEN_PORTS = (HTTP_PORT, HTTPS_PORT, RSA_PORT, H2_PORT, TLS13_PORT, POL_PORT)


def measure(sc: Scenario, seconds: int) -> dict:
    """One run of the load; count is what the proxy CPU is divided by."""
    if sc.kind == "handshake":
        return handshakes(sc.port, seconds)
    if sc.kind == "resume":
        return handshakes(sc.port, seconds, resume=True)
    if sc.kind == "h2load":
        return h2load(sc.url, seconds, sc.conns)
    reqs, rps, p50, p99, errors = wrk(sc.url, seconds, sc.close, sc.conns, sc.headers)
    out = {"count": reqs, "rps": rps, "p50_ms": p50, "p99_ms": p99, "errors": errors}
    if sc.rate_key == "mb_s":
        out["mb_s"] = round(rps * LARGE / 1e6, 1)
    return out


def h2load(url: str, seconds: int, conns: int, streams: int = 10) -> dict:
    """HTTP/2 over TLS for a fixed time; latency percentiles from h2load's
    per-request log (it prints only mean and sd)."""
    with tempfile.NamedTemporaryFile(prefix="h2load-", suffix=".log") as log:
        out = subprocess.run(["taskset", "-c", LOAD_CPU, "h2load", "-c", str(conns), "-m",
                              str(streams), "-D", str(seconds), "--log-file", log.name, url],
                             capture_output=True, text=True, timeout=seconds + 60).stdout
        lat = sorted(int(line.split("\t")[2]) / 1000
                     for line in Path(log.name).read_text().splitlines()
                     if line.count("\t") >= 2)
    if "Application protocol: h2" not in out:
        raise RuntimeError(f"h2load did not negotiate h2 with {url}:\n{out[-1500:]}")
    req = next(line for line in out.splitlines() if line.startswith("requests:"))
    n = {k: int(v) for v, k in (part.split()[:2] for part in req[len("requests:"):].split(","))}
    rps = float(next(line for line in out.splitlines()
                     if line.startswith("finished in")).split(",")[1].split()[0])
    return {"count": n["done"], "rps": rps, "p50_ms": round(percentile(lat, 0.50), 2),
            "p99_ms": round(percentile(lat, 0.99), 2),
            "errors": n["failed"] + n["errored"] + n["timeout"]}


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def idle(proc: subprocess.Popen, conns: int) -> dict:
    """On a proxy that has served nothing but one warm-up request: RSS (all its
    processes) before and with `conns` idle HTTPS connections, the proxy's CPU
    per connection opened and while they sit idle, and new requests meanwhile."""
    one_request(client_context(), HTTPS_PORT)        # lazily built state into the baseline
    time.sleep(1)
    pids = pids_of(proc.pid)
    rss0, c0 = rss_kib(pids), cpu_ticks(pids)
    client = load_client("idle", str(HTTPS_PORT), "--conns", str(conns),
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in client.stdout], daemon=True).start()
    try:
        ready = json.loads(lines.get(timeout=300).removeprefix("READY "))
        c1 = cpu_ticks(pids)
        time.sleep(2)
        pids = pids_of(proc.pid)
        rss1, c2 = rss_kib(pids), cpu_ticks(pids)
        time.sleep(2)
        c3 = cpu_ticks(pids)
        client.stdin.write("probe\n")
        client.stdin.flush()
        probe = json.loads(lines.get(timeout=120))
    finally:
        try:
            client.stdin.write("quit\n")
            client.stdin.close()
        except OSError:
            pass
        try:
            client.wait(60)
        except subprocess.TimeoutExpired:
            client.kill()
    ok = max(1, ready["ok"])
    if ready["failed"] or probe["failed"]:
        print(f"warning: idle: {ready['failed']} of {conns} connections and "
              f"{probe['failed']} probes failed ({ready['first_error']})", file=sys.stderr)
    return {"count": ready["ok"], "errors": ready["failed"] + probe["failed"],
            "kib_per_conn": round((rss1 - rss0) / ok, 1),
            "rss_before_mib": round(rss0 / 1024, 1), "rss_after_mib": round(rss1 / 1024, 1),
            "open_seconds": ready["open_seconds"],
            "open_cpu_us_per_conn": round((c1 - c0) / TICKS * 1e6 / ok, 1),
            "idle_cpu_pct": round(100 * (c3 - c2) / TICKS / 2, 1),
            "new_req_ms": probe["median_ms"], "new_req_first_ms": probe["first_ms"],
            "new_req_max_ms": probe["max_ms"]}


def load_client(*args: str, **kw) -> subprocess.Popen:
    """bench/loadclients.py pinned to the load CPU."""
    return subprocess.Popen(["taskset", "-c", LOAD_CPU, sys.executable, "-m", "bench.loadclients",
                             *args], cwd=HERE.parent, text=True, **kw)


def handshakes(port: int, seconds: int, procs: int = 8, resume: bool = False) -> dict:
    """Full handshakes (none may resume), or with `resume` TLS 1.3 ones that
    offer the previous connection's ticket (at least 90% must resume)."""
    extra = ["--resume", "--tls13"] if resume else []
    client = load_client("handshake", str(port), "--seconds", str(seconds), "--procs",
                         str(procs), *extra, stdout=subprocess.PIPE)
    out, _ = client.communicate(timeout=seconds + 60)
    r = json.loads(out)
    if not r["handshakes"] or r["errors"] > r["handshakes"] / 100:
        raise RuntimeError(f"handshake load on {port} went wrong: {r}")
    if resume and (r["resumed_ratio"] < 0.9 or r["protocol"] != "TLSv1.3"):
        raise RuntimeError(f"TLS 1.3 resumption on {port}: not TLS 1.3 or under 90% resumed: {r}")
    if not resume and r["resumed"]:
        raise RuntimeError(f"full handshakes on {port}: {r['resumed']} resumed: {r}")
    out = {"count": r["handshakes"], "rps": r["rate"], "p50_ms": r["p50_ms"],
           "p99_ms": r["p99_ms"], "errors": r["errors"], "tls": f"{r['protocol']} {r['cipher']}"}
    if resume:
        out["resumed_ratio"] = r["resumed_ratio"]
    return out


def start_proxy(name: str, cmd: list[str], d: Path, lbcore_tree: Path | None,
                ports: tuple[int, ...]) -> subprocess.Popen:
    env, cwd = None, None
    if name == "lbcore" and lbcore_tree is not None:
        # Another checkout (extension built in place) instead of this one.
        env = {**os.environ, "PYTHONPATH": str(lbcore_tree)}
        cwd = lbcore_tree
    for port in ports:
        ensure_free(port, name)
    log = (d / f"{name}.log").open("ab")
    proc = subprocess.Popen(["taskset", "-c", PROXY_CPU, *cmd], stdout=log, stderr=log,
                            env=env, cwd=cwd)
    try:
        for port in ports:
            wait_port(port, proc=proc)
    except (TimeoutError, RuntimeError):
        stop_proxy(proc)
        tail = (d / f"{name}.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{name} did not start; its log ends:\n{tail}") from None
    return proc


def stop_proxy(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    time.sleep(0.5)


def record(results: dict, sc: Scenario, proxy: str, samples: list[dict],
           key: str = "cpu_us_per_req") -> None:
    """The median run by the figure of merit, with every run kept beside it."""
    med = sorted(samples, key=lambda s: s[key])[len(samples) // 2]
    results.setdefault(sc.name, {})[proxy] = {**med, "runs": samples}
    bad = [s for s in samples if s.get("errors", 0) > s.get("count", 0) / 100]
    if bad:
        print(f"warning: {sc.name} {proxy}: {len(bad)} run(s) with over 1% errors "
              f"(non-2xx or socket errors): {[s['errors'] for s in bad]}", file=sys.stderr)
    noisy = max((s.get("cpu0_other_pct", 0) for s in samples), default=0)
    if noisy > 10:
        print(f"warning: {sc.name} {proxy}: up to {noisy:.0f}% of CPU {PROXY_CPU} went to "
              "other processes during a run; the numbers are suspect", file=sys.stderr)
    rate = f"{_num(med[sc.rate_key]):>10s} {sc.rate}" if sc.rate_key in med else ""
    p99 = f"p99 {med['p99_ms']:.2f} ms" if "p99_ms" in med else ""
    print(f"{sc.name:28s} {proxy:8s} {med[key]:8.1f} {sc.unit:13s} {rate}  {p99}",
          file=sys.stderr, flush=True)


def timed(proc: subprocess.Popen, sc: Scenario, seconds: int) -> dict:
    """One run under load, with the proxy's CPU time around it."""
    settle()
    pids = pids_of(proc.pid)
    t0, w0, b0 = cpu_ticks(pids), time.monotonic(), cpu_busy()
    sample = measure(sc, seconds)
    cpu = (cpu_ticks(pids) - t0) / TICKS
    b1 = cpu_busy()
    sample["cpu_us_per_req"] = round(cpu * 1e6 / max(1, sample["count"]), 2)
    sample["proxy_cpu_pct"] = round(100 * cpu / (time.monotonic() - w0), 1)
    # Anything else on the proxy's CPU (another job on the machine) skews the
    # figure: kept with the sample, warned about.
    sample["cpu0_other_pct"] = round(
        max(0.0, busy_pct(b0, b1, PROXY_CPU) - sample["proxy_cpu_pct"]), 1)
    sample["load_cpu_pct"] = round(busy_pct(b0, b1, LOAD_CPU), 1)
    return sample


def run(seconds: int, runs: int, proxies: list[str], scenarios: list[Scenario],
        lbcore_tree: Path | None, idle_conns: int = IDLE_CONNS) -> dict:
    need("wrk", "wrk")
    need("haproxy", "haproxy")
    need("nginx", "nginx-light")
    need("h2load", "nghttp2-client")
    # idle_10k needs some 10,000 descriptors in the proxies and the client.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < 2 * idle_conns:
        print(f"note: RLIMIT_NOFILE is {hard}; idle_10k may not open {idle_conns} connections",
              file=sys.stderr)
    d = Path(tempfile.mkdtemp(prefix="lbcore-bench-"))
    for kind in ("ecdsa", "rsa"):
        make_cert(d, kind)
    cmds = configs(d)
    ensure_free(ORIGIN_PORT, "the origin")
    origin = subprocess.Popen(["taskset", "-c", LOAD_CPU, "nginx", "-c", str(d / "origin.conf")])
    results: dict = {}
    try:
        wait_port(ORIGIN_PORT, proc=origin)
        # Rounds, each proxy in turn within a round: what the other tenants of
        # a shared machine take drifts over minutes, and with every run of one
        # proxy before the next one's, the drift went into the ratios.
        busy = [sc for sc in scenarios if sc.kind != "idle"]
        samples_of: dict[tuple[str, str], list[dict]] = {}
        for i in range(runs if busy else 0):
            for name in proxies:
                proc = start_proxy(name, cmds[name], d, lbcore_tree, LISTEN_PORTS)
                try:
                    for sc in busy:
                        samples_of.setdefault((sc.name, name), []).append(
                            timed(proc, sc, seconds))
                finally:
                    stop_proxy(proc)
                print(f"round {i + 1}/{runs}: {name} done", file=sys.stderr, flush=True)
        for sc in busy:
            for name in proxies:
                record(results, sc, name, samples_of[(sc.name, name)])
        for name in proxies:
            for sc in scenarios:
                if sc.kind == "idle":     # a fresh proxy for every run
                    samples = []
                    for _ in range(runs):
                        settle()
                        proc = start_proxy(name, cmds[name], d, lbcore_tree, LISTEN_PORTS)
                        try:
                            samples.append(idle(proc, idle_conns))
                        finally:
                            stop_proxy(proc)
                    record(results, sc, name, samples, sc.metric)
    finally:
        origin.send_signal(signal.SIGQUIT)
        origin.wait(10)
        print(f"configs and proxy logs: {d}", file=sys.stderr)
    return results


def pooled(runs: list[dict]) -> dict:
    """Several runs' results as one: per scenario and proxy, the median over
    all their rounds. With a run-to-run noise of about 10% on a shared VM,
    the ratio to the better of two other proxies is biased up in any one run
    (the lower of two noisy figures is on average some 0.56 sigma below
    their mean); pooling rounds narrows that."""
    out: dict = {}
    for results in runs:
        for scenario, by_proxy in results.items():
            for proxy, r in by_proxy.items():
                out.setdefault(scenario, {}).setdefault(proxy, []).extend(r.get("runs") or [r])
    merged: dict = {}
    for scenario, by_proxy in out.items():
        key = BY_NAME[scenario].metric
        for proxy, samples in by_proxy.items():
            med = sorted(samples, key=lambda s: s[key])[len(samples) // 2]
            merged.setdefault(scenario, {})[proxy] = {**med, "runs": samples}
    return merged


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _md_head(head: list[str]) -> list[str]:
    """A markdown table's header row and the rule under it."""
    return [_md_row(head), "|---" * len(head) + "|"]


def quiet_fit(results: dict) -> str:
    """What each proxy's figure would be on a quiet CPU 0, as a markdown table:
    per scenario and proxy, the least-squares line of the figure of merit
    against the share of CPU 0 that other processes took in each round
    (cpu0_other_pct), read at 0%. On this VM that share (interrupts, steal,
    neighbours) goes from 1% to 25% between rounds and the CPU a proxy is
    charged rises with it, about 15 µs per point for a full handshake, so a
    median still carries the rounds' luck; the intercept does not. Scenarios
    whose rounds don't spread over at least 5 points are left out."""
    names = [n for n, _, _ in PROXIES]
    labels = {n: label for n, label, _ in PROXIES}
    head = (["scenario", "unit"] + [f"{labels[n]} at 0% (slope, rounds)" for n in names]
            + ["lbcore/best at 0%"])
    rows = _md_head(head)
    for scenario, by_proxy in results.items():
        sc = BY_NAME[scenario]
        fit: dict[str, tuple[float, float, int]] = {}
        for n in names:
            pts = [(s["cpu0_other_pct"], s[sc.metric]) for s in by_proxy.get(n, {}).get("runs", [])
                   if "cpu0_other_pct" in s and sc.metric in s]
            xs = [x for x, _ in pts]
            if len(pts) < 4 or max(xs) - min(xs) < 5:
                continue
            mx, my = sum(xs) / len(xs), sum(y for _, y in pts) / len(pts)
            slope = (sum((x - mx) * (y - my) for x, y in pts)
                     / sum((x - mx) ** 2 for x in xs))
            fit[n] = (my - slope * mx, slope, len(pts))
        if "lbcore" not in fit or len(fit) < 2:
            continue
        best = min(v[0] for n, v in fit.items() if n != "lbcore")
        cells = [scenario, sc.unit] + [f"{_num(fit[n][0])} ({fit[n][1]:+.1f}/%, {fit[n][2]})"
                                       if n in fit else "–" for n in names]
        cells.append(f"{fit['lbcore'][0] / best:.2f}x")
        rows.append(_md_row(cells))
    return "\n".join(rows) if len(rows) > 2 else ""


def _num(v: float) -> str:
    return f"{v:,.0f}" if v >= 1000 else f"{v:.3g}" if v < 10 else f"{v:.1f}"


def flag(sample: dict, text: str) -> str:
    """Marks a figure whose median run had over 1% errors."""
    return text + (" (errors!)" if sample.get("errors", 0) > sample.get("count", 0) / 100
                   else "")


def table(results: dict) -> str:
    """Two markdown tables: the figure of merit per scenario with the ratios,
    then rates and latencies."""
    names = [n for n, _, _ in PROXIES]
    labels = {n: label for n, label, _ in PROXIES}
    others = [n for n in names if n != "lbcore"]
    head = (["scenario", "unit"] + [labels[n] for n in names]
            + [f"lbcore/{labels[n]}" for n in others] + ["lbcore/best"])
    rows = _md_head(head)
    for scenario, r in results.items():
        sc = BY_NAME[scenario]
        key = sc.metric
        cells = [scenario, sc.unit] + [flag(r[n], _num(r[n][key])) if n in r else "–"
                                       for n in names]
        lb = r.get("lbcore", {}).get(key)
        ref = [r[n][key] for n in others if n in r]
        cells += [f"{lb / r[n][key]:.2f}x" if lb and n in r else "–" for n in others]
        cells.append(f"{lb / min(ref):.2f}x" if lb and ref else "–")
        rows.append(_md_row(cells))
    head = (["scenario", "rate"] + [labels[n] for n in names]
            + [f"p50 ms {labels[n]}" for n in names] + [f"p99 ms {labels[n]}" for n in names])
    if any(BY_NAME[scenario].kind != "idle" for scenario in results):
        rows += ["", *_md_head(head)]
    for scenario, r in results.items():
        sc = BY_NAME[scenario]
        if sc.kind == "idle":
            continue
        cells = [scenario, sc.rate] + [_num(r[n][sc.rate_key]) if n in r else "–"
                                       for n in names]
        for q in ("p50_ms", "p99_ms"):
            cells += [f"{r[n][q]:.2f}" if n in r else "–" for n in names]
        rows.append(_md_row(cells))
    for scenario, r in results.items():
        if BY_NAME[scenario].kind != "idle":
            continue
        head = ["proxy", "idle conns", "RSS before MiB", "RSS with them MiB", "KiB/conn",
                "new request ms (median / max)", "CPU µs per conn opened", "CPU % while idle"]
        rows += ["", *_md_head(head)]
        for n in names:
            if n in r:
                x = r[n]
                rows.append(f"| {labels[n]} | {x['count']:,} | {x['rss_before_mib']} | "
                            f"{x['rss_after_mib']} | {x['kib_per_conn']} | {x['new_req_ms']} / "
                            f"{x['new_req_max_ms']} | {x['open_cpu_us_per_conn']} | "
                            f"{x['idle_cpu_pct']} |")
    return "\n".join(rows)


def chart(results: dict, path: Path) -> bool:
    """Grouped bars, one group per scenario, one bar per proxy: the proxy's CPU
    µs per request (log scale: keep-alive requests and full handshakes differ
    by two orders of magnitude), and RSS per idle connection in a panel of its
    own. False, with a note, if matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        print("note: matplotlib is not installed (`make bench` installs the bench extra): "
              "no chart, the table is written all the same", file=sys.stderr)
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    cpu = [s for s in results if BY_NAME[s].metric == "cpu_us_per_req"]
    mem = [s for s in results if BY_NAME[s].metric == "kib_per_conn"]
    panels = [(cpu, "cpu_us_per_req", "proxy CPU µs per request (log scale)", True)]
    if mem:
        panels.append((mem, "kib_per_conn", "RSS KiB per idle HTTPS connection", False))
    fig, axes = plt.subplots(1, len(panels), squeeze=False, dpi=110,
                             figsize=(max(6.0, 1.3 * len(cpu) + 2.5 * len(mem) + 2), 4.8),
                             gridspec_kw={"width_ratios": [max(1, len(p[0])) + 0.5 * (k > 0)
                                                           for k, p in enumerate(panels)]})
    width = 0.8 / len(PROXIES)
    for ax, (scenarios, key, ylabel, log) in zip(axes[0], panels, strict=True):
        for k, (proxy, label, color) in enumerate(PROXIES):
            xs, ys = [], []
            for i, scenario in enumerate(scenarios):
                if proxy in results[scenario]:
                    xs.append(i + (k - (len(PROXIES) - 1) / 2) * width)
                    ys.append(results[scenario][proxy][key])
            bars = ax.bar(xs, ys, width, label=label, color=color)
            ax.bar_label(bars, labels=[f"{y:.0f}" if y >= 10 else f"{y:.1f}" for y in ys],
                         fontsize=7, padding=1)
        ax.set_xticks(range(len(scenarios)), scenarios, rotation=20, ha="right")
        ax.set_ylabel(ylabel + ", lower is better")
        ax.grid(axis="y", which="both", alpha=0.3)
        if log:
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(NullFormatter())
            lowest = min((b.get_height() for c in ax.containers for b in c), default=1.0)
            ax.set_ylim(bottom=10 ** math.floor(math.log10(max(lowest, 1e-3))))
    axes[0][0].legend()
    # Two lines: a run of few scenarios makes a narrow figure.
    fig.suptitle("lbcore vs HAProxy vs nginx\none worker pinned to CPU 0, "
                 "load and origin on CPU 1", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def versions() -> dict[str, str]:
    def first(cmd: list[str]) -> str:
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return "?"
        return (r.stdout + r.stderr).strip().splitlines()[0] if r.stdout + r.stderr else "?"

    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    return {"cpu": cpu, "kernel": platform.release(),
            "python": platform.python_version(), "openssl": ssl.OPENSSL_VERSION,
            "haproxy": first(["haproxy", "-v"]).split(" - ")[0],
            "nginx": first(["nginx", "-v"]).split(": ")[-1],
            "wrk": first(["wrk", "-v"]).split(" [")[0],
            "h2load": first(["h2load", "--version"])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench")
    p.add_argument("--seconds", type=int, default=5,
                   help="per run (default 5: all scenarios, 3 runs, in about 11 minutes)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--out", type=Path, default=HERE / "results",
                   help="where <date>.{json,md,png} go (default bench/results)")
    p.add_argument("--proxies", default=",".join(n for n, _, _ in PROXIES),
                   help="comma-separated subset of lbcore,haproxy,nginx")
    p.add_argument("--only", default="", metavar="SCENARIOS",
                   help="comma-separated subset of: " + ",".join(BY_NAME))
    p.add_argument("--idle-conns", type=int, default=IDLE_CONNS,
                   help="connections idle_10k holds open (default %(default)s)")
    p.add_argument("--lbcore-tree", type=Path, default=None,
                   help="run lbcore from this checkout (extension built in place) instead "
                        "of this one, e.g. an export of a commit while the tree is in flux")
    p.add_argument("--chart", type=Path, metavar="RESULTS.json",
                   help="run nothing: draw the PNG of an earlier run from its .json, next "
                   "to it")
    p.add_argument("--pool", type=Path, nargs="+", metavar="RESULTS.json",
                   help="run nothing: the table of the medians over every run of these "
                   "earlier runs (made in rounds), per scenario and proxy, and each "
                   "figure fitted to a quiet CPU 0")
    args = p.parse_args(argv)
    if args.pool:
        merged = pooled([json.loads(f.read_text())["results"] for f in args.pool])
        print(table(merged))
        fitted = quiet_fit(merged)
        if fitted:
            print("\nFitted to a quiet CPU 0 (least squares against the share other "
                  "processes took, every round):\n\n" + fitted)
        return 0
    if args.chart is not None:
        png = args.chart.with_suffix(".png")
        if not chart(json.loads(args.chart.read_text())["results"], png):
            return 1
        print(f"written: {png}", file=sys.stderr)
        return 0
    proxies = [n for n in args.proxies.split(",") if n]
    scenarios = [BY_NAME[n] for n in args.only.split(",")] if args.only else list(SCENARIOS)
    results = run(args.seconds, args.runs, proxies, scenarios, args.lbcore_tree,
                  args.idle_conns)
    md = table(results)
    print(md)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now()
    stamp = now.strftime("%Y-%m-%d-%H%M")
    if (out / f"{stamp}.json").exists():
        stamp = now.strftime("%Y-%m-%d-%H%M%S")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=HERE).stdout.strip()
    meta = {"date": stamp, "commit": commit, "machine": platform.processor() or
            platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()}
    if args.lbcore_tree is not None:
        meta["lbcore_tree"] = str(args.lbcore_tree)
    meta.update(seconds=args.seconds, runs=args.runs, versions=versions())
    (out / f"{stamp}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    png = out / f"{stamp}.png"
    img = f"\n![proxy CPU µs per request]({png.name})\n" if chart(results, png) else ""
    about = "; ".join(f"{k} {v}" for k, v in meta["versions"].items())
    (out / f"{stamp}.md").write_text(
        f"# bench {stamp} (commit {commit})\n\n{meta['machine']}, {meta['cpus']} CPUs; "
        f"{about}; median of {args.runs} runs of {args.seconds} s\n\n{md}\n{img}")
    print(f"written: {out / stamp}.{{json,md{',png' if img else ''}}}", file=sys.stderr)
    return 0
