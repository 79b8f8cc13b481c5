# cython: language_level=3
"""The JSON access-log line in C: the same bytes lbcore.accesslog.to_json
(the readable reference, tested against this) makes, at a fraction of the
cost. With the access log on (the default) Python-level formatting had
doubled the worker's CPU per request."""

import datetime as dt
import json

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdio cimport snprintf

from lbcore_ext.bufs cimport put, put_int

cdef object _esc = json.encoder.encode_basestring_ascii
cdef char* HEX = b"0123456789abcdef"
cdef long long _sec = -1
cdef bytes _sec_text = b""
cdef dict PROTOCOLS = {"1.1": b'"HTTP/1.1"', "1.0": b'"HTTP/1.0"', "2": b'"HTTP/2"'}


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


cdef int put_time(bytearray out, double ts) except -1:
    global _sec, _sec_text
    cdef long long sec = <long long>ts
    cdef char buf[16]
    if sec != _sec:
        _sec_text = dt.datetime.fromtimestamp(sec, dt.timezone.utc).strftime(
            "%Y-%m-%dT%H:%M:%S").encode()
        _sec = sec
    put(out, _sec_text)
    cdef int n = snprintf(buf, sizeof(buf), ".%03d+00:00", <int>((ts - sec) * 1000))
    put(out, buf[:n])
    return 0


cpdef bytes json_line(tuple entry):
    """One access-log entry (see lbcore.accesslog) as a JSON line, without the
    newline."""
    meta, status, seconds, tries = entry
    (ts, ip, port, method, target, version, rid, ua, referer, xff, host, listener, pool,
     tls, policy) = meta
    cdef bytearray out = bytearray(b'{"time":"')
    cdef char buf[64]
    cdef int n
    put_time(out, ts)
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
    n = snprintf(buf, sizeof(buf), ',"duration_s":%.6f,"upstream":[', <double>seconds)
    put(out, buf[:n])
    if tries:
        first = True
        for h, p, r in tries:
            put(out, b'{"address":"' if first else b',{"address":"')
            first = False
            put_raw(out, h)
            put(out, b":")
            put_raw(out, p)
            put(out, b'","result":')
            put_json(out, r)
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
        put(out, b"}")
    put(out, b"}")
    return bytes(out)
