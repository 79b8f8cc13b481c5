"""A small, obviously-correct HTTP/1.1 request reader used as the oracle for
what a backend receives through lbcore. Strict and slow on purpose."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Request:
    method: bytes
    target: bytes
    version: bytes
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.headers if n.lower() == name.lower()]


class Incomplete(Exception):
    pass


def read_request(buf: bytes) -> tuple[Request, bytes]:
    """Parse one request from `buf`; return it and the rest. Raises Incomplete."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        raise Incomplete
    lines = buf[:end].split(b"\r\n")
    method, target, version = lines[0].split(b" ")
    req = Request(method, target, version)
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        req.headers.append((name, value.strip(b" \t")))
    rest = buf[end + 4:]
    te = req.header(b"transfer-encoding")
    if te:
        assert te == [b"chunked"], te
        body = b""
        while True:
            eol = rest.find(b"\r\n")
            if eol < 0:
                raise Incomplete
            size = int(rest[:eol].split(b";")[0], 16)
            if len(rest) < eol + 2 + size + 2:
                raise Incomplete
            body += rest[eol + 2:eol + 2 + size]
            rest = rest[eol + 2 + size + 2:]
            if size == 0:
                break
        req.body = body
    else:
        cl = req.header(b"content-length")
        n = int(cl[0]) if cl else 0
        if len(rest) < n:
            raise Incomplete
        req.body, rest = rest[:n], rest[n:]
    return req, rest


def serialize(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes,
              chunked: bool, chunk_sizes: list[int] | None = None) -> bytes:
    """The client side: a well-formed request."""
    out = b"%s %s HTTP/1.1\r\n" % (method, target)
    for n, v in headers:
        out += n + b": " + v + b"\r\n"
    if chunked:
        out += b"Transfer-Encoding: chunked\r\n\r\n"
        pos = 0
        for size in chunk_sizes or [len(body)]:
            piece = body[pos:pos + size]
            pos += len(piece)
            if piece:
                out += b"%x\r\n%s\r\n" % (len(piece), piece)
        if pos < len(body):
            out += b"%x\r\n%s\r\n" % (len(body) - pos, body[pos:])
        out += b"0\r\n\r\n"
    else:
        if body or method in (b"POST", b"PUT"):
            out += b"Content-Length: %d\r\n" % len(body)
        out += b"\r\n" + body
    return out
