"""Member response heads are bounded (the listener's max_header_block, or the
pool's max_response_header), interim responses included: over it, the client
gets a 502 counted with reason upstream_header_too_big, the member
connection is closed, and a member that never ends its head costs the worker
one read past the limit, not its CPU or memory."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.e2e.test_h2_attacks import cpu_seconds, rss
from tests.e2e.test_metrics import scrape
from tests.support.lbproc import LbProcess, free_port, wait_port
from tests.support.live import live_objects, wait_live_zero

MB = 1 << 20
TOO_BIG = ("lbcore_generated_errors_total", (("code", "502"), ("listener", "web"),
                                             ("reason", "upstream_header_too_big")))


async def _member(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """GET /endless: a header line that never ends (bounded: 40 MiB);
    /huge/<n>: n header lines of 60 KiB; /early/<n>: n 103 responses, then
    200; /head/<n>: a head of about n bytes; anything else: a small 200."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1].decode()
            if path == "/endless":
                writer.write(b"HTTP/1.1 200 OK\r\nX-Endless: ")
                for _ in range(640):
                    writer.write(b"a" * 65536)
                    await writer.drain()
                return
            if path.startswith("/huge/"):
                writer.write(b"HTTP/1.1 200 OK\r\n")
                for i in range(int(path.rsplit("/", 1)[1])):
                    writer.write(b"X-Huge-%d: %s\r\n" % (i, b"h" * 61440))
                    await writer.drain()
                writer.write(b"Content-Length: 2\r\n\r\nok")
            elif path.startswith("/early/"):
                hint = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
                n = int(path.rsplit("/", 1)[1])
                for _ in range(n // 1000):
                    writer.write(hint * 1000)
                    await writer.drain()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            elif path.startswith("/head/"):
                n = int(path.rsplit("/", 1)[1])
                writer.write(b"HTTP/1.1 200 OK\r\nX-Pad: %s\r\nContent-Length: 2\r\n\r\nok"
                             % (b"p" * n))
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


@pytest.fixture
def lb(tmp_path, loop_thread):
    async def start():
        return await asyncio.start_server(_member, "127.0.0.1", 0)

    server = loop_thread.call(start())
    member = server.sockets[0].getsockname()[1]
    port, small_port, admin = free_port(), free_port(), free_port()
    (tmp_path / "lb.yaml").write_text(f"""\
load_balancer: {{workers: 1, admin: {{port: {admin}}}, access_log: {{path: "off"}}}}
listeners:
  - {{name: web, protocol: HTTP, address: 127.0.0.1, port: {port}, default_pool: p}}
  - {{name: small, protocol: HTTP, address: 127.0.0.1, port: {small_port},
     default_pool: tight}}
pools:
  p:
    health_check: {{enabled: false}}
    members: [{{address: 127.0.0.1, port: {member}}}]
  tight:
    max_response_header: 8192
    health_check: {{enabled: false}}
    members: [{{address: 127.0.0.1, port: {member}}}]
""")
    proc = LbProcess(["run", "-c", str(tmp_path / "lb.yaml")])
    try:
        for p in (port, small_port, admin):
            wait_port(p, proc.proc)
        time.sleep(0.3)
        (worker,) = httpx.get(f"http://127.0.0.1:{admin}/status").json()["workers"]
        yield {"port": port, "small": small_port, "admin": admin, "worker": worker["pid"]}
    finally:
        proc.stop()
        loop_thread.loop.call_soon_threadsafe(server.close)


@pytest.mark.parametrize("path", ["/endless", "/huge/20", "/early/200000"])
def test_member_head_over_the_limit_is_a_502(lb, path):
    base = f"http://127.0.0.1:{lb['port']}"
    before = scrape(lb["admin"]).get(TOO_BIG, 0)
    rss0, cpu0 = rss(lb["worker"]), cpu_seconds(lb["worker"])
    t0 = time.monotonic()
    r = httpx.get(base + path, timeout=10)
    took = time.monotonic() - t0
    assert r.status_code == 502
    # Other clients are served meanwhile and after.
    assert httpx.get(base + "/ok", timeout=5).status_code == 200
    cpu = cpu_seconds(lb["worker"]) - cpu0
    grew = rss(lb["worker"]) - rss0
    print(f"[{path}] 502 in {took:.2f}s, worker cpu {cpu:.2f}s, rss +{grew / MB:.1f} MB")
    assert took < 3 and cpu < 1.0 and grew < 20 * MB
    assert scrape(lb["admin"])[TOO_BIG] == before + 1
    wait_live_zero(lb["admin"])


def test_pool_limit_overrides_the_listener(lb):
    small = f"http://127.0.0.1:{lb['small']}"
    assert httpx.get(small + "/head/4000", timeout=5).status_code == 200
    assert httpx.get(small + "/head/10000", timeout=5).status_code == 502
    # The same head through the listener's own limit (64 KiB) passes.
    assert httpx.get(f"http://127.0.0.1:{lb['port']}/head/10000", timeout=5).status_code == 200
    assert all(w["exchanges"] == 0 for w in live_objects(lb["admin"]))
