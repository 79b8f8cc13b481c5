# cython: language_level=3
"""The access-log lines in C: the same bytes lbcore.accesslog's to_json,
to_elb and to_combined (the readable reference, tested against these) make,
at a fraction of the cost. With the access log on (the default) Python-level
formatting had doubled the worker's CPU per request. The entry's shape is
described in lbcore/accesslog.py."""

import datetime as dt
import json

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.math cimport llrint

from lbcore_ext.bufs cimport put, put_int

cdef object _esc = json.encoder.encode_basestring_ascii
cdef char* HEX = b"0123456789abcdef"
cdef char* UHEX = b"0123456789ABCDEF"
cdef dict PROTOCOLS = {"1.1": b'"HTTP/1.1"', "1.0": b'"HTTP/1.0"', "2": b'"HTTP/2"'}
# $server_protocol as nginx writes it
cdef dict SERVER_PROTOCOLS = {"1.1": b"HTTP/1.1", "1.0": b"HTTP/1.0", "2": b"HTTP/2.0"}


cdef class _SecondCache:
    """One second's text in one format: a batch holds thousands of entries
    from the same few seconds."""
    cdef long long sec
    cdef bytes text
    cdef str fmt

    def __init__(self, str fmt):
        self.sec = -1
        self.fmt = fmt

    cdef bytes get(self, long long sec):
        if sec != self.sec:
            self.text = dt.datetime.fromtimestamp(sec, dt.timezone.utc).strftime(
                self.fmt).encode()
            self.sec = sec
        return self.text


cdef _SecondCache ISO = _SecondCache("%Y-%m-%dT%H:%M:%S")
cdef _SecondCache LOCAL = _SecondCache("%d/%b/%Y:%H:%M:%S +0000")


cdef int put_escaped(bytearray out, const unsigned char* p, Py_ssize_t n) except -1:
    """A JSON string of latin-1 bytes, escaped as json's encode_basestring_ascii
    escapes the decoded text: short escapes where JSON has them, else \\u00XX
    for everything outside printable ASCII."""
    cdef Py_ssize_t i, at = PyByteArray_GET_SIZE(out), w
    PyByteArray_Resize(out, at + 2 + 6 * n)         # the worst case, trimmed below
    cdef char* q = PyByteArray_AS_STRING(out) + at
    cdef unsigned char c
    w = 0
    q[w] = 34
    w += 1
    for i in range(n):
        c = p[i]
        if c == 34 or c == 92:
            q[w] = 92
            q[w + 1] = c
            w += 2
        elif 32 <= c <= 126:
            q[w] = c
            w += 1
        elif c == 10 or c == 13 or c == 9 or c == 8 or c == 12:
            q[w] = 92
            if c == 10:
                q[w + 1] = 110      # n
            elif c == 13:
                q[w + 1] = 114      # r
            elif c == 9:
                q[w + 1] = 116      # t
            elif c == 8:
                q[w + 1] = 98       # b
            else:
                q[w + 1] = 102      # f
            w += 2
        else:
            q[w] = 92
            q[w + 1] = 117          # u
            q[w + 2] = 48
            q[w + 3] = 48
            q[w + 4] = HEX[c >> 4]
            q[w + 5] = HEX[c & 15]
            w += 6
    q[w] = 34
    w += 1
    PyByteArray_Resize(out, at + w)
    return 0


cdef int put_json(bytearray out, object v) except -1:
    if v is None:
        put(out, b"null")
    elif type(v) is bytes:
        put_escaped(out, <const unsigned char*>PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v))
    elif (<str>v).isascii():
        b = (<str>v).encode("ascii")
        put_escaped(out, <const unsigned char*>PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))
    else:
        put(out, (<str>_esc(v)).encode("ascii"))
    return 0


cdef int put_raw(bytearray out, object v) except -1:
    """Text known to need no escaping (addresses, ports)."""
    put(out, v if type(v) is bytes else str(v).encode("latin-1"))
    return 0


cdef int put_nginx(bytearray out, object v) except -1:
    """A value as nginx logs it (escape=default): `"`, `\\`, control bytes and
    bytes above 126 as \\xHH (str as UTF-8); None or empty as `-`."""
    cdef bytes b
    if v is None:
        put(out, b"-")
        return 0
    b = v if type(v) is bytes else str(v).encode("utf-8")
    cdef Py_ssize_t i, n = PyBytes_GET_SIZE(b), at = PyByteArray_GET_SIZE(out), w = 0
    if n == 0:
        put(out, b"-")
        return 0
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(b)
    PyByteArray_Resize(out, at + 4 * n)
    cdef char* q = PyByteArray_AS_STRING(out) + at
    cdef unsigned char c
    for i in range(n):
        c = p[i]
        if 32 <= c <= 126 and c != 34 and c != 92:
            q[w] = c
            w += 1
        else:
            q[w] = 92
            q[w + 1] = 120          # x
            q[w + 2] = UHEX[c >> 4]
            q[w + 3] = UHEX[c & 15]
            w += 4
    PyByteArray_Resize(out, at + w)
    return 0


