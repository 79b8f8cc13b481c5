"""Limits (spec 8), client-side time-outs (spec 7) and Upgrade tunnelling,
through real sockets against the data plane."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from tests.support.inproc import LoopThread, exchange, start_backend, start_proxy


class Ok(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.buf, self.tunnel = transport, b"", False

    def data_received(self, data):
        if self.tunnel:
            self.transport.write(b"echo:" + data)
            return
        self.buf += data
        if b"\r\n\r\n" not in self.buf:
            return
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        if b"Upgrade: websocket" in head:
            self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                                 b"Upgrade: websocket\r\n\r\nhello")
            self.tunnel = True
            if self.buf:
                self.transport.write(b"echo:" + self.buf)
            return
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


@pytest.fixture(scope="module")
def lt():
    loop_thread = LoopThread()
    yield loop_thread
    loop_thread.stop()


def proxy(lt, **settings):
    async def start():
        _, bport = await start_backend(Ok)

        def configure(lrt):
            for key, value in settings.items():
                setattr(lrt, key, value)

        _, port, _ = await start_proxy([(bport, 1)], configure)
        return port

    return lt.call(start())


@pytest.mark.parametrize("raw,code", [
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: t\r\n\r\n", b"414"),
    (b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"b" * 17000 + b"\r\n\r\n", b"431"),
    (b"GET / HTTP/1.1\r\nHost: t\r\n" + b"X-H: v\r\n" * 101 + b"\r\n", b"431"),
    (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 2000000\r\n\r\n", b"413"),
    (b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n", b"501"),
    (b"GET / HTTP/1.1\r\n\r\n", b"400"),                         # HTTP/1.1 needs Host
    (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n", b"405"),
    (b"GET /\r\n", b"400"),                                        # HTTP/0.9
])
def test_limits_answer_with_the_right_code_and_close(lt, raw, code):
    port = proxy(lt, max_body=1_000_000)
    out = exchange(port, raw, half_close=False)
    assert out.startswith(b"HTTP/1.1 " + code), out[:60]
    assert b"Connection: close" in out


def test_chunked_body_over_limit_is_413(lt):
    port = proxy(lt, max_body=1000)
    body = b"".join(b"200\r\n" + b"z" * 512 + b"\r\n" for _ in range(4)) + b"0\r\n\r\n"
    out = exchange(port, b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                   + body, half_close=False)
    assert out.startswith(b"HTTP/1.1 413")


def timed(port, payload, wait=5.0):
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        t0 = time.monotonic()
        s.sendall(payload)
        out = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                return out, time.monotonic() - t0
            out += chunk


def test_request_timeout_408_on_slow_header_close_on_body_gap(lt):
    port = proxy(lt, request_timeout=0.5)
    out, took = timed(port, b"GET / HTTP/1.1\r\nHost: t\r\n")
    assert out.startswith(b"HTTP/1.1 408") and 0.4 < took < 2.5
    out, took = timed(port, b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nab")
    assert b"408" not in out and 0.4 < took < 2.5


def test_idle_keep_alive_closed_after_idle_timeout(lt):
    port = proxy(lt, idle_timeout=0.5)
    out, took = timed(port, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    assert out.endswith(b"ok") and 0.4 < took < 2.5


def test_idle_timeout_zero_means_no_keep_alive(lt):
    port = proxy(lt, idle_timeout=0.0)
    out, took = timed(port, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    assert b"Connection: close" in out and took < 1.0


def test_websocket_is_tunnelled_both_ways(lt):
    port = proxy(lt)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\n"
                  b"Upgrade: websocket\r\n\r\nearly")
        time.sleep(0.2)
        s.sendall(b"late")
        time.sleep(0.2)
        out = s.recv(65536)
    assert out.startswith(b"HTTP/1.1 101")
    assert out.endswith(b"helloecho:earlyecho:late")


def test_tunnel_closes_after_idle_timeout(lt):
    port = proxy(lt, idle_timeout=0.5)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\n"
                  b"Upgrade: websocket\r\n\r\n")
        t0 = time.monotonic()
        out = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            out += chunk
    assert out.startswith(b"HTTP/1.1 101") and 0.4 < time.monotonic() - t0 < 2.5


def test_h2c_upgrade_is_not_tunnelled(lt):
    port = proxy(lt)
    out = exchange(port, b"GET / HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                         b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200") and b"101" not in out.split(b"\r\n")[0]
