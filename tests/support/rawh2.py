"""A bare HTTP/2 client for one request on a TLS socket: frames built with
hyperframe, header blocks with hpack's Encoder (which encodes any field list
as given, invalid ones included, unlike h2 or httpx). It reads frames until
the stream ends (END_STREAM or RST_STREAM), the connection fails (GOAWAY with
an error, close) or the time runs out, answering SETTINGS and PING."""

from __future__ import annotations

import contextlib
import socket
import time
from dataclasses import dataclass, field

from hpack import Decoder, Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_FRAME = 16384                 # SETTINGS_MAX_FRAME_SIZE's initial value
ERROR_NAMES = {0: "NO_ERROR", 1: "PROTOCOL_ERROR", 2: "INTERNAL_ERROR",
               3: "FLOW_CONTROL_ERROR", 4: "SETTINGS_TIMEOUT", 5: "STREAM_CLOSED",
               6: "FRAME_SIZE_ERROR", 7: "REFUSED_STREAM", 8: "CANCEL", 9: "COMPRESSION_ERROR",
               10: "CONNECT_ERROR", 11: "ENHANCE_YOUR_CALM", 12: "INADEQUATE_SECURITY",
               13: "HTTP_1_1_REQUIRED"}
PROTOCOL_ERROR = 1


@dataclass
class H2Request:
    """One stream's request. `headers` go out exactly as listed (pseudo-fields
    included); `data` are DATA frames; END_STREAM goes on the last DATA frame,
    or on HEADERS when there is none, unless `end_stream` is False (the stream
    stays open: a body announced and never sent)."""

    headers: list[tuple[bytes, bytes]]
    data: tuple[bytes, ...] = ()
    end_stream: bool = True


@dataclass
class H2Result:
    status: int | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    ended: bool = False               # END_STREAM seen on stream 1
    reset: int | None = None          # RST_STREAM error code on stream 1
    goaway: int | None = None         # GOAWAY error code
    closed: bool = False              # connection closed before the stream ended
    timed_out: bool = False
    frames: list[str] = field(default_factory=list)
    end_after_block: bool = False     # END_STREAM came on a HEADERS still awaiting CONTINUATION

    def describe(self) -> str:
        if self.reset is not None:
            what = f"RST_STREAM({ERROR_NAMES.get(self.reset, self.reset)})"
            return what + (f" after :status {self.status}" if self.status else "")
        out = f":status {self.status}" if self.status is not None else "no response"
        if self.goaway:
            out += f", GOAWAY({ERROR_NAMES.get(self.goaway, self.goaway)})"
        if self.closed:
            out += ", connection closed"
        if self.timed_out:
            out += ", timed out"
        return out


def _frames_of_headers(block: bytes, end_stream: bool) -> list[bytes]:
    first, rest = block[:MAX_FRAME], block[MAX_FRAME:]
    flags = {"END_STREAM"} if end_stream else set()
    if not rest:
        flags.add("END_HEADERS")
    out = [HeadersFrame(1, data=first, flags=flags).serialize()]
    while rest:
        piece, rest = rest[:MAX_FRAME], rest[MAX_FRAME:]
        out.append(ContinuationFrame(1, data=piece,
                                     flags=set() if rest else {"END_HEADERS"}).serialize())
    return out


def h2_request(sock: socket.socket, req: H2Request, timeout: float = 3.0) -> H2Result:
    """Send `req` as stream 1 on a fresh connection (`sock`: TLS, ALPN h2)."""
    res = H2Result()
    enc, dec = Encoder(), Decoder()
    out = [PREFACE, SettingsFrame(0, settings={SettingsFrame.ENABLE_PUSH: 0}).serialize()]
    block = enc.encode(req.headers)
    out += _frames_of_headers(block, req.end_stream and not req.data)
    for i, chunk in enumerate(req.data):
        last = i == len(req.data) - 1
        out.append(DataFrame(1, data=chunk,
                             flags={"END_STREAM"} if last and req.end_stream else set())
                   .serialize())
    sock.sendall(b"".join(out))
    buf = b""
    block_parts: list[bytes] = []
    deadline = time.monotonic() + timeout
    while True:
        while len(buf) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(buf[:9]))
            if len(buf) < 9 + length:
                break
            frame.parse_body(memoryview(buf[9:9 + length]))
            buf = buf[9 + length:]
            res.frames.append(repr(frame)[:200])
            if _on_frame(sock, frame, res, dec, block_parts):
                return res
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            res.timed_out = True
            return res
        sock.settimeout(remaining)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            res.timed_out = True
            return res
        except (ConnectionResetError, BrokenPipeError, OSError):
            data = b""
        if not data:
            res.closed = True
            return res
        buf += data


def _on_frame(sock, frame, res: H2Result, dec: Decoder, block_parts: list[bytes]) -> bool:
    """Handle one frame; True when stream 1 is over (or the connection is)."""
    if isinstance(frame, SettingsFrame):
        if "ACK" not in frame.flags:
            sock.sendall(SettingsFrame(0, flags={"ACK"}).serialize())
    elif isinstance(frame, PingFrame):
        if "ACK" not in frame.flags:
            sock.sendall(PingFrame(0, opaque_data=frame.opaque_data, flags={"ACK"}).serialize())
    elif isinstance(frame, GoAwayFrame):
        res.goaway = frame.error_code
        if frame.error_code or frame.last_stream_id < 1:
            return True
    elif isinstance(frame, (HeadersFrame, ContinuationFrame)):
        block_parts.append(frame.data)
        if "END_HEADERS" in frame.flags:
            fields = dec.decode(b"".join(block_parts), raw=True)
            block_parts.clear()
            if frame.stream_id == 1:
                for name, value in fields:
                    if name == b":status" and res.status is None:
                        res.status = int(value)
                    res.headers.append((name, value))
        if frame.stream_id == 1 and "END_STREAM" in frame.flags:
            res.end_after_block = True
        if frame.stream_id == 1 and res.end_after_block and "END_HEADERS" in frame.flags:
            res.ended = True
            return True
    elif isinstance(frame, DataFrame):
        if frame.stream_id == 1:
            res.body += frame.data
            if "END_STREAM" in frame.flags:
                res.ended = True
                return True
            if frame.flow_controlled_length:
                # Keep both windows open (bodies here are small; this is for sanity).
                n = frame.flow_controlled_length
                sock.sendall(WindowUpdateFrame(0, window_increment=n).serialize()
                             + WindowUpdateFrame(1, window_increment=n).serialize())
    elif isinstance(frame, RstStreamFrame) and frame.stream_id == 1:
        res.reset = frame.error_code
        return True
    return False


def goodbye(sock: socket.socket) -> None:
    """GOAWAY(NO_ERROR) before closing: a client leaving politely."""
    with contextlib.suppress(OSError):
        sock.sendall(GoAwayFrame(0, last_stream_id=0, error_code=0).serialize())
