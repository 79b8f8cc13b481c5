"""Appending to the bytearrays the data plane builds heads in, without the
generic `+=` path (number protocol, buffer protocol, a temporary per part)."""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.string cimport memcpy

from cpython.bytearray cimport PyByteArray_FromStringAndSize

cdef extern from "Python.h":
    ctypedef struct PyByteArrayObject:
        Py_ssize_t ob_alloc
    void Py_SET_SIZE(object o, Py_ssize_t n)


cdef inline bytearray new_ba(Py_ssize_t reserve):
    """An empty bytearray with room for `reserve` bytes, so that a head built
    in it grows without a realloc (and without bytearray()'s type call)."""
    cdef bytearray buf = PyByteArray_FromStringAndSize(NULL, reserve)
    Py_SET_SIZE(buf, 0)
    PyByteArray_AS_STRING(buf)[0] = 0
    return buf


cdef inline char* extend(bytearray buf, Py_ssize_t n) except NULL:
    """Makes buf n bytes longer and returns where they go. CPython's resize
    grows a bytearray by 12.5% only when the growth is smaller than that, else
    to the exact size, and shrinks it back to the exact size when it is under
    half its room: a head built a field at a time would realloc for every
    field. Within its room the size is simply set; past it the room grows by
    half as much again."""
    cdef Py_ssize_t at = PyByteArray_GET_SIZE(buf)
    cdef Py_ssize_t need = at + n
    if need + 1 > (<PyByteArrayObject*>buf).ob_alloc:
        PyByteArray_Resize(buf, need + (need >> 1))
    Py_SET_SIZE(buf, need)
    cdef char* p = PyByteArray_AS_STRING(buf)
    p[need] = 0                         # (a bytearray keeps a NUL after its bytes)
    return p + at


cdef inline bytes ba_bytes(bytearray buf):
    """bytes(buf) without the buffer protocol's round trip."""
    return PyBytes_FromStringAndSize(PyByteArray_AS_STRING(buf), PyByteArray_GET_SIZE(buf))


cdef inline int put(bytearray buf, bytes data) except -1:
    if data is None or buf is None:
        raise TypeError("put: None")
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    memcpy(extend(buf, n), PyBytes_AS_STRING(data), n)
    return 0


cdef inline int put_header(bytearray buf, bytes name, bytes value) except -1:
    """name: value CRLF, in one resize."""
    if name is None or value is None or buf is None:
        raise TypeError("put_header: None")
    cdef Py_ssize_t a = PyBytes_GET_SIZE(name)
    cdef Py_ssize_t b = PyBytes_GET_SIZE(value)
    cdef char* p = extend(buf, a + b + 4)
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
    memcpy(extend(buf, n), PyByteArray_AS_STRING(data), n)
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
    cdef char* p = extend(buf, n)
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
    cdef char* p = extend(buf, a + b + 4)
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


cdef inline bint same_lower(const char* name, const char* lower, Py_ssize_t n) noexcept:
    """name, in any case, is `lower` (n bytes of lower case)."""
    cdef Py_ssize_t i
    cdef unsigned char c
    for i in range(n):
        c = <unsigned char>name[i]
        if 65 <= c <= 90:
            c |= 32
        if c != <unsigned char>lower[i]:
            return False
    return True


cdef inline unsigned int fnv_hash(const char* p, Py_ssize_t n) noexcept:
    """lower_hash of a name already in lower case."""
    cdef unsigned int h = 2166136261u
    cdef Py_ssize_t i
    for i in range(n):
        h = (h ^ <unsigned char>p[i]) * 16777619u
    return h


cdef inline int put_at(bytearray buf, const char* data, Py_ssize_t n) except -1:
    """n bytes from a pointer."""
    memcpy(extend(buf, n), data, n)
    return 0
