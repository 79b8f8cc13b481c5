"""A backend that records the exact bytes of every request it receives (head
as sent, body raw and decoded) and answers each complete one with a small 200,
keep-alive. Runs on a LoopThread; the test thread reads `requests`."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field

RESPONSE_BODY = b"ok\n"
RESPONSE_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(RESPONSE_BODY))


@dataclass
class Received:
    head: bytes                     # request line and header lines, without the blank line
    framing: str                    # "content-length", "chunked" or "none"
    raw_body: bytes = b""
    body: bytes = b""               # chunked: decoded
    complete: bool = False

    @property
    def request_line(self) -> bytes:
        return self.head.split(b"\r\n", 1)[0]

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        """(name, value) in order, as received (value stripped of OWS)."""
        out = []
        for line in self.head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            out.append((name, value.strip(b" \t")))
        return out


@dataclass
class Recorder:
    """What every connection of the backend received, in arrival order."""

    requests: list[Received] = field(default_factory=list)
    bytes_in: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def snapshot(self) -> tuple[int, int]:
        with self.lock:
            return len(self.requests), self.bytes_in

    def since(self, mark: tuple[int, int]) -> tuple[list[Received], int]:
        with self.lock:
            return list(self.requests[mark[0]:]), self.bytes_in - mark[1]


class Incomplete(Exception):
    pass


def decode_chunked(buf: bytes) -> tuple[bytes, int]:
    """(decoded body, bytes consumed) of a complete chunked body at the start
    of `buf`; Incomplete if it has not all arrived."""
    pos, body = 0, bytearray()
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            raise Incomplete
        size = int(buf[pos:eol].split(b";", 1)[0].strip(), 16)
        pos = eol + 2
        if size == 0:
            while True:                          # trailer section, then a blank line
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    raise Incomplete
                line, pos = buf[pos:eol], eol + 2
                if not line:
                    return bytes(body), pos
        if len(buf) < pos + size + 2:
            raise Incomplete
        body += buf[pos:pos + size]
        pos += size + 2


class RecordingBackend(asyncio.Protocol):
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.buf = b""
        self.current: Received | None = None
        self.want = 0

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        with self.recorder.lock:
            self.recorder.bytes_in += len(data)
        self.buf += data
        while self._step():
            pass

    def _step(self) -> bool:
        if self.current is None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return False
            head, self.buf = self.buf[:end], self.buf[end + 4:]
            names = {line.partition(b":")[0].strip().lower(): line.partition(b":")[2].strip()
                     for line in head.split(b"\r\n")[1:]}
            if names.get(b"transfer-encoding", b"").lower() == b"chunked":
                framing = "chunked"
            elif b"content-length" in names:
                framing, self.want = "content-length", int(names[b"content-length"])
            else:
                framing = "none"
            self.current = Received(head, framing)
            with self.recorder.lock:
                self.recorder.requests.append(self.current)
        req = self.current
        if req.framing == "chunked":
            try:
                req.body, used = decode_chunked(self.buf)
            except Incomplete:
                return False
            except ValueError:                   # not chunked framing: keep what came
                req.raw_body = self.buf
                self.transport.close()
                return False
            req.raw_body, self.buf = self.buf[:used], self.buf[used:]
        elif req.framing == "content-length":
            if len(self.buf) < self.want:
                return False
            req.raw_body = req.body = self.buf[:self.want]
            self.buf = self.buf[self.want:]
        req.complete = True
        self.current = None
        head_only = req.request_line.startswith(b"HEAD ")
        self.transport.write(RESPONSE_HEAD + (b"" if head_only else RESPONSE_BODY))
        return True


async def start_recording_backend(recorder: Recorder):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: RecordingBackend(recorder), "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]
