"""The data plane on real loopback sockets inside the test process: a uvloop
loop in a thread serving lbcore's HttpProtocol in front of scripted backends.
For behaviour of the forwarding core itself; tests/e2e drives the real CLI."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable

import uvloop

from lbcore_ext.acceptor import Acceptor
from lbcore_ext.balancer import Member, Pool
from lbcore_ext.http1 import HttpFactory
from lbcore_ext.runtime import (
    H_CONNECTION,
    H_CONTENT_LENGTH,
    H_COOKIE,
    H_DROP,
    H_HOST,
    H_TRANSFER_ENCODING,
    H_UPGRADE,
    H_XFF,
    ListenerRuntime,
)
from tests.reference.http1 import Incomplete, Request, read_request

DEFAULT_ACTIONS = {
    b"connection": H_CONNECTION, b"host": H_HOST, b"x-forwarded-for": H_XFF,
    b"content-length": H_CONTENT_LENGTH, b"transfer-encoding": H_TRANSFER_ENCODING,
    b"cookie": H_COOKIE, b"upgrade": H_UPGRADE, b"keep-alive": H_DROP, b"te": H_DROP,
    b"x-real-ip": H_DROP,
}


class ReferenceBackend(asyncio.Protocol):
    """A backend that reads requests with the reference reader
    (tests/reference/http1.py) and answers each with `answer(req)`."""

    def connection_made(self, transport):
        self.transport, self.buf = transport, b""

    def data_received(self, data):
        self.buf += data
        while True:
            try:
                req, self.buf = read_request(self.buf)
            except Incomplete:
                return
            self.transport.write(self.answer(req))

    def answer(self, req: Request) -> bytes:
        raise NotImplementedError


class HeadEcho(asyncio.Protocol):
    """A member that answers each request with the head it received as the body."""

    def connection_made(self, transport):
        self.transport, self.buf = transport, b""

    def data_received(self, data):
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, self.buf = self.buf.split(b"\r\n\r\n", 1)
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                                 % (len(head), head))


class LoopThread:
    """A uvloop event loop running in a daemon thread; `call` runs a coroutine
    on it and waits for the result."""

    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro, timeout: float = 10.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


async def start_backend(protocol_factory: Callable[[], asyncio.Protocol]):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(protocol_factory, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def start_proxy(ports_weights, configure: Callable[[ListenerRuntime], None] | None = None,
                      pool_kwargs: dict | None = None):
    """An HTTP listener in front of members at `ports_weights` [(port, weight)]."""
    loop = asyncio.get_running_loop()
    members = [Member(f"m{i}", "127.0.0.1", port, w) for i, (port, w) in enumerate(ports_weights)]
    lrt = ListenerRuntime("test", Pool("p", members, **(pool_kwargs or {})))
    lrt.header_actions = dict(DEFAULT_ACTIONS)
    lrt.x_real_ip = True
    if configure is not None:
        configure(lrt)
    # Accepted as lbcore's workers accept: the Acceptor and the owned TCP transport.
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    acceptor = Acceptor(loop, sock, HttpFactory(lrt), lrt)
    acceptor.start()
    return acceptor, sock.getsockname()[1], lrt


def exchange(port: int, raw: bytes, timeout: float = 5.0, half_close: bool = True) -> bytes:
    """Send `raw`, read until the proxy closes (or `timeout`)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(raw)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        out = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                out += b"<RST>"
                break
            if not chunk:
                break
            out += chunk
        return out
