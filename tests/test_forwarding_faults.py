"""The forwarding core against backends that misbehave, through real loopback
sockets: framing of every response kind, retries, time-outs, and failures that
must never look like a complete response."""

from __future__ import annotations

import asyncio
import socket
import struct
import time

import pytest

from lbcore_ext.balancer import STICKY_LB_COOKIE
from tests.support.inproc import LoopThread, exchange, start_backend, start_proxy
from tests.support.lbproc import free_port


class Scripted(asyncio.Protocol):
    """A backend whose behaviour is chosen by the request path."""

    served: list

    def connection_made(self, transport):
        self.transport, self.buf = transport, b""
        self.conn_id = id(self) & 0xFFFF

    def data_received(self, data):
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, rest = self.buf.split(b"\r\n\r\n", 1)
            cl = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    cl = int(value)
            if len(rest) < cl:
                return
            self.buf = rest[cl:]
            method, path = head.split(b" ")[:2]
            self.served.append((self.name, method, path))
            self.respond(method, path, head)

    name = "a"

    def respond(self, method, path, head):
        t = self.transport
        if path == b"/chunked":
            t.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        elif path == b"/until-close":
            t.write(b"HTTP/1.1 200 OK\r\n\r\nall of it")
            t.close()
        elif path == b"/head":
            t.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
        elif path in (b"/204", b"/304"):
            t.write(b"HTTP/1.1 %s X\r\n\r\n" % path[1:])
        elif path == b"/continue":
            t.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        elif path == b"/stall":
            pass
        elif path == b"/die-mid":
            t.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789")
            t.close()
        elif path == b"/reset":
            sock = t.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            t.abort()
        elif path == b"/malformed":
            t.write(b"HTTP/1.1 2OO OK\r\nContent-Length: 2\r\n\r\nok")
        elif path == b"/close-after":
            t.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            t.close()
        elif path.startswith(b"/later/"):
            # /later/<ms>[/close/<ms>]: the usual answer after a delay, and
            # then maybe a close of the (idle, kept-alive) connection.
            parts = path.split(b"/")
            loop = asyncio.get_running_loop()
            loop.call_later(int(parts[2]) / 1000, self.answer)
            if len(parts) > 4:
                loop.call_later(int(parts[4]) / 1000, t.close)
        else:
            self.answer()

    def answer(self):
        body = b"%s %d" % (self.name.encode(), self.conn_id)
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


class Healthy(Scripted):
    """Always answers 200 whatever the path: the 'other member' for retries."""

    name = "b"

    def respond(self, method, path, head):
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nfrom-b\n")


@pytest.fixture(scope="module")
def lt():
    loop_thread = LoopThread()
    yield loop_thread
    loop_thread.stop()


def make(lt, members=("a",), timeouts=1.0, pool_kwargs=None):
    """A proxy in front of scripted members; returns (port, served list)."""
    served: list = []

    async def start():
        ports = []
        for kind in members:
            if kind == "dead":
                ports.append((free_port(), 1))
                continue
            cls = Scripted if kind == "a" else Healthy
            _, p = await start_backend(type("B", (cls,), {"served": served}))
            ports.append((p, 1))

        def configure(lrt):
            lrt.response_timeout = timeouts
            lrt.request_timeout = 5.0
            lrt.connect_timeout = 0.5

        _, port, lrt = await start_proxy(ports, configure, pool_kwargs)
        MADE[port] = lrt
        return port

    return lt.call(start()), served


MADE: dict = {}                         # port -> the proxy's ListenerRuntime


def get(port, path, method=b"GET", extra=b"", version=b"HTTP/1.1"):
    return exchange(port, b"%s %s %s\r\nHost: t\r\n%s\r\n" % (method, path, version, extra))


def test_chunked_response_is_reframed_intact(lt):
    port, _ = make(lt)
    out = get(port, b"/chunked")
    head, body = out.split(b"\r\n\r\n", 1)
    assert b"Transfer-Encoding: chunked" in head
    data, rest = b"", body
    while True:
        size, rest = rest.split(b"\r\n", 1)
        n = int(size, 16)
        if n == 0:
            break
        data, rest = data + rest[:n], rest[n + 2:]
    assert data == b"hello world"


