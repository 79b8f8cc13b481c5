"""Retries as a pool configures them (issue 13, item 4): which failures are
retried, how many times, and the retry budget under a failing pool. Members
are scripted servers on loopback that count what they receive."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

from tests.e2e.test_metrics import scrape
from tests.support.lbproc import free_port

pytestmark = pytest.mark.timeout(120)


class Member:
    """Answers every request with `status` after `delay` seconds; counts them."""

    def __init__(self, status: int = 200, delay: float = 0.0) -> None:
        self.status, self.delay = status, delay
        self.requests = 0
        self.lock = threading.Lock()

    async def handle(self, reader, writer) -> None:
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                with self.lock:
                    self.requests += 1
                await asyncio.sleep(self.delay)
                writer.write(b"HTTP/1.1 %d X\r\nContent-Length: 2\r\n\r\nno" % self.status)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
def members(loop_thread):
    """members(*Member) -> their ports."""
    servers = []

    def start(*ms: Member) -> list[int]:
        ports = []
        for m in ms:
            async def go(m=m):
                return await asyncio.start_server(m.handle, "127.0.0.1", 0)

            server = loop_thread.call(go())
            servers.append(server)
            ports.append(server.sockets[0].getsockname()[1])
        return ports

    yield start
    for s in servers:
        loop_thread.loop.call_soon_threadsafe(s.close)


def config(admin: int, port: int, ports: list[int], retries: str,
           response_timeout: int = 60) -> str:
    members = ", ".join(f"{{name: m{i}, address: 127.0.0.1, port: {p}}}"
                        for i, p in enumerate(ports))
    return f"""\
load_balancer:
  workers: 2
  admin: {{address: 127.0.0.1, port: {admin}}}
  access_log: {{path: "off"}}
listeners:
  - {{name: web, protocol: HTTP, address: 127.0.0.1, port: {port}, default_pool: p,
     response_timeout: {response_timeout}}}
pools:
  p:
    health_check: {{enabled: false}}
    retries: {retries}
    members: [{members}]
"""


def retries_of(admin: int) -> dict[str, float]:
    m = scrape(admin)
    out = {reason: v for (name, labels), v in m.items() if name == "lbcore_retries_total"
           for k, reason in labels if k == "reason"}
    out["budget_exhausted"] = m[("lbcore_retry_budget_exhausted_total",
                                 (("listener", "web"), ("pool", "p")))]
    return out


@pytest.mark.parametrize("on,tries", [("[connect_failure, reset, response_timeout]", 2),
                                      ("[connect_failure, reset]", 1)])
def test_response_timeout_retry_is_a_setting(running, members, on, tries):
    """A GET past response_timeout is retried on the other member by default
    (spec 7.2), doubling the time to the 504; without response_timeout in
    `retry_on` the first time-out answers."""
    slow = [Member(delay=5), Member(delay=5)]
    admin, port = free_port(), free_port()
    lb = running(config(admin, port, members(*slow), f"{{retry_on: {on}}}", response_timeout=1),
                 admin, port)
    t0 = time.monotonic()
    assert lb.get("/slow").status_code == 504
    took = time.monotonic() - t0
    print(f"\nretry_on {on}: 504 after {took:.2f}s, {tries} member(s) tried")
    assert sum(m.requests for m in slow) == tries
    got = retries_of(admin)
    assert got["response_timeout"] == tries - 1 and got["budget_exhausted"] == 0


def test_status_retries_and_max_retries(running, members):
    """A member's own 503 is relayed by default; listed in `retry_on`, it is retried
    on another member, at most max_retries times."""
    bad = [Member(503), Member(503), Member(503), Member(503)]
    admin, port = free_port(), free_port()
    lb = running(config(admin, port, members(*bad), "{retry_on: [http_503], max_retries: 2}"),
                 admin, port)
    r = lb.get("/")
    assert r.status_code == 503 and r.text == "no"      # the last member's own answer
    assert sum(m.requests for m in bad) == 3
    assert retries_of(admin)["http_503"] == 2


def test_retry_budget_under_a_failing_pool(running, members):
    """Every member answers 503 slowly and 503s are retried up to 4 times: 30
    clients would put 5 tries each on the pool. The budget (20% of active
    requests, at least 2 per worker) keeps retries in flight to a fraction:
    the rest are answered at once with the member's 503 and counted."""
    failing = [Member(503, delay=0.2) for _ in range(5)]
    admin, port = free_port(), free_port()
    lb = running(config(admin, port, members(*failing),
                        "{retry_on: [http_503], max_retries: 4, "
                        "budget: {percent: 20, min_concurrent: 2}}"), admin, port)
    clients, per_client = 30, 8
    statuses: list[int] = []
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(timeout=30) as c:
            for _ in range(per_client):
                code = c.get(f"http://127.0.0.1:{port}/").status_code
                with lock:
                    statuses.append(code)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    requests = clients * per_client
    assert statuses == [503] * requests
    tries = sum(m.requests for m in failing)
    got = retries_of(admin)
    print(f"\nretry budget: {requests} requests, {tries} member tries, "
          f"{got['http_503']:.0f} retries, {got['budget_exhausted']:.0f} refused by the budget "
          f"(without a budget: {requests * 4} retries)")
    # Every try beyond the first of each request is a counted retry.
    assert tries == requests + got["http_503"]
    assert got["budget_exhausted"] > 0
    # Far from the 4 retries per request the pool would get without a budget.
    assert got["http_503"] < requests

    # Alone again, a request gets its full retries: the budget was released.
    before = tries
    assert lb.get("/").status_code == 503
    assert sum(m.requests for m in failing) - before == 5
