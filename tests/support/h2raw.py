"""A raw HTTP/2 client over TLS (ALPN h2) for attack tests.

Frames are written exactly as the test builds them (hyperframe, hpack) and
nothing is answered on the client's behalf. TLS runs on memory BIOs over a
non-blocking socket, so the test alone decides when bytes are sent and
whether anything is read meanwhile: a flood can be written without reading
the server's ACKs. Every wait takes a deadline (time.monotonic())."""

from __future__ import annotations

import select
import socket
import ssl
import time
from collections import Counter
from dataclasses import dataclass, field

import hpack
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
WINDOW = 1 << 24            # our stream and connection windows: responses never stall

# Error codes (RFC 9113 section 7).
PROTOCOL_ERROR, REFUSED_STREAM, CANCEL, ENHANCE_YOUR_CALM = 0x1, 0x7, 0x8, 0xB


def encode(headers) -> bytes:
    """An HPACK block that leaves the server's dynamic table as it was: exact
    static-table matches indexed, every other field a literal never indexed,
    no Huffman. Blocks made this way can be sent in any order, any number of
    times."""
    return hpack.Encoder().encode([(n, v, True) for n, v in headers], huffman=False)


def request_headers(path: str | bytes = "/", method: str | bytes = "GET",
                    extra=()) -> list[tuple]:
    return [(":method", method), (":scheme", "https"), (":authority", "localhost"),
            (":path", path), *extra]


def headers_frame(sid: int, headers, end_stream: bool = True, end_headers: bool = True) -> bytes:
    flags = ["END_STREAM"] * end_stream + ["END_HEADERS"] * end_headers
    return HeadersFrame(sid, data=encode(headers), flags=flags).serialize()


def with_sid(frame: bytes, sid: int) -> bytes:
    """A serialized frame moved to another stream: the stream id is bytes 5-8
    of the 9-byte frame header (the reserved bit stays 0)."""
    return frame[:5] + sid.to_bytes(4, "big") + frame[9:]


@dataclass
class Stream:
    status: int | None = None
    headers: list = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    ended: bool = False                 # END_STREAM received
    reset: int | None = None            # RST_STREAM error code received

    @property
    def done(self) -> bool:
        return self.ended or self.reset is not None