def test_close_delimited_response(lt):
    port, _ = make(lt)
    out = get(port, b"/until-close")
    assert b"Transfer-Encoding: chunked" in out and out.endswith(b"9\r\nall of it\r\n0\r\n\r\n")
    out10 = get(port, b"/until-close", version=b"HTTP/1.0")
    assert out10.endswith(b"\r\n\r\nall of it") and b"Connection: close" in out10


def test_head_204_304_have_no_body_and_keep_alive_survives(lt):
    port, _ = make(lt)
    raw = (b"HEAD /head HTTP/1.1\r\nHost: t\r\n\r\n"
           b"GET /204 HTTP/1.1\r\nHost: t\r\n\r\n"
           b"GET /304 HTTP/1.1\r\nHost: t\r\n\r\n"
           b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\n")
    out = exchange(port, raw)
    parts = out.split(b"HTTP/1.1 ")
    assert [p[:3] for p in parts[1:]] == [b"200", b"204", b"304", b"200"]
    assert b"Content-Length: 100" in parts[1] and parts[1].endswith(b"\r\n\r\n")
    assert parts[4].endswith(b"a " + parts[4].rsplit(b" ", 1)[-1])


def test_pipelined_responses_in_order(lt):
    port, served = make(lt)
    raw = b"".join(b"GET /p%d HTTP/1.1\r\nHost: t\r\n\r\n" % i for i in range(5))
    out = exchange(port, raw)
    assert out.count(b"HTTP/1.1 200") == 5
    assert [p for _, _, p in served] == [b"/p%d" % i for i in range(5)]


def test_100_continue_relayed_to_http11_only(lt):
    port, _ = make(lt)
    out = exchange(port, b"POST /continue HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n"
                         b"Expect: 100-continue\r\n\r\nhi")
    assert out.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200")
    out10 = exchange(port, b"POST /continue HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi")
    assert out10.startswith(b"HTTP/1.1 200")


def test_upstream_keep_alive_is_reused(lt):
    port, _ = make(lt)
    ids = {get(port, b"/id").rsplit(b" ", 1)[-1] for _ in range(5)}
    assert len(ids) == 1


def test_connection_the_backend_closed_is_not_reused(lt):
    port, _ = make(lt)
    assert get(port, b"/close-after").endswith(b"ok")
    time.sleep(0.1)
    assert get(port, b"/id").startswith(b"HTTP/1.1 200")


def test_idle_connection_closed_in_the_middle_of_the_stack(lt):
    """Three member connections go idle in turn (the stack: first, second,
    third on top); the member then closes the second. It leaves the idle
    stack from the middle: the next requests reuse the third, never the
    closed one, and none fails."""
    from concurrent.futures import ThreadPoolExecutor
    port, _ = make(lt)
    paths = [b"/later/100", b"/later/250/close/600", b"/later/400"]
    with ThreadPoolExecutor(3) as pool:
        outs = list(pool.map(lambda p: get(port, p), paths))
    assert all(o.startswith(b"HTTP/1.1 200") for o in outs)
    first, second, third = (o.rsplit(b" ", 1)[-1] for o in outs)
    assert len({first, second, third}) == 3
    member = MADE[port].pool.members[0]
    assert member.n_idle == 3
    time.sleep(0.5)                     # (the second closed at 600 ms after its request)
    assert member.n_idle == 2
    ids = [get(port, b"/id").rsplit(b" ", 1)[-1] for _ in range(4)]
    assert ids == [third] * 4
    # Two at once: the third, then the first below it; the second is gone.
    with ThreadPoolExecutor(2) as pool:
        outs = list(pool.map(lambda p: get(port, p), [b"/later/300", b"/later/300"]))
    assert {o.rsplit(b" ", 1)[-1] for o in outs} == {first, third}
    assert member.n_idle == 2


def test_silent_member_504_then_retry_elsewhere_for_get_only(lt):
    port, _ = make(lt, members=("a",), timeouts=0.5)
    t0 = time.monotonic()
    assert get(port, b"/stall").startswith(b"HTTP/1.1 504")
    assert time.monotonic() - t0 < 3
    port2, served = make(lt, members=("a", "b"), timeouts=0.5)
    outs = [get(port2, b"/stall") for _ in range(2)]
    assert all(o.startswith(b"HTTP/1.1 200") and o.endswith(b"from-b\n") for o in outs)
    post = exchange(port2, b"POST /stall HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nx")
    post2 = exchange(port2, b"POST /stall HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nx")
    # POST is never retried once sent: whichever member is silent answers 504
    assert {post[:12], post2[:12]} == {b"HTTP/1.1 504", b"HTTP/1.1 200"}


def test_refused_and_reset_are_retried_then_502(lt):
    port, _ = make(lt, members=("dead", "b"))
    assert all(get(port, b"/x").endswith(b"from-b\n") for _ in range(4))
    port, _ = make(lt, members=("dead",))
    t0 = time.monotonic()
    assert get(port, b"/x").startswith(b"HTTP/1.1 502")
    assert time.monotonic() - t0 < 2
    port, _ = make(lt, members=("a",))
    assert get(port, b"/reset").startswith(b"HTTP/1.1 502")
    port, _ = make(lt, members=("a", "b"))
    assert all(get(port, b"/reset").endswith(b"from-b\n") for _ in range(2))


def test_malformed_response_is_502_never_passed_through(lt):
    port, _ = make(lt)
    out = get(port, b"/malformed")
    assert out.startswith(b"HTTP/1.1 502") and b"2OO" not in out


def test_death_mid_response_never_looks_complete(lt):
    port, _ = make(lt)
    out = get(port, b"/die-mid")
    head, _, body = out.partition(b"\r\n\r\n")
    assert b"Content-Length: 1000" in head
    assert len(body.replace(b"<RST>", b"")) < 1000     # truncated, connection broken


def test_connect_timeout_is_504(lt):
    # A listener whose accept queue is full and never drained: SYNs go unanswered.
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(0)
    bport = blackhole.getsockname()[1]
    fillers = []
    for _ in range(3):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", bport))
        fillers.append(s)
    time.sleep(0.2)
    try:
        async def start():
            def configure(lrt):
                lrt.connect_timeout = 0.5
            _, port, _ = await start_proxy([(bport, 1)], configure)
            return port
        port = lt.call(start())
        t0 = time.monotonic()
        out = get(port, b"/x")
        assert out.startswith(b"HTTP/1.1 504"), out[:40]
        assert 0.4 < time.monotonic() - t0 < 4
    finally:
        for s in fillers:
            s.close()
        blackhole.close()


def test_sticky_lb_cookie_binds_client(lt):
    port, served = make(lt, members=("a", "b"), pool_kwargs={
        "sticky": STICKY_LB_COOKIE, "cookie_name": b"lbs", "cookie_max_age": 600})
    first = get(port, b"/id")
    cookie = [line for line in first.split(b"\r\n") if line.startswith(b"Set-Cookie: lbs=")][0]
    value = cookie.split(b": ", 1)[1].split(b";")[0]
    assert b"Max-Age=600" in cookie and b"127.0.0.1" not in value
    served.clear()
    for _ in range(6):
        out = get(port, b"/id", extra=b"Cookie: " + value + b"\r\n")
        assert b"Set-Cookie" not in out
    assert len({name for name, _, _ in served}) == 1


class DropsSecond(Scripted):
    """Answers the first request on a connection, then closes the connection
    when the next one arrives without answering: the keep-alive race."""

    def respond(self, method, path, head):
        self.count = getattr(self, "count", 0) + 1
        if self.count == 1:
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        else:
            self.transport.close()


def test_reused_connection_failure_retried_once_on_fresh_connection(lt):
    served: list = []

    async def start():
        _, bport = await start_backend(type("D", (DropsSecond,), {"served": served}))
        _, port, _ = await start_proxy([(bport, 1)])
        return port

    port = lt.call(start())
    # One member only, so success can only come from the fresh-connection retry.
    assert [get(port, b"/x")[:12] for _ in range(3)] == [b"HTTP/1.1 200"] * 3


def test_no_member_503_with_router_code(lt):
    async def start(members):
        _, port, _ = await start_proxy(members)
        return port

    empty = exchange(lt.call(start([])), b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    assert empty.startswith(b"HTTP/1.1 503") and b"x-router-code: 40000" in empty
    drained = exchange(lt.call(start([(free_port(), 0)])), b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    assert drained.startswith(b"HTTP/1.1 503") and b"x-router-code: 50000" in drained
