"""lbcore_ext.transport's plain TCP side without an lbcore process: the
peer's text as made from accept()'s binary address, and tcp_connect (the
member-connection helper) against a real socket on loopback: write, read,
half-close both ways, backpressure, connection refused."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import pytest
import uvloop
from hypothesis import given
from hypothesis import strategies as st

from lbcore_ext.transport import peer_text_of, tcp_connect


@given(st.binary(min_size=4, max_size=4), st.integers(0, 65535))
def test_ipv4_text_matches_the_stdlib(packed, port):
    ip, p, peername = peer_text_of(packed, port)
    assert ip == str(ipaddress.IPv4Address(packed)).encode()
    assert p == str(port).encode()
    assert peername == (ip.decode(), port)


@given(st.binary(min_size=16, max_size=16), st.integers(0, 65535))
def test_ipv6_text_matches_the_stdlib(packed, port):
    ip, p, peername = peer_text_of(packed, port)
    addr = ipaddress.IPv6Address(packed)
    want = str(addr.ipv4_mapped) if addr.ipv4_mapped else socket.inet_ntop(
        socket.AF_INET6, packed)
    assert ip == want.encode()
    assert peername[0] == socket.inet_ntop(socket.AF_INET6, packed)


def test_ipv4_mapped_is_the_ipv4_client():
    packed = ipaddress.IPv6Address("::ffff:192.0.2.7").packed
    assert peer_text_of(packed, 80)[:2] == (b"192.0.2.7", b"80")


class Collect(asyncio.Protocol):
    def __init__(self):
        self.data = b""
        self.eof = asyncio.Event()
        self.lost = asyncio.Event()
        self.paused = 0
        self.resumed = 0

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.data += data

    def eof_received(self):
        self.eof.set()
        return True                 # keep our side open

    def pause_writing(self):
        self.paused += 1

    def resume_writing(self):
        self.resumed += 1

    def connection_lost(self, exc):
        self.lost.set()


def run(coro):
    loop = uvloop.new_event_loop()
    try:
        return loop.run_until_complete(asyncio.wait_for(coro, 20))
    finally:
        loop.close()


def test_tcp_connect_writes_reads_and_half_closes():
    async def main():
        got = bytearray()
        server_done = asyncio.Event()

        async def handle(reader, writer):
            while chunk := await reader.read(65536):
                got.extend(chunk)
            writer.write(b"after your FIN")          # its side is still open
            await writer.drain()
            writer.close()
            server_done.set()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        t, p = await tcp_connect(loop, "127.0.0.1", port, Collect)
        assert t.get_extra_info("peername") == ("127.0.0.1", port)
        assert t.get_extra_info("sockname")[0] == "127.0.0.1"
        assert t.fileno() >= 0 and t.can_write_eof()
        t.writelines([b"one ", b"two ", bytearray(b"three")])
        t.write(b"x" * 16_000_000)                   # more than the socket takes at once
        assert p.paused == 1 and t.get_write_buffer_size() > 0
        t.write_eof()                                # after the queue drains
        await server_done.wait()
        await p.eof.wait()
        assert p.resumed == 1 and t.get_write_buffer_size() == 0
        assert bytes(got) == b"one two three" + b"x" * 16_000_000
        assert p.data == b"after your FIN"
        t.close()
        await p.lost.wait()
        assert t.fileno() == -1
        server.close()

    run(main())


def test_tcp_connect_refused_and_cancelled():
    async def main():
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()                                    # nobody listens there
        loop = asyncio.get_running_loop()
        with pytest.raises(ConnectionRefusedError):
            await tcp_connect(loop, "127.0.0.1", port, Collect)
        with pytest.raises(ValueError):
            tcp_connect(loop, "localhost", port, Collect)
        server = await asyncio.start_server(lambda r, w: None, "::1", 0)
        port6 = server.sockets[0].getsockname()[1]
        fut = tcp_connect(loop, "::1", port6, Collect)
        fut.cancel()
        await asyncio.sleep(0.05)
        t, p = await tcp_connect(loop, "::1", port6, Collect)
        assert t.get_extra_info("peername")[:2] == ("::1", port6)
        t.abort()
        await p.lost.wait()
        server.close()

    run(main())
