# cython: language_level=3
"""Byte-level pieces of HTTP/1.1 messages the data plane writes itself."""

_REASONS = {
    400: b"Bad Request", 403: b"Forbidden", 408: b"Request Timeout",
    413: b"Content Too Large", 405: b"Method Not Allowed", 414: b"URI Too Long", 421: b"Misdirected Request",
    431: b"Request Header Fields Too Large", 501: b"Not Implemented",
    502: b"Bad Gateway", 503: b"Service Unavailable", 504: b"Gateway Timeout",
}

cdef dict _cache = {}


cpdef bytes error_response(int code, bytes router_code=None, bint close=True):
    """A complete, small response lbcore generates itself (spec 7.3). Built once
    per (code, router code, close) and reused: errors must be cheap under attack."""
    key = (code, router_code, close)
    cdef bytes out = _cache.get(key)
    if out is not None:
        return out
    reason = _REASONS.get(code, b"Error")
    body = b"%d %s\n" % (code, reason)
    out = (b"HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
           % (code, reason, len(body)))
    if router_code is not None:
        out += b"x-router-code: " + router_code + b"\r\n"
    if close:
        out += b"Connection: close\r\n"
    out += b"\r\n" + body
    _cache[key] = out
    return out


cdef bytes chunk_header(Py_ssize_t n):
    return b"%x\r\n" % n