class H2Raw:
    """One client connection. `send()` queues bytes (never blocks); `io()`
    moves them to the socket and, unless told not to, reads and parses what
    arrives: GOAWAY, RST_STREAM, responses (HPACK-decoded) and SETTINGS are
    kept, every frame is counted by type in `received`."""

    def __init__(self, port: int, ctx: ssl.SSLContext, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout)
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self._in, self._out, server_hostname="localhost")
        self.pending = bytearray()          # TLS bytes not yet taken by the socket
        self.buf = bytearray()              # plaintext not yet parsed into frames
        self.eof = False                    # nothing more to read: EOF, reset, TLS close
        self.send_failed = False            # the socket refused our bytes (EPIPE, reset)
        self.close_reason = ""
        self.received: Counter[str] = Counter()
        self.streams: dict[int, Stream] = {}
        self.goaway: GoAwayFrame | None = None
        self.goaway_at: float | None = None
        self.server_settings: dict[int, int] | None = None
        self.settings_acked = False          # the server ACKed our SETTINGS
        self.decoder = hpack.Decoder()
        self._block = bytearray()           # a response header block in progress
        self._block_sid, self._block_end = 0, False
        try:
            self._handshake()
        except BaseException:
            self.sock.close()
            raise
        self.sock.setblocking(False)
        self._move_out()
        if self.tls.selected_alpn_protocol() != "h2":
            raise AssertionError(f"ALPN gave {self.tls.selected_alpn_protocol()!r}, not h2")
        self.send(PREFACE
                  + SettingsFrame(0, settings={SettingsFrame.ENABLE_PUSH: 0,
                                               SettingsFrame.INITIAL_WINDOW_SIZE: WINDOW})
                  .serialize()
                  + WindowUpdateFrame(0, window_increment=WINDOW - 65535).serialize())

    # ---- bytes ---------------------------------------------------------------------------

    def _handshake(self) -> None:
        while True:                 # blocking, each step bounded by the socket timeout
            try:
                self.tls.do_handshake()
                return
            except ssl.SSLWantReadError:
                self._move_out()
                self.sock.sendall(self.pending)
                self.pending.clear()
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError("closed during the TLS handshake") from None
                self._in.write(data)

    def _move_out(self) -> None:
        data = self._out.read()
        if data:
            self.pending += data

    @property
    def closed(self) -> bool:
        return self.eof or self.send_failed

    def _closed(self, why: str, reading: bool = True) -> None:
        if not self.closed:
            self.close_reason = why
        if reading:
            self.eof = True
        else:
            self.send_failed = True

    def send(self, data: bytes) -> None:
        """Queue `data` (HTTP/2 frames); `io()` sends it."""
        if not self.send_failed:
            self.tls.write(data)
            self._move_out()

    def io(self, deadline: float, read: bool = True, until=None) -> bool:
        """Send what is queued and (if `read`) take in frames, until `until()`
        is true (default: nothing left to send), the connection is closed, or
        the deadline. Returns whether `until()` (or the default) was met.
        After a failed send, what the server sent before it went is still read."""
        done = until or (lambda: not self.pending)
        while not done():
            left = deadline - time.monotonic()
            reading, writing = read and not self.eof, self.pending and not self.send_failed
            if left <= 0 or not (reading or writing):
                return False
            readable, writable, _ = select.select([self.sock] if reading else [],
                                                  [self.sock] if writing else [], [],
                                                  min(left, 0.2))
            if writable:
                try:
                    del self.pending[:self.sock.send(self.pending)]
                except BlockingIOError:
                    pass
                except OSError as e:
                    self._closed(f"send: {e!r}", reading=False)
            if readable:
                self._recv()
        return True

    def _recv(self) -> None:
        try:
            data = self.sock.recv(1 << 18)
        except BlockingIOError:
            return
        except OSError as e:
            self._closed(f"recv: {e!r}")
            return
        if data:
            self._in.write(data)
        else:
            self._in.write_eof()
        while True:
            try:
                chunk = self.tls.read(1 << 18)
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                self._closed("TLS close")
                break
            except ssl.SSLError as e:
                self._closed(f"TLS error: {e!r}")
                break
            if not chunk:
                break
            self.buf += chunk
        self._move_out()
        self._parse()
        if not data:
            self._closed("EOF")

    # ---- frames --------------------------------------------------------------------------

    def _parse(self) -> None:
        while len(self.buf) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(bytes(self.buf[:9])))
            if len(self.buf) < 9 + length:
                return
            frame.parse_body(memoryview(bytes(self.buf[9:9 + length])))
            del self.buf[:9 + length]
            self._on_frame(frame)

    def stream(self, sid: int) -> Stream:
        return self.streams.setdefault(sid, Stream())

    def _on_frame(self, frame: Frame) -> None:
        self.received[type(frame).__name__] += 1
        if isinstance(frame, GoAwayFrame):
            if self.goaway is None:
                self.goaway, self.goaway_at = frame, time.monotonic()
        elif isinstance(frame, SettingsFrame):
            if "ACK" in frame.flags:
                self.settings_acked = True
            else:
                self.server_settings = {**(self.server_settings or {}), **frame.settings}
        elif isinstance(frame, RstStreamFrame):
            self.stream(frame.stream_id).reset = frame.error_code
        elif isinstance(frame, HeadersFrame | ContinuationFrame):
            if isinstance(frame, HeadersFrame):
                self._block = bytearray(frame.data)
                self._block_sid, self._block_end = frame.stream_id, "END_STREAM" in frame.flags
            else:
                self._block += frame.data
            if "END_HEADERS" in frame.flags:
                st = self.stream(self._block_sid)
                headers = self.decoder.decode(bytes(self._block), raw=True)
                st.headers += headers
                for name, value in headers:
                    if name == b":status" and st.status is None:
                        st.status = int(value)
                st.ended = st.ended or self._block_end
        elif isinstance(frame, DataFrame):
            st = self.stream(frame.stream_id)
            st.body += frame.data
            st.ended = st.ended or "END_STREAM" in frame.flags

    # ---- conveniences --------------------------------------------------------------------

    def settings_exchange(self, deadline: float) -> None:
        """What a well-behaved client does before it bursts: read the server's
        SETTINGS, ACK them, and see our own SETTINGS ACKed."""
        if not self.io(deadline, until=lambda: self.server_settings is not None
                       and self.settings_acked):
            raise AssertionError(f"no SETTINGS exchange (closed={self.closed} "
                                 f"{self.close_reason}, goaway={self.goaway})")
        self.send(SettingsFrame(0, flags=["ACK"]).serialize())
        self.io(deadline)

    def stopped(self) -> bool:
        """GOAWAY read or the connection gone."""
        return self.goaway is not None or self.closed

    def close(self) -> None:
        self.sock.close()
