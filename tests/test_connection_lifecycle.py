"""The connection life on lbcore's own transport, through real loopback
sockets: connection_lost is never called inside the close() that causes it
(asyncio's rule), it is called at the end of the batch of events or by the
loop soon after a close made outside one, a protocol failing in it stops no
other; and the Connection field's tokens, which are read where they lie."""

from __future__ import annotations

import asyncio
import socket

import pytest

from lbcore_ext.transport import tcp_connect
from tests.support.inproc import HeadEcho, LoopThread, start_backend, start_proxy


@pytest.fixture(scope="module")
def lt():
    loop_thread = LoopThread()
    yield loop_thread
    loop_thread.stop()


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


class Client(asyncio.Protocol):
    """A member-side protocol on tcp_connect's transport that records the
    order of what happens to it."""

    def __init__(self, close_on_data: bool = False, fail_on_lost: bool = False) -> None:
        self.events: list[str] = []
        self.close_on_data = close_on_data
        self.fail_on_lost = fail_on_lost
        self.gone = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport
        self.events.append("made")

    def data_received(self, data):
        self.events.append("data")
        if self.close_on_data:
            self.transport.close()
            self.events.append("close returned")

    def connection_lost(self, exc):
        self.events.append("lost")
        if not self.gone.done():
            self.gone.set_result(exc)
        if self.fail_on_lost:
            raise RuntimeError("a protocol's own bug")


def test_connection_lost_after_a_close_outside_a_batch(lt):
    async def run():
        _, port = await start_backend(Echo)
        loop = asyncio.get_running_loop()
        _, proto = await tcp_connect(loop, "127.0.0.1", port, Client)
        proto.transport.close()
        proto.events.append("close returned")
        at_close = list(proto.events)
        await asyncio.wait_for(proto.gone, 5)
        return at_close, proto.events

    at_close, events = lt.call(run())
    assert at_close == ["made", "close returned"]
    assert events == ["made", "close returned", "lost"]


def test_connection_lost_after_a_close_inside_data_received(lt):
    async def run():
        _, port = await start_backend(Echo)
        loop = asyncio.get_running_loop()
        t, proto = await tcp_connect(loop, "127.0.0.1", port,
                                     lambda: Client(close_on_data=True))
        t.write(b"ping")
        await asyncio.wait_for(proto.gone, 5)
        return proto.events

    assert lt.call(run()) == ["made", "data", "close returned", "lost"]


def test_a_failing_connection_lost_is_reported_and_stops_no_other(lt):
    async def run():
        _, port = await start_backend(Echo)
        loop = asyncio.get_running_loop()
        reported: list[dict] = []
        old = loop.get_exception_handler()
        loop.set_exception_handler(lambda _loop, ctx: reported.append(ctx))
        try:
            protos = []
            for fail in (True, False):
                t, p = await tcp_connect(loop, "127.0.0.1", port,
                                         lambda fail=fail: Client(True, fail_on_lost=fail))
                protos.append(p)
                t.write(b"x")
            for p in protos:
                await asyncio.wait_for(p.gone, 5)
            await asyncio.sleep(0.05)
        finally:
            loop.set_exception_handler(old)
        return [p.events for p in protos], reported

    events, reported = lt.call(run())
    assert events == [["made", "data", "close returned", "lost"]] * 2
    assert [r["message"] for r in reported] == ["lbcore transport: connection_lost failed"]
    assert isinstance(reported[0]["exception"], RuntimeError)


def proxy(lt) -> int:
    async def start():
        _, bport = await start_backend(HeadEcho)
        _, port, _ = await start_proxy([(bport, 1)])
        return port

    return lt.call(start())


def read_response(s: socket.socket) -> tuple[bytes, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        assert chunk, buf
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    n = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                 if line.lower().startswith(b"content-length:")))
    while len(body) < n:
        body += s.recv(65536)
    return head, body


def test_connection_tokens_name_fields_to_drop(lt):
    port = proxy(lt)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n"
                  b"Connection: Keep-Alive , X-Drop-Me,\tx-OTHER ,, host,Content-Length\r\n"
                  b"X-Drop-Me: 1\r\nX-Other: 2\r\nX-Kept: 3\r\n\r\n")
        head, member_head = read_response(s)
    assert head.startswith(b"HTTP/1.1 200")
    lines = [line.lower() for line in member_head.split(b"\r\n")]
    assert b"x-kept: 3" in lines
    assert not any(line.startswith((b"x-drop-me", b"x-other", b"connection")) for line in lines)
    # A token naming a field lbcore owns is ignored: Host still reaches the member.
    assert b"host: t" in lines


def test_connection_close_and_keep_alive_in_any_case(lt):
    port = proxy(lt)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        # HTTP/1.0 is kept open only when it asks, in whatever case and spacing.
        for _ in range(2):
            s.sendall(b"GET / HTTP/1.0\r\nHost: t\r\nConnection:  KEEP-alive \r\n\r\n")
            head, _ = read_response(s)
            assert head.startswith(b"HTTP/1.1 200") and b"Connection: close" not in head
        s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: x-a, CLOSE\r\n\r\n")
        head, _ = read_response(s)
        assert b"Connection: close" in head
        assert s.recv(100) == b""
