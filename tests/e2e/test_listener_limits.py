"""Limits that hold for a whole listener across its workers (spec 8, 10):
a forwarding policy's qps_limit, max_connections and
max_new_connections_per_second, with 2 workers, measured against the limit
(not against a speed: the clients go as fast as they can, the limit must
hold within its stated accuracy)."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import threading
import time

import httpx
import pytest

from tests.e2e.test_metrics import scrape
from tests.support.lbproc import free_port

QPS = 40
SECONDS = 5


def config(admin: int, port: int, backend: int, limits: str = "", qps: int = QPS) -> str:
    return f"""\
load_balancer: {{workers: 2, admin: {{port: {admin}}}, access_log: {{path: "off"}}}}
listeners:
  - name: web
    protocol: HTTP
    address: 127.0.0.1
    port: {port}
    default_pool: p
    limits: {{{limits}}}
    forwarding_policies:
      - {{name: limited, priority: 1, qps_limit: {qps}, rules: [{{type: path, values: [/limited]}}],
         action: {{type: forward, pool: p}}}}
pools:
  p: {{health_check: {{enabled: false}}, members: [{{address: 127.0.0.1, port: {backend}}}]}}
"""


def hammer(port: int, path: str, seconds: float, threads: int = 6) -> tuple[dict, float]:
    """Requests as fast as `threads` clients go, each on new connections now
    and then (so both workers get some): (status -> count, seconds from the
    first request sent to the last answered)."""
    counts: dict[int, int] = {}
    lock = threading.Lock()
    stop = time.monotonic() + seconds
    span = [float("inf"), 0.0]

    def run():
        local: dict[int, int] = {}
        while time.monotonic() < stop:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as c:
                for _ in range(20):
                    if time.monotonic() >= stop:
                        break
                    t0 = time.monotonic()
                    code = c.get(path).status_code
                    local[code] = local.get(code, 0) + 1
                    with lock:
                        span[0] = min(span[0], t0)
                        span[1] = max(span[1], time.monotonic())
        with lock:
            for k, v in local.items():
                counts[k] = counts.get(k, 0) + v

    ts = [threading.Thread(target=run) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return counts, span[1] - span[0]


def h2load(port: int, path: str, seconds: int, conns: int = 16) -> tuple[dict, float]:
    """HTTP/1.1 keep-alive load from h2load (a C client: demand stays far
    above the limit even on a loaded machine, where Python clients stall),
    in two bursts of connections half a second apart: a worker's loop takes
    a whole burst, and the second mostly goes to the worker not yet busy.
    (status -> count, seconds the first ran)."""
    exe = shutil.which("h2load")
    if exe is None:
        pytest.skip("h2load (Debian nghttp2-client, installed by make test) is missing")

    def start(duration: int) -> subprocess.Popen:
        return subprocess.Popen([exe, "--h1", "-c", str(conns), "-D", str(duration),
                                 f"http://127.0.0.1:{port}{path}"], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    first = start(seconds)
    time.sleep(0.5)
    second = start(seconds - 1)
    counts = {200: 0, 503: 0}
    span = 0.0
    for proc in (first, second):
        out = proc.communicate(timeout=seconds + 30)[0]
        codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
        took = re.search(r"finished in ([\d.]+)(m?s)", out)
        assert codes and took, out
        counts[200] += int(codes.group(1))
        counts[503] += int(codes.group(4))
        span = max(span, float(took.group(1)) / (1000 if took.group(2) == "ms" else 1))
    return counts, span


def test_qps_limit_holds_across_two_workers(running, slow_backends):
    (backend,) = slow_backends(1)
    admin, port = free_port(), free_port()
    lb = running(config(admin, port, backend), admin, port)

    def served() -> list[int]:
        return [w["requests"] for w in lb.ready_workers(lb.status())]

    for _attempt in range(3):
        before = served()
        counts, span = h2load(port, "/limited", SECONDS)
        # Both workers took part (else the limit could be one worker's): the
        # kernel hands a burst of connections to whichever worker wakes first.
        if all(b > a for a, b in zip(before, served(), strict=True)):
            break
    else:
        pytest.fail(f"one worker took every connection three times: {lb.status()}")
    allowed = counts.get(200, 0)
    # The bucket lends QPS_BURST_SECONDS (0.1 s) of the rate at once.
    expected = QPS * span + QPS * 0.1
    assert counts.get(503, 0) > allowed, counts          # the clients went well past it
    assert abs(allowed - expected) <= 0.1 * expected, (counts, expected)
    r = httpx.get(f"http://127.0.0.1:{port}/limited")
    if r.status_code == 503:
        assert r.headers["retry-after"] == "1" and r.headers["x-router-code"] == "50002"
    m = scrape(admin)
    refused = m[("lbcore_generated_errors_total",
                 (("code", "503"), ("listener", "web"), ("reason", "qps_limit")))]
    assert refused >= counts[503]
    print(f"qps_limit {QPS}/s over {span:.2f}s, 2 workers: {allowed} allowed "
          f"(expected {expected:.0f}), {counts[503]} refused")
    # Other paths are not limited.
    assert hammer(port, "/free", 1.0, threads=2)[0].keys() == {200}


def _open(port: int, n: int) -> list[socket.socket]:
    return [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(n)]


def _alive(socks: list[socket.socket]) -> list[socket.socket]:
    """Connections the server kept (a closed one reads EOF at once)."""
    alive = []
    for s in socks:
        s.settimeout(0.3)
        try:
            if s.recv(1) == b"":
                s.close()
                continue
        except TimeoutError:
            pass
        except OSError:
            s.close()
            continue
        alive.append(s)
    return alive


def test_max_connections_across_two_workers(running, slow_backends):
    (backend,) = slow_backends(1)
    admin, port = free_port(), free_port()
    lb = running(config(admin, port, backend, "max_connections: 20"), admin, port)
    socks = _open(port, 60)
    time.sleep(0.5)
    alive = _alive(socks)
    # Two workers accepting at the same instant may each let one through.
    assert 20 <= len(alive) <= 22, len(alive)
    m = scrape(admin)
    key = ("lbcore_connections_refused_total",
           (("listener", "web"), ("reason", "max_connections")))
    assert m[key] == 60 - len(alive)
    # Closing some makes room again, and a request on a kept one is served.
    for s in alive[:5]:
        s.close()
    active = ("lbcore_connections_active", (("listener", "web"),))
    deadline = time.monotonic() + 5
    while scrape(admin)[active] > len(alive) - 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    more = _alive(_open(port, 10))
    room = max(0, 20 - (len(alive) - 5))         # (alive may be 20-22)
    assert room <= len(more) <= room + 2, (len(alive), len(more))
    keep = alive[5]
    keep.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    keep.settimeout(5)
    assert keep.recv(100).startswith(b"HTTP/1.1 200")
    for s in alive[5:] + more:
        s.close()
    assert lb.status()["ready"]


def test_new_connection_rate_across_two_workers(running, slow_backends):
    (backend,) = slow_backends(1)
    admin, port = free_port(), free_port()
    rate = 25
    running(config(admin, port, backend, f"max_new_connections_per_second: {rate}"), admin,
            port)
    served = refused = 0
    stop = time.monotonic() + 3.0
    while time.monotonic() < stop:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            try:
                data = s.recv(100)
            except ConnectionResetError:
                data = b""
            if data.startswith(b"HTTP/1.1 200"):
                served += 1
            else:
                refused += 1
    expected = rate * 3.0 + rate * 0.1
    assert refused > served
    assert abs(served - expected) <= 0.1 * expected + 1, (served, refused, expected)
    m = scrape(admin)
    key = ("lbcore_connections_refused_total",
           (("listener", "web"), ("reason", "max_new_connections_per_second")))
    assert m[key] == refused
    print(f"max_new_connections_per_second {rate}: {served} served in 3 s "
          f"(expected {expected:.0f}), {refused} closed at accept")
