# cython: language_level=3
"""Byte-level pieces of HTTP/1.1 messages the data plane writes itself."""

import re

_REASONS = {
    400: b"Bad Request", 403: b"Forbidden", 408: b"Request Timeout",
    413: b"Content Too Large", 405: b"Method Not Allowed", 414: b"URI Too Long", 421: b"Misdirected Request",
    431: b"Request Header Fields Too Large", 501: b"Not Implemented",
    502: b"Bad Gateway", 503: b"Service Unavailable", 504: b"Gateway Timeout",
}

_REASONS.update({
    200: b"OK", 201: b"Created", 204: b"No Content", 301: b"Moved Permanently",
    302: b"Found", 303: b"See Other", 304: b"Not Modified", 307: b"Temporary Redirect",
    308: b"Permanent Redirect", 401: b"Unauthorized", 404: b"Not Found",
    429: b"Too Many Requests", 500: b"Internal Server Error",
})

cdef dict _cache = {}


_BAD_NAME = re.compile(rb"[\s:\x00]")
_BAD_VALUE = re.compile(rb"[\r\n\x00]")


cpdef bytes reason_phrase(int status):
    return _REASONS.get(status, b"Status")


cpdef bytes header_line(object name, object value):
    """One header line from hook-supplied values, refusing what could split
    the message (CR, LF, NUL) or forge a header name."""
    n = name.encode() if isinstance(name, str) else bytes(name)
    v = value.encode() if isinstance(value, str) else bytes(value)
    if not n or _BAD_NAME.search(n) or _BAD_VALUE.search(v):
        raise ValueError(f"invalid header from a hook: {name!r}: {value!r}")
    return n + b": " + v + b"\r\n"


cdef bytes error_lines(int code, bytes router_code):
    """The fields of an error lbcore generates, before its Content-Length."""
    if router_code is None:
        return b"Content-Type: text/plain\r\n"
    return b"Content-Type: text/plain\r\nx-router-code: " + router_code + b"\r\n"


cdef bytes error_body(int code):
    return b"%d %s\n" % (code, _REASONS.get(code, b"Error"))


cpdef bytes error_response(int code, bytes router_code=None, bint close=True, bint head=False):
    """A complete, small response lbcore generates itself (spec 7.3), in
    HTTP/1.1; to HEAD without its body. Built once per (code, router code,
    close, head) and reused: errors must be cheap under attack."""
    key = (code, router_code, close, head)
    cdef bytes out = _cache.get(key)
    if out is not None:
        return out
    body = error_body(code)
    out = (b"HTTP/1.1 %d %s\r\n" % (code, _REASONS.get(code, b"Error"))
           + error_lines(code, router_code) + b"Content-Length: %d\r\n" % len(body))
    if close:
        out += b"Connection: close\r\n"
    out += b"\r\n"
    if not head:
        out += body
    _cache[key] = out
    return out


cdef bytes chunk_header(Py_ssize_t n):
    return b"%x\r\n" % n