cdef long long[7] POW10 = [1, 10, 100, 1000, 10000, 100000, 1000000]


cdef int put_fixed(bytearray out, double v, int digits) except -1:
    """v >= 0 with `digits` decimals: round(v * 10**digits), half to even, as
    lbcore.accesslog._fixed (printf's %f costs a few thousand instructions)."""
    cdef long long n = llrint(v * POW10[digits]), frac
    cdef char buf[8]
    cdef int i
    put_int(out, n // POW10[digits])
    frac = n % POW10[digits]
    buf[0] = 46                 # '.'
    for i in range(digits, 0, -1):
        buf[i] = <char>(48 + frac % 10)
        frac //= 10
    put(out, buf[:digits + 1])
    return 0


cdef int put_secs(bytearray out, double v) except -1:
    """JSON seconds, µs resolution; null for a step never reached (-1)."""
    return put_fixed(out, v, 6) if v >= 0 else put(out, b"null")


cdef int put_ms(bytearray out, double v) except -1:
    """nginx's seconds.ms; `-` for a step never reached."""
    return put_fixed(out, v, 3) if v >= 0 else put(out, b"-")


cdef int put_iso(bytearray out, double ts, bint ms) except -1:
    cdef long long sec = <long long>ts
    cdef char buf[10]
    cdef const char* tail = b".000+00:00"
    cdef int n, i
    put(out, ISO.get(sec))
    if ms:
        n = <int>((ts - sec) * 1000)
        for i in range(10):
            buf[i] = tail[i]
        buf[1] = <char>(48 + n // 100)
        buf[2] = <char>(48 + n // 10 % 10)
        buf[3] = <char>(48 + n % 10)
        put(out, buf[:10])
    else:
        put(out, b"+00:00")
    return 0


cdef int put_protocol(bytearray out, object version) except -1:
    known = SERVER_PROTOCOLS.get(version) if version else None
    if known is not None:
        put(out, known)
    elif version:
        put(out, b"HTTP/")
        put_raw(out, version)
    else:
        put(out, b"-")
    return 0


cpdef bytes json_line(tuple entry):
    """One access-log entry as a JSON line, without the newline."""
    meta, status, seconds, tries, received, sent, body_sent = entry
    (ts, ip, port, method, target, version, rid, ua, referer, xff, host, listener, pool,
     tls, policy) = meta
    cdef bytearray out = bytearray(b'{"time":"')
    put_iso(out, ts, True)
    put(out, b'","request_id":')
    put_json(out, rid)
    put(out, b',"client":"')
    put_raw(out, ip)
    put(out, b":")
    put_raw(out, port)
    put(out, b'","method":')
    put_json(out, method)
    put(out, b',"target":')
    put_json(out, target)
    put(out, b',"protocol":')
    known = PROTOCOLS.get(version)
    if known is not None:
        put(out, known)
    else:
        put_json(out, f"HTTP/{version}" if version else None)
    put(out, b',"host":')
    put_json(out, host)
    put(out, b',"status":')
    put_int(out, status)
    put(out, b',"duration_s":')
    put_fixed(out, seconds, 6)
    put(out, b',"bytes_received":')
    put_int(out, received)
    put(out, b',"bytes_sent":')
    put_int(out, sent)
    put(out, b',"body_bytes_sent":')
    put_int(out, body_sent)
    put(out, b',"upstream":[')
    if tries:
        first = True
        for h, p, r, c, hd, rs, m in tries:
            put(out, b'{"member":' if first else b',{"member":')
            first = False
            put_json(out, m)
            put(out, b',"address":"')
            put_raw(out, h)
            put(out, b":")
            put_raw(out, p)
            put(out, b'","result":')
            put_json(out, r)
            put(out, b',"connect_s":')
            put_secs(out, c)
            put(out, b',"header_s":')
            put_secs(out, hd)
            put(out, b',"response_s":')
            put_secs(out, rs)
            put(out, b"}")
    put(out, b'],"user_agent":')
    put_json(out, ua)
    put(out, b',"referer":')
    put_json(out, referer)
    put(out, b',"x_forwarded_for":')
    put_json(out, xff)
    put(out, b',"listener":')
    put_json(out, listener)
    put(out, b',"pool":')
    put_json(out, pool)
    put(out, b',"policy":')
    put_json(out, policy)
    if tls and tls[0]:
        put(out, b',"tls":{"version":')
        put_json(out, tls[0])
        put(out, b',"cipher":')
        put_json(out, tls[1])
        put(out, b',"sni":')
        put_json(out, tls[2])
        put(out, b',"resumed":true}' if tls[3] else b',"resumed":false}')
    put(out, b"}")
    return bytes(out)


cdef inline int put_status_of(bytearray out, object result) except -1:
    """nginx's $upstream_status of a try: its status, else 502 (504 for a
    time-out)."""
    cdef bytes r = result if type(result) is bytes else (
        b"" if result is None else str(result).encode("latin-1"))
    if r and r.isdigit():
        put(out, r)
    elif r.endswith(b"timeout"):
        put(out, b"504")
    else:
        put(out, b"502")
    return 0


cdef int put_tries(bytearray out, list tries, int field) except -1:
    """One multi-valued upstream field in quotes: a value per try."""
    cdef Py_ssize_t i
    cdef tuple t
    put(out, b'"')
    if not tries:
        put(out, b"-")
    for i in range(len(tries) if tries else 0):
        t = tries[i]
        if i:
            put(out, b", ")
        if field == 0:                  # status
            put_status_of(out, t[2])
        elif field == 1:                # address
            put_raw(out, t[0])
            put(out, b":")
            put_raw(out, t[1])
        elif field == 2:                # member
            put_nginx(out, t[6])
        else:                           # connect, header, response times
            put_ms(out, t[field])
    put(out, b'"')
    return 0


cpdef bytes elb_line(tuple entry, tuple ctx):
    """One entry as ELB's elb_01 line (33 fields); `ctx` is the listener's
    (lb name, scheme, eip, port, certificate), lbcore.accesslog.elb_context."""
    meta, status, seconds, tries, received, sent, body_sent = entry
    (ts, ip, port, method, target, version, rid, ua, referer, xff, host, listener, pool,
     tls, policy) = meta
    lb_name, scheme, eip, lport, certificate = ctx
    if tls is None:
        tls = (None, None, None, None)
    cdef bytearray out = bytearray()
    put_fixed(out, ts, 3)
    put(out, b" - [")
    put_iso(out, ts, False)
    put(out, b"] elb_01 ")
    put_raw(out, ip)
    put(out, b":")
    put_raw(out, port)
    put(out, b" ")
    put_int(out, status)
    put(out, b' "')
    put_nginx(out, method)
    put(out, b" ")
    put_raw(out, scheme)
    put(out, b"://")
    put_nginx(out, host)
    put_nginx(out, target)
    put(out, b" ")
    put_protocol(out, version)
    put(out, b'" ')
    put_int(out, received)
    put(out, b" ")
    put_int(out, sent)
    put(out, b" ")
    put_int(out, body_sent)
    put(out, b" ")
    put_fixed(out, seconds, 3)
    put(out, b" ")
    put_tries(out, tries, 0)
    put(out, b" ")
    put_tries(out, tries, 3)
    put(out, b" ")
    put_tries(out, tries, 4)
    put(out, b" ")
    put_tries(out, tries, 5)
    put(out, b" ")
    put_tries(out, tries, 1)
    put(out, b' "')
    put_nginx(out, ua)
    put(out, b'" "')
    put_nginx(out, referer)
    put(out, b'" "')
    put_nginx(out, xff)
    put(out, b'" ')
    put_nginx(out, lb_name)
    put(out, b" ")
    put_nginx(out, listener)
    put(out, b" - ")
    put_nginx(out, pool)
    put(out, b" ")
    put_tries(out, tries, 2)
    put(out, b" - ")
    put_raw(out, eip)
    put(out, b":")
    put_raw(out, lport)
    put(out, b" ")
    put_tries(out, tries, 1)
    put(out, b" ")
    put_nginx(out, certificate if tls[0] else None)
    put(out, b" ")
    put_nginx(out, tls[0])
    put(out, b" ")
    put_nginx(out, tls[1])
    put(out, b" ")
    put_nginx(out, tls[2])
    put(out, b' - "')
    put_nginx(out, rid)
    put(out, b'"')
    return bytes(out)


cpdef bytes combined_line(tuple entry):
    """One entry as nginx's "combined" line."""
    meta, status, seconds, tries, received, sent, body_sent = entry
    (ts, ip, port, method, target, version, rid, ua, referer, xff, host, listener, pool,
     tls, policy) = meta
    cdef bytearray out = bytearray()
    put_raw(out, ip)
    put(out, b" - - [")
    put(out, LOCAL.get(<long long>ts))
    put(out, b'] "')
    if method is None and target is None:
        put(out, b"-")
    else:
        put_nginx(out, method)
        put(out, b" ")
        put_nginx(out, target)
        put(out, b" ")
        put_protocol(out, version)
    put(out, b'" ')
    put_int(out, status)
    put(out, b" ")
    put_int(out, body_sent)
    put(out, b' "')
    put_nginx(out, referer)
    put(out, b'" "')
    put_nginx(out, ua)
    put(out, b'"')
    return bytes(out)
