"""Member host names (issue 13, item 5): checked at load, followed while
serving, and a reload that can't resolve them fails loudly.

Real DNS can't be changed from a test: LBCORE_TEST_HOSTS points lbcore's
resolver at a file in /etc/hosts format, read at every lookup (lbcore/dns.py).
Names under `.invalid` (RFC 6761) go to the system resolver and fail there."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections import Counter

import httpx
import pytest

from tests.e2e.test_metrics import scrape
from tests.support.lbproc import free_port

pytestmark = pytest.mark.timeout(120)


async def _handler(reader, writer, name: str, health: int) -> None:
    """`name` for any request; `health` as the status of /health."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1]
            status = health if path == b"/health" else 200
            body = name.encode()
            writer.write(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s"
                         % (status, len(body), body))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


@pytest.fixture
def on_addresses(loop_thread):
    """on_addresses({address: (name, health status)}) -> one port, served on each."""
    servers = []

    def start(spec: dict[str, tuple[str, int]]) -> int:
        port = free_port()
        for address, (name, health) in spec.items():
            async def go(address=address, name=name, health=health):
                return await asyncio.start_server(
                    lambda r, w: _handler(r, w, name, health), address, port)

            servers.append(loop_thread.call(go()))
        return port

    yield start
    for s in servers:
        loop_thread.loop.call_soon_threadsafe(s.close)


def config(admin: int, port: int, member_port: int, address: str = "web.test") -> str:
    return f"""\
load_balancer:
  workers: 2
  admin: {{address: 127.0.0.1, port: {admin}}}
  access_log: {{path: "off"}}
listeners:
  - {{name: web, protocol: HTTP, address: 127.0.0.1, port: {port}, default_pool: p}}
pools:
  p:
    resolve_interval: 1
    health_check: {{protocol: HTTP, path: /health, interval: 1, unhealthy_threshold: 1,
                    healthy_threshold: 1}}
    members: [{{address: {address}, port: {member_port}}}]
"""


def names_served(lb, n: int = 20) -> Counter:
    with httpx.Client(timeout=5) as c:
        return Counter(c.get(f"http://127.0.0.1:{lb.port}/").text for _ in range(n))


def members_of(status: dict) -> list[tuple[str, str]]:
    return [(m["ip"], m["health"]) for m in status["pools"]["p"]["members"]]


def test_dns_change_is_followed_without_restart(running, on_addresses, tmp_path, monkeypatch):
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 web.test\n127.0.0.2 web.test\n")
    monkeypatch.setenv("LBCORE_TEST_HOSTS", str(hosts))
    # b fails its health check: it must stay out when the answer changes around it.
    mport = on_addresses({"127.0.0.1": ("a", 200), "127.0.0.2": ("b", 503),
                          "127.0.0.3": ("c", 200)})
    admin, port = free_port(), free_port()
    lb = running(config(admin, port, mport), admin, port)
    lb.wait(lambda s: members_of(s) == [("127.0.0.1", "up"), ("127.0.0.2", "down")])
    names = {m["name"] for m in lb.status()["pools"]["p"]["members"]}
    assert names == {f"web.test:{mport}/127.0.0.1", f"web.test:{mport}/127.0.0.2"}
    pids = {w["pid"] for w in lb.status()["workers"]}
    # Let every worker apply b's health before counting who serves.
    deadline = time.monotonic() + 10
    while names_served(lb, 10) != Counter({"a": 10}) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert names_served(lb) == Counter({"a": 20})

    # a leaves, c joins; b stays and keeps its (down) state: no new check trusted first.
    hosts.write_text("127.0.0.2 web.test\n127.0.0.3 web.test\n")
    seen = lb.wait(lambda s: [ip for ip, _ in members_of(s)] == ["127.0.0.2", "127.0.0.3"])
    assert ("127.0.0.2", "down") in members_of(seen)
    lb.wait(lambda s: ("127.0.0.3", "up") in members_of(s))
    deadline = time.monotonic() + 10
    while names_served(lb, 10) != Counter({"c": 10}) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert names_served(lb, 40) == Counter({"c": 40})
    # c appeared at runtime: the master gave it counter cells of its own.
    c_label = (("listener", "web"), ("member", f"web.test:{mport}/127.0.0.3"), ("pool", "p"))
    m = scrape(admin)
    assert m[("lbcore_member_requests_total", c_label)] >= 40
    assert m[("lbcore_member_responses_total", (("code", "2xx"), *c_label))] >= 40

    # One address: the member is named as written again.
    hosts.write_text("127.0.0.3 web.test\n")
    seen = lb.wait(lambda s: [ip for ip, _ in members_of(s)] == ["127.0.0.3"])
    assert seen["pools"]["p"]["members"][0]["name"] == f"web.test:{mport}"

    # The name stops resolving: the last answer keeps serving, the failure is counted.
    hosts.write_text("")
    deadline = time.monotonic() + 10
    m = scrape(admin)
    while not m.get(("lbcore_dns_resolutions_total", (("pool", "p"), ("result", "failure")))):
        assert time.monotonic() < deadline, "no failed lookup counted"
        time.sleep(0.2)
        m = scrape(admin)
    assert names_served(lb, 10) == Counter({"c": 10})

    status = lb.status()
    assert {w["pid"] for w in status["workers"]} == pids       # no worker was replaced
    assert status["config"]["reloads"] == {} and status["config"]["generation"] == 1
    out, err = lb.stop()
    assert "DNS: pool p members now 127.0.0.2" in err, err


def test_unresolvable_name_fails_reload_check_and_run(running, on_addresses, tmp_path,
                                                      monkeypatch):
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 web.test\n")
    monkeypatch.setenv("LBCORE_TEST_HOSTS", str(hosts))
    mport = on_addresses({"127.0.0.1": ("a", 200)})
    admin, port = free_port(), free_port()
    lb = running(config(admin, port, mport), admin, port)
    assert lb.get().text == "a"

    lb.reload(config(admin, port, mport, address="nope.invalid"))
    lb.wait(lambda s: s["config"]["reloads"].get("failure") == 1)
    m = scrape(admin)
    assert m[("lbcore_reloads_total", (("result", "failure"),))] == 1
    assert lb.get().text == "a"                 # the old config keeps serving
    assert lb.status()["config"]["generation"] == 1

    bad = tmp_path / "lb.yaml"
    for cmd in ("check", "run"):
        out = subprocess.run([sys.executable, "-m", "lbcore", cmd, "-c", str(bad)],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 1
        assert f"{bad}:12: pools.p.members[0].address: 'nope.invalid' does not resolve" \
            in out.stderr, out.stderr
        assert "Traceback" not in out.stderr
    _, err = lb.stop()
    assert "reload failed" in err and "'nope.invalid' does not resolve" in err
