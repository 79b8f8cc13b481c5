"""1 GiB each way through the forwarding core with memory bounded: flow control
pauses the faster side instead of buffering (issue: RSS growth under 64 MiB)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

from tests.support.inproc import LoopThread, start_backend, start_proxy

GIB = 1 << 30
CHUNK = b"x" * (1 << 20)


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class RssPeak:
    """Samples this process's RSS in a thread (the data plane runs in-process)."""

    def __init__(self) -> None:
        self.base = rss_kib()
        self.peak = self.base
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.02):
            self.peak = max(self.peak, rss_kib())

    def growth_mib(self) -> float:
        self.stop.set()
        self.thread.join(2)
        return (self.peak - self.base) / 1024


class SinkOrSource(asyncio.Protocol):
    """POST: count the body and answer with the count. GET: stream 1 GiB,
    honouring its own transport's flow control."""

    def connection_made(self, transport):
        self.transport, self.buf, self.remaining, self.can_write = transport, b"", -1, True
        self.waiter = None

    def pause_writing(self):
        self.can_write = False

    def resume_writing(self):
        self.can_write = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def data_received(self, data):
        if self.remaining > 0:
            self.remaining -= len(data)
            if self.remaining == 0:
                self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n%10d" % GIB)
            return
        self.buf += data
        if b"\r\n\r\n" not in self.buf:
            return
        head, rest = self.buf.split(b"\r\n\r\n", 1)
        self.buf = b""
        if head.startswith(b"POST"):
            self.remaining = GIB - len(rest)
        else:
            asyncio.ensure_future(self.stream())

    async def stream(self):
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % GIB)
        sent = 0
        while sent < GIB:
            if not self.can_write:
                self.waiter = asyncio.get_running_loop().create_future()
                await self.waiter
            self.transport.write(CHUNK)
            sent += len(CHUNK)


@pytest.fixture(scope="module")
def proxy_port():
    lt = LoopThread()

    async def start():
        _, bport = await start_backend(SinkOrSource)
        _, port, _ = await start_proxy([(bport, 1)])
        return port

    yield lt.call(start())
    lt.stop()


@pytest.mark.timeout(120)
def test_gib_upload_memory_bounded(proxy_port):
    peak = RssPeak()
    with socket.create_connection(("127.0.0.1", proxy_port), timeout=60) as s:
        s.sendall(b"POST /sink HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % GIB)
        for _ in range(GIB // len(CHUNK)):
            s.sendall(CHUNK)
        answer = s.recv(4096)
    growth = peak.growth_mib()
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"%10d" % GIB)
    assert growth < 64, f"RSS grew {growth:.1f} MiB"


@pytest.mark.timeout(120)
def test_gib_download_with_stalled_reader_memory_bounded(proxy_port):
    peak = RssPeak()
    with socket.create_connection(("127.0.0.1", proxy_port), timeout=60) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        s.sendall(b"GET /source HTTP/1.1\r\nHost: t\r\n\r\n")
        got, head_done, stalled = 0, False, False
        buf = bytearray(1 << 20)
        while True:
            n = s.recv_into(buf)
            if n == 0:
                break
            if not head_done:
                end = bytes(buf[:n]).find(b"\r\n\r\n")
                assert end > 0
                got += n - end - 4
                head_done = True
            else:
                got += n
            if not stalled and got > GIB // 2:
                time.sleep(1.0)     # the client stops reading; the backend must be paused
                stalled = True
            if got >= GIB:
                break
    growth = peak.growth_mib()
    assert got == GIB
    assert growth < 64, f"RSS grew {growth:.1f} MiB"
