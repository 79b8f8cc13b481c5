"""lbcore's own plain TCP transport (lbcore_ext/transport.pyx, TcpTransport)
on a plain HTTP listener, as clients and operators see it: running out of
file descriptors, half-close, a slow reader of a large response, pipelining,
reloads under keep-alive and new-connection clients, and the leak counters
back to zero after each."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import socket
import threading
import time

import httpx
import pytest

from tests.support.lbproc import free_port
from tests.support.live import wait_live_zero
from tests.support.procstats import cpu_spent, listener_metric
from tests.support.reloads import reload_under_load

pytestmark = pytest.mark.timeout(240)

BIG = 8 * 1024 * 1024


def http_config(admin: int, port: int, backend: int, limits: str = "") -> str:
    return f"""\
load_balancer:
  workers: 2
  admin: {{address: 127.0.0.1, port: {admin}}}
  access_log: {{path: "off"}}
listeners:
  - name: web
    protocol: HTTP
    address: 127.0.0.1
    port: {port}
    default_pool: p
    limits: {{{limits}}}
pools:
  p: {{health_check: {{enabled: false}}, members: [{{address: 127.0.0.1, port: {backend}}}]}}
"""


async def _handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """/big/<n>: n bytes of body; anything else a short body naming the path.
    Keep-alive."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1]
            if path.startswith(b"/big/"):
                n = int(path.rsplit(b"/", 1)[1])
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % n)
                chunk = b"x" * 65536
                left = n
                while left:
                    piece = chunk[:min(left, len(chunk))]
                    writer.write(piece)
                    left -= len(piece)
                    await writer.drain()
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(path), path))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


@pytest.fixture
def backend(loop_thread):
    async def start():
        return await asyncio.start_server(_handler, "127.0.0.1", 0)

    server = loop_thread.call(start())
    yield server.sockets[0].getsockname()[1]

    async def close():
        server.close()

    loop_thread.call(close())


@pytest.fixture
def site(running, backend):
    admin, port = free_port(), free_port()
    lb = running(http_config(admin, port, backend), admin, port)
    return lb


def worker_pids(lb) -> list[int]:
    return [w["pid"] for w in lb.ready_workers(lb.status())]


def metric(admin: int, name: str, listener: str = "web", **labels) -> float:
    return listener_metric(admin, name, listener, **labels)


def read_response(s: socket.socket, buf: bytes = b"") -> tuple[bytes, bytes, bytes]:
    """One Content-Length response from s: (head, body, bytes after it)."""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise AssertionError(f"closed before a response head: {buf[:200]!r}")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    n = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(rest) < n:
        chunk = s.recv(65536)
        if not chunk:
            raise AssertionError(f"closed mid-body: {len(rest)} of {n}")
        rest += chunk
    return head, rest[:n], rest[n:]


def get_close(port: int, path: str = "/") -> bytes:
    with socket.create_connection(("127.0.0.1", port), 5) as s:
        s.settimeout(5)
        s.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path.encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


def test_out_of_file_descriptors_backs_off_and_recovers(site):
    """With the workers' RLIMIT_NOFILE nearly used up (a low `ulimit -n`),
    accept() on the plain listener fails with EMFILE: it pauses (counted in
    lbcore_accept_backoffs_total) instead of spinning on a backlog that stays
    readable, and serves again once descriptors are free."""
    lb = site
    pids = worker_pids(lb)
    assert get_close(lb.port).startswith(b"HTTP/1.1 200")
    limits = {}
    for pid in pids:
        limits[pid] = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        used = len(os.listdir(f"/proc/{pid}/fd"))
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (used + 8, limits[pid][1]))
    socks = [socket.create_connection(("127.0.0.1", lb.port), 5) for _ in range(60)]
    try:
        time.sleep(0.5)
        spent = cpu_spent(pids, 2.0)
        assert max(spent) < 0.3, f"workers spun while out of descriptors: {spent} s in 2 s"
        assert metric(lb.admin, "lbcore_accept_backoffs_total") > 0
    finally:
        for s in socks:
            s.close()
    deadline = time.monotonic() + 15
    while True:
        try:
            assert get_close(lb.port).startswith(b"HTTP/1.1 200")
            break
        except (OSError, AssertionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    for pid in pids:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, limits[pid])
    assert lb.status()["ready"]
    wait_live_zero(lb.admin)


def test_half_close_still_gets_the_answer(site):
    """A client that sends its request and shuts its side (FIN) still reads
    the whole response: eof_received keeps the write side open, and the
    connection closes after the answer."""
    with socket.create_connection(("127.0.0.1", site.port), 5) as s:
        s.settimeout(5)
        s.sendall(b"GET /big/300000 HTTP/1.1\r\nHost: x\r\n\r\n")
        s.shutdown(socket.SHUT_WR)
        head, body, rest = read_response(s)
        assert head.startswith(b"HTTP/1.1 200"), head
        assert len(body) == 300000 and rest == b""
        assert s.recv(1) == b""                      # then lbcore closes
    wait_live_zero(site.admin)


