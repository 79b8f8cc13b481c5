"""lbcore's own TLS transport (lbcore_ext/transport.pyx) as an attacker and an
operator see it: plain HTTP on the TLS port, connections that never send a
ClientHello, running out of file descriptors, and reloads under clients that
open a new TLS connection per request."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import socket
import ssl
import subprocess
import threading
import time

import pytest

from tests.e2e.test_tls_operations import handshake, https_config, trust, write_cert
from tests.support.lbproc import free_port
from tests.support.procstats import cpu_spent, listener_metric
from tests.support.reloads import reload_under_load

pytestmark = pytest.mark.timeout(240)


def worker_pids(lb) -> list[int]:
    return [w["pid"] for w in lb.ready_workers(lb.status())]


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def metric(admin: int, name: str, listener: str = "tls", **labels) -> float:
    return listener_metric(admin, name, listener, **labels)


def fetch_tls(port: int, ctx: ssl.SSLContext) -> bytes:
    with handshake(port, ctx) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


@pytest.fixture
def server_cert(ca, tmp_path):
    return write_cert(ca.issue_cert("localhost", "127.0.0.1"), tmp_path, "site")


def serving_tls(running, slow_backends, ca, server_cert) -> tuple:
    """lbcore with one HTTPS listener, answering: (lb, admin, port, worker
    pids, a client context that trusts it)."""
    (b,) = slow_backends(1)
    admin, port = free_port(), free_port()
    lb = running(https_config(admin, port, b, *server_cert), admin, port)
    ctx = trust(ca)
    assert fetch_tls(port, ctx).startswith(b"HTTP/1.1 200")
    return lb, admin, port, worker_pids(lb), ctx


@pytest.fixture
def many_fds():
    """This process opens thousands of sockets; lbcore inherits the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 20000)), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.parametrize("request_bytes", [
    b"GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: curl\r\n\r\n",
    b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n\r\n"
    + b"x" * 100000,
])
def test_plain_http_on_the_tls_port_gets_a_400_in_plain_http(running, slow_backends,
                                                             server_cert, request_bytes):
    (b,) = slow_backends(1)
    admin, port = free_port(), free_port()
    lb = running(https_config(admin, port, b, *server_cert), admin, port)
    with socket.create_connection(("127.0.0.1", port), 5) as raw:
        raw.settimeout(5)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            raw.sendall(request_bytes)
        data = b""
        while chunk := raw.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n"), data[:200]
    assert b"Connection: close" in head
    assert b"The plain HTTP request was sent to HTTPS port" in body
    assert int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]) == len(body)
    time.sleep(0.2)
    assert metric(admin, "lbcore_tls_handshake_failures_total", reason="plain_http") == 1
    # ...and as a 400 of lbcore's own, like the framing's refusals.
    assert metric(admin, "lbcore_generated_errors_total", code="400", reason="plain_http") == 1
    assert lb.status()["ready"]


def test_connections_without_a_client_hello_leave_nothing_behind(running, slow_backends,
                                                                 ca, server_cert, many_fds):
    """4 rounds of 2,000 connections that never send a byte: the workers' RSS
    stays within 5 MB of where it started (it grew by ~75 MB a round with
    uvloop's SSL transport)."""
    lb, admin, port, pids, ctx = serving_tls(running, slow_backends, ca, server_cert)

    def one_round() -> None:
        socks = []
        for i in range(2000):
            socks.append(socket.create_connection(("127.0.0.1", port), 5))
            if i % 500 == 499:
                time.sleep(0.05)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:          # every one accepted
            if metric(admin, "lbcore_connections_opening") >= 2000:
                break
            time.sleep(0.1)
        for s in socks:
            s.close()
        deadline = time.monotonic() + 10
        while metric(admin, "lbcore_connections_opening") > 0 and time.monotonic() < deadline:
            time.sleep(0.1)

    one_round()                                     # first use of each code path
    start = sum(rss_kib(p) for p in pids)
    rounds = []
    for _ in range(4):
        one_round()
        rounds.append(sum(rss_kib(p) for p in pids))
    print(f"workers' RSS (KiB): start {start}, after each round {rounds}")
    assert max(rounds) - start < 5 * 1024, (start, rounds)
    assert metric(admin, "lbcore_connections_opening") == 0
    assert fetch_tls(port, ctx).startswith(b"HTTP/1.1 200")


