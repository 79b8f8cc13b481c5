"""Appending to the bytearrays the data plane builds heads in, without the
generic `+=` path (number protocol, buffer protocol, a temporary per part)."""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.string cimport memcpy


cdef inline int put(bytearray buf, bytes data) except -1:
    if data is None or buf is None:
        raise TypeError("put: None")
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t at = PyByteArray_GET_SIZE(buf)
    PyByteArray_Resize(buf, at + n)
    memcpy(PyByteArray_AS_STRING(buf) + at, PyBytes_AS_STRING(data), n)
    return 0


cdef inline int put_header(bytearray buf, bytes name, bytes value) except -1:
    """name: value CRLF, in one resize."""
    if name is None or value is None or buf is None:
        raise TypeError("put_header: None")
    cdef Py_ssize_t a = PyBytes_GET_SIZE(name)
    cdef Py_ssize_t b = PyBytes_GET_SIZE(value)
    cdef Py_ssize_t at = PyByteArray_GET_SIZE(buf)
    PyByteArray_Resize(buf, at + a + b + 4)
    cdef char* p = PyByteArray_AS_STRING(buf) + at
    memcpy(p, PyBytes_AS_STRING(name), a)
    p += a
    p[0] = 58       # ':'
    p[1] = 32       # ' '
    p += 2
    memcpy(p, PyBytes_AS_STRING(value), b)
    p += b
    p[0] = 13       # CR
    p[1] = 10       # LF
    return 0


cdef inline int put_ba(bytearray buf, bytearray data) except -1:
    if data is None or buf is None:
        raise TypeError("put_ba: None")
    cdef Py_ssize_t n = PyByteArray_GET_SIZE(data)
    cdef Py_ssize_t at = PyByteArray_GET_SIZE(buf)
    PyByteArray_Resize(buf, at + n)
    memcpy(PyByteArray_AS_STRING(buf) + at, PyByteArray_AS_STRING(data), n)
    return 0


cdef inline int put_int(bytearray buf, long long v) except -1:
    """The decimal digits of v (what b"%d" % v makes, without the formatting
    machinery)."""
    cdef char tmp[24]
    cdef int n = 0, i
    cdef bint neg = v < 0
    cdef unsigned long long u = <unsigned long long>(-v) if neg else <unsigned long long>v
    if u == 0:
        tmp[0] = 48
        n = 1
    while u:
        tmp[n] = <char>(48 + u % 10)
        u //= 10
        n += 1
    if neg:
        tmp[n] = 45
        n += 1
    cdef Py_ssize_t at = PyByteArray_GET_SIZE(buf)
    PyByteArray_Resize(buf, at + n)
    cdef char* p = PyByteArray_AS_STRING(buf) + at
    for i in range(n):
        p[i] = tmp[n - 1 - i]
    return 0


cdef inline unsigned char hex_value(unsigned char c) noexcept:
    """A hex digit's value (either case), or 255: for %XX escapes."""
    if 48 <= c <= 57:
        return c - 48
    c |= 32
    if 97 <= c <= 102:
        return c - 87
    return 255


cdef inline int put_header_at(bytearray buf, const char* name, Py_ssize_t a,
                              const char* value, Py_ssize_t b) except -1:
    """name: value CRLF from pointers (a field still in the parser's input)."""
    cdef Py_ssize_t at = PyByteArray_GET_SIZE(buf)
    PyByteArray_Resize(buf, at + a + b + 4)
    cdef char* p = PyByteArray_AS_STRING(buf) + at
    memcpy(p, name, a)
    p += a
    p[0] = 58       # ':'
    p[1] = 32       # ' '
    p += 2
    memcpy(p, value, b)
    p += b
    p[0] = 13       # CR
    p[1] = 10       # LF
    return 0


cdef inline unsigned int lower_hash(const char* src, char* dst, Py_ssize_t n) noexcept:
    """Copies the field name src into dst in lower case and returns its FNV-1a
    hash: what ListenerRuntime.action_of looks a field up by."""
    cdef unsigned int h = 2166136261u
    cdef unsigned char c
    cdef Py_ssize_t i
    for i in range(n):
        c = <unsigned char>src[i]
        if 65 <= c <= 90:
            c |= 32
        dst[i] = <char>c
        h = (h ^ c) * 16777619u
    return h


cdef inline unsigned int fnv_hash(const char* p, Py_ssize_t n) noexcept:
    """lower_hash of a name already in lower case."""
    cdef unsigned int h = 2166136261u
    cdef Py_ssize_t i
    for i in range(n):
        h = (h ^ <unsigned char>p[i]) * 16777619u
    return h


cdef inline int put_at(bytearray buf, const char* data, Py_ssize_t n) except -1:
    """n bytes from a pointer."""
    cdef Py_ssize_t at = PyByteArray_GET_SIZE(buf)
    PyByteArray_Resize(buf, at + n)
    memcpy(PyByteArray_AS_STRING(buf) + at, data, n)
    return 0