def test_slow_reader_of_a_large_response_is_flow_controlled(site):
    """8 MiB to a client that reads slowly: lbcore pauses the member instead
    of buffering the response (the workers' RSS grows far less than the
    body), and every byte arrives."""
    lb = site
    pids = worker_pids(lb)

    def rss() -> int:
        total = 0
        for pid in pids:
            with open(f"/proc/{pid}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        return total

    start = rss()
    peak = start
    with socket.create_connection(("127.0.0.1", lb.port), 5) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        s.settimeout(10)
        s.sendall(b"GET /big/%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % BIG)
        got = 0
        t0 = time.monotonic()
        while chunk := s.recv(16384):
            got += len(chunk)
            if time.monotonic() - t0 < 2.0:
                time.sleep(0.01)                    # slow for the first seconds
                peak = max(peak, rss())
    head_len = got - BIG
    assert 0 < head_len < 300, got
    print(f"workers' RSS (KiB): start {start}, peak while slow {peak}")
    assert peak - start < 4 * 1024, (start, peak)
    wait_live_zero(lb.admin)


def test_pipelined_requests_answered_in_order(site):
    """20 requests in one write; the answers come back in order on the one
    connection, then keep-alive goes on."""
    with socket.create_connection(("127.0.0.1", site.port), 5) as s:
        s.settimeout(5)
        s.sendall(b"".join(b"GET /p/%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(20)))
        buf = b""
        for i in range(20):
            head, body, buf = read_response(s, buf)
            assert head.startswith(b"HTTP/1.1 200"), head
            assert body == b"/p/%d" % i
        s.sendall(b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n")
        head, body, buf = read_response(s, buf)
        assert body == b"/after"
    wait_live_zero(site.admin)


def test_reloads_fail_no_plain_request(site):
    """10 reloads under keep-alive clients and new-connection-per-request
    clients on the plain listener: every request gets its response (an idle
    keep-alive connection of a draining worker is closed only after a quiet
    moment; a request that races the close is retried by httpx on a new
    connection, as HTTP allows for an idempotent request on a reused one)."""
    lb = site
    text = lb.path.read_text()
    stop = threading.Event()
    done = {"keepalive": 0, "new": 0}
    failures: list[str] = []

    def keepalive_client() -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{lb.port}", timeout=10) as c:
            while not stop.is_set():
                try:
                    r = c.get("/ka")
                    if r.status_code != 200 or r.content != b"/ka":
                        failures.append(f"keepalive: {r.status_code} {r.content[:80]!r}")
                    done["keepalive"] += 1
                except httpx.HTTPError as exc:
                    failures.append(f"keepalive: {exc!r}")

    def new_conn_client() -> None:
        while not stop.is_set():
            try:
                data = get_close(lb.port, "/new")
                if not (data.startswith(b"HTTP/1.1 200") and data.endswith(b"/new")):
                    failures.append(f"new: {data[:80]!r}")
                done["new"] += 1
            except OSError as exc:
                failures.append(f"new: {exc!r}")

    threads = [threading.Thread(target=keepalive_client) for _ in range(3)]
    threads += [threading.Thread(target=new_conn_client) for _ in range(3)]
    reload_under_load(lb, text, threads, stop)
    print(f"requests: {done}, failures: {len(failures)}")
    assert done["keepalive"] > 100 and done["new"] > 100, done
    assert not failures, failures[:5]
    wait_live_zero(lb.admin)


def test_limits_count_plain_connections_at_once(running, backend):
    """max_connections on a plain listener: a connection is open from accept
    (no CONN_OPENING phase), so idle connections fill the limit and the next
    one is refused, counted; closing them makes room again."""
    admin, port = free_port(), free_port()
    running(http_config(admin, port, backend, "max_connections: 10"), admin, port)
    socks = [socket.create_connection(("127.0.0.1", port), 5) for _ in range(10)]
    try:
        deadline = time.monotonic() + 10
        while metric(admin, "lbcore_connections_active") < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert metric(admin, "lbcore_connections_opening") == 0
        with socket.create_connection(("127.0.0.1", port), 5) as extra:
            extra.settimeout(5)
            extra.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            with contextlib.suppress(ConnectionResetError):
                assert extra.recv(100) == b""
        assert metric(admin, "lbcore_connections_refused_total",
                      reason="max_connections") >= 1
    finally:
        for s in socks:
            s.close()
    deadline = time.monotonic() + 10
    while True:
        try:
            assert get_close(port).startswith(b"HTTP/1.1 200")
            break
        except (OSError, AssertionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    wait_live_zero(admin)