def test_out_of_file_descriptors_backs_off_and_recovers(running, slow_backends, ca,
                                                        server_cert):
    """With the workers' RLIMIT_NOFILE nearly used up, accept() fails with
    EMFILE: the listener pauses (counted) instead of spinning on a backlog
    that stays readable, and serves again once descriptors are free."""
    lb, admin, port, pids, ctx = serving_tls(running, slow_backends, ca, server_cert)
    for pid in pids:
        used = len(os.listdir(f"/proc/{pid}/fd"))
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (used + 8, used + 8))
    socks = [socket.create_connection(("127.0.0.1", port), 5) for _ in range(60)]
    try:
        time.sleep(0.5)
        spent = cpu_spent(pids, 2.0)
        assert max(spent) < 0.3, f"workers spun while out of descriptors: {spent} s in 2 s"
        assert metric(admin, "lbcore_accept_backoffs_total") > 0
    finally:
        for s in socks:
            s.close()
    deadline = time.monotonic() + 15
    while True:
        try:
            assert fetch_tls(port, ctx).startswith(b"HTTP/1.1 200")
            break
        except (OSError, AssertionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    assert lb.status()["ready"]


def test_reloads_fail_no_new_tls_connection(running, slow_backends, ca, server_cert):
    """10 reloads while clients open a new TLS connection per request (Python
    ssl and openssl s_client): every request gets its response. A connection
    a draining worker accepted finishes its handshake and its first request."""
    (b,) = slow_backends(1)
    admin, port = free_port(), free_port()
    text = https_config(admin, port, b, *server_cert)
    lb = running(text, admin, port)
    ctx = trust(ca)
    stop = threading.Event()
    done = {"python": 0, "s_client": 0}
    failures: list[str] = []

    def python_client() -> None:
        while not stop.is_set():
            try:
                data = fetch_tls(port, ctx)
                if not data.startswith(b"HTTP/1.1 200"):
                    failures.append(f"python: {data[:80]!r}")
                done["python"] += 1
            except OSError as exc:          # ssl.SSLError is one
                failures.append(f"python: {exc!r}")

    openssl = shutil.which("openssl")

    def s_client() -> None:
        while not stop.is_set():
            p = subprocess.run(
                [openssl, "s_client", "-connect", f"127.0.0.1:{port}", "-quiet",
                 "-verify_quiet"],
                input=b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
                capture_output=True, timeout=10)
            if not p.stdout.startswith(b"HTTP/1.1 200"):
                failures.append(f"s_client: {p.stdout[:80]!r} {p.stderr[-200:]!r}")
            done["s_client"] += 1

    threads = [threading.Thread(target=python_client) for _ in range(4)]
    if openssl:
        threads.append(threading.Thread(target=s_client))
    reload_under_load(lb, text, threads, stop)
    print(f"requests: {done}, failures: {len(failures)}")
    assert done["python"] > 200
    assert not failures, failures[:5]


def test_sni_serves_ecdsa_or_rsa_for_one_name_and_counts_resumption(running, slow_backends,
                                                                     ca, server_cert,
                                                                     tmp_path):
    """The SNI callback of the transport (C, on the SSL_CTX) picks the context
    holding both key types for the name; OpenSSL then serves ECDSA to a client
    that offers it, RSA to one that does not. A ticket resumes, and is counted."""
    import trustme

    (b,) = slow_backends(1)
    admin, port = free_port(), free_port()
    ec_crt, ec_key = write_cert(ca.issue_cert("api.test", key_type=trustme.KeyType.ECDSA),
                                tmp_path, "api_ec")
    rsa_crt, rsa_key = write_cert(ca.issue_cert("api.test", key_type=trustme.KeyType.RSA),
                                  tmp_path, "api_rsa")
    text = https_config(
        admin, port, b, *server_cert,
        extra="    security_policy: tls-1-2-fs-with-1-3\n"
              "    sni: {enabled: true, certificates: [api_ec, api_rsa]}\n",
        certificates=f'  api_ec: {{type: server, certificate: "{ec_crt}", '
                     f'private_key: "{ec_key}"}}\n'
                     f'  api_rsa: {{type: server, certificate: "{rsa_crt}", '
                     f'private_key: "{rsa_key}"}}')
    running(text, admin, port)

    def served(cipher: str) -> tuple[str, list]:
        ctx = trust(ca)
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers(cipher)
        with handshake(port, ctx, server_hostname="api.test") as s:
            names = [v for k, v in s.getpeercert()["subjectAltName"]]
            return s.cipher()[0], names

    assert served("ECDHE-ECDSA-AES128-GCM-SHA256") == ("ECDHE-ECDSA-AES128-GCM-SHA256",
                                                       ["api.test"])
    assert served("ECDHE-RSA-AES128-GCM-SHA256") == ("ECDHE-RSA-AES128-GCM-SHA256",
                                                     ["api.test"])
    ctx = trust(ca)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with handshake(port, ctx, server_hostname="api.test") as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n")
        while s.recv(65536):
            pass
        session = s.session
    with handshake(port, ctx, server_hostname="api.test", session=session) as s:
        assert s.session_reused
    time.sleep(0.2)
    assert metric(admin, "lbcore_tls_resumed_handshakes_total") == 1
    assert metric(admin, "lbcore_sni_unmatched_total") == 0
