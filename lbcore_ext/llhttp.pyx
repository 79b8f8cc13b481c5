# cython: language_level=3
"""llhttp, driven from C: the parser httptools' compiled module carries and
exports (llhttp_init, llhttp_execute, ... are global symbols of its .so),
bound here by dlopen of that already-loaded module and dlsym, as tlsctl.pyx
binds CPython's libssl. The front-ends give llhttp C callbacks that see
header names and values as pointers into the bytes being parsed: no Python
call and no Python object per header (httptools' own API makes two bytes
objects and a Python call for each).

The price is a struct layout declared here (llhttp.pxd) rather than read
from a header httptools does not ship. So at import this module checks
that the loaded library is one whose llhttp version lbcore has verified
(VERIFIED, by the httptools version that vendors it), and probes the
layout: llhttp_settings_init must clear exactly sizeof(llhttp_settings_t)
bytes, llhttp_init must write the type and settings where they are
declared and nothing past the end, and a parsed request's method and
version must read back through both the struct and llhttp's getters.
Either failing is an ImportError that names both versions."""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.exc cimport PyErr_Fetch, PyErr_NormalizeException, PyErr_Occurred
from cpython.ref cimport PyObject, Py_XDECREF
from libc.string cimport memset

from lbcore_ext.bufs cimport put_at

cdef extern from "Python.h":
    int PyException_SetTraceback(object ex, object tb) except -1

import os

import httptools
import httptools.parser.parser as _httptools_parser

# httptools version -> the llhttp it vendors, each checked against llhttp.pxd.
VERIFIED = {"0.9.0": "9.4.3"}
DECLARED = "9.4.3"
# llhttp 9.4 numbers its methods 0 (DELETE) to 46 (QUERY).
DEF METHODS = 47

cdef extern from "<dlfcn.h>" nogil:
    void* dlopen(const char* path, int flags)
    void* dlsym(void* handle, const char* symbol)
    int RTLD_NOW
    int RTLD_NOLOAD

cdef llhttp_api_t API
cdef bint _loaded = False
cdef tuple _METHODS = ()


cdef void* _sym(void* lib, const char* name) except NULL:
    cdef void* p = dlsym(lib, name)
    if p == NULL:
        raise ImportError(f"httptools' parser lacks {name.decode()}, which lbcore needs "
                          f"(lbcore declares llhttp {DECLARED})")
    return p


def check_version(str httptools_version):
    """ImportError unless this httptools vendors an llhttp lbcore verified."""
    found = VERIFIED.get(httptools_version)
    if found != DECLARED:
        raise ImportError(
            f"lbcore drives llhttp {DECLARED} from C, but httptools {httptools_version} "
            f"vendors llhttp {found or 'of a version lbcore has not verified'}; install "
            f"httptools {' or '.join(v for v, ll in VERIFIED.items() if ll == DECLARED)}")


def check_layout(Py_ssize_t parser_size, Py_ssize_t settings_size):
    """ImportError unless the loaded llhttp's structs have these sizes and
    llhttp.pxd's field offsets (a probe, run at import with the declared
    sizes; tests pass wrong ones)."""
    cdef unsigned char buf[512]
    cdef llhttp_settings_t s
    cdef llhttp_t* p = <llhttp_t*>buf
    cdef Py_ssize_t i
    if parser_size + 64 > 512 or settings_size + 64 > 512:
        raise ImportError("llhttp layout probe: size out of range")
    memset(buf, 0xA5, sizeof(buf))
    API.settings_init(<llhttp_settings_t*>buf)
    for i in range(settings_size):
        if buf[i] != 0:
            _layout_error(f"llhttp_settings_t is not the {settings_size} bytes declared")
    for i in range(settings_size, settings_size + 64):
        if buf[i] != 0xA5:
            _layout_error(f"llhttp_settings_t is not the {settings_size} bytes declared")
    API.settings_init(&s)
    memset(buf, 0xA5, sizeof(buf))
    API.init(p, HTTP_REQUEST, &s)
    for i in range(parser_size, parser_size + 64):
        if buf[i] != 0xA5:
            _layout_error(f"llhttp_t is not the {parser_size} bytes declared")
    # settings is llhttp_t's last field: where a struct of parser_size ends.
    if (p.type != HTTP_REQUEST or p.settings != <void*>&s or p.data != NULL
            or (<void**>(buf + parser_size - sizeof(void*)))[0] != <void*>&s):
        _layout_error(f"llhttp_t is not the {parser_size} bytes declared, or its fields "
                      f"are not where llhttp.pxd declares them")
    cdef const char* req = b"PUT / HTTP/1.0\r\n\r\n"
    if API.execute(p, req, 18) != HPE_OK:
        _layout_error("the layout probe's request did not parse")
    if (p.method != 4 or p.http_major != 1 or p.http_minor != 0
            or (<bytes>API.method_name(p.method)) != b"PUT"
            or API.should_keep_alive(p) != 0):
        _layout_error("llhttp_t's method or version fields are not where declared")


cdef int _layout_error(str what) except -1:
    raise ImportError(f"{what}: lbcore declares llhttp {DECLARED}, the loaded httptools "
                      f"{httptools.__version__} vendors llhttp "
                      f"{VERIFIED.get(httptools.__version__, 'unknown')}")


cdef int _load() except -1:
    global _loaded, _METHODS
    check_version(httptools.__version__)
    path = os.fsencode(_httptools_parser.__file__)
    cdef void* lib = dlopen(path, RTLD_NOW | RTLD_NOLOAD)
    if lib == NULL:
        raise ImportError(f"cannot open httptools' parser module {path!r}")
    API.init = <void (*)(llhttp_t*, int, const llhttp_settings_t*) noexcept>_sym(lib, "llhttp_init")
    API.settings_init = <void (*)(llhttp_settings_t*) noexcept>_sym(lib, "llhttp_settings_init")
    API.execute = <int (*)(llhttp_t*, const char*, size_t) noexcept>_sym(lib, "llhttp_execute")
    API.finish = <int (*)(llhttp_t*) noexcept>_sym(lib, "llhttp_finish")
    API.reset = <void (*)(llhttp_t*) noexcept>_sym(lib, "llhttp_reset")
    API.should_keep_alive = <int (*)(const llhttp_t*) noexcept>_sym(
        lib, "llhttp_should_keep_alive")
    API.message_needs_eof = <int (*)(const llhttp_t*) noexcept>_sym(
        lib, "llhttp_message_needs_eof")
    API.resume_after_upgrade = <void (*)(llhttp_t*) noexcept>_sym(
        lib, "llhttp_resume_after_upgrade")
    API.get_error_pos = <const char* (*)(const llhttp_t*) noexcept>_sym(
        lib, "llhttp_get_error_pos")
    API.get_error_reason = <const char* (*)(const llhttp_t*) noexcept>_sym(
        lib, "llhttp_get_error_reason")
    API.errno_name = <const char* (*)(int) noexcept>_sym(lib, "llhttp_errno_name")
    API.method_name = <const char* (*)(int) noexcept>_sym(lib, "llhttp_method_name")
    check_layout(sizeof(llhttp_t), sizeof(llhttp_settings_t))
    # Method names as bytes, made once: a request's method costs no allocation.
    # (llhttp_method_name aborts the process on a number it does not know.)
    _METHODS = tuple(<bytes>API.method_name(m) for m in range(METHODS))
    _loaded = True
    return 0


_load()


cdef llhttp_api_t* llhttp_api() except NULL:
    return &API


cdef bytes method_bytes(uint8_t method):
    """The method llhttp parsed, as bytes (b"<unknown>" past its table)."""
    return _METHODS[method] if method < METHODS else b"<unknown>"


def errno_name(int err) -> str:
    return (<bytes>API.errno_name(err)).decode()


cdef llhttp_settings_t SETTINGS        # every Parser's: requests and responses
cdef const char* _EMPTY = b""


cdef class Parser:
    cdef int start(self, int kind, void* owner) except -1:
        API.init(&self.p, kind, &SETTINGS)
        self.p.data = <void*>self
        self.owner = owner
        return 0

    cdef int execute(self, const char* at, Py_ssize_t n) except -2:
        """llhttp_execute over one read; its errno (HPE_OK, HPE_PAUSED_UPGRADE...)."""
        cdef int err = API.execute(&self.p, at, n)
        if err != HPE_OK and PyErr_Occurred() != NULL:
            self.cb_error = _fetch_error()
            # (llhttp returns a span callback's own number, -2 here, as its
            # errno; the other callbacks' errors get their HPE_CB_* code.)
            if err < 0:
                err = HPE_USER
        self._keep()
        return err

    cdef int _keep(self) except -1:
        """The read being parsed ends (its bytes object goes away): what of the
        field points into it is copied; the rest comes with the next read."""
        if self.f_at != NULL:
            if self.f_copy is None:
                self.f_copy = bytearray()
            put_at(self.f_copy, self.f_at, self.f_len)
            self.f_at = NULL
        if self.v_at != NULL:
            if self.v_copy is None:
                self.v_copy = bytearray()
            put_at(self.v_copy, self.v_at, self.v_len)
            self.v_at = NULL
        return 0

    # The hooks: a subclass overrides those its kind of message has.
    cdef int on_message_begin(self) except -2:
        return 0

    cdef int on_url(self, const char* at, size_t n) except -2:
        return 0

    cdef int on_status(self, const char* at, size_t n) except -2:
        return 0

    cdef int on_field(self, const char* name, Py_ssize_t nn, const char* value,
                      Py_ssize_t vn) except -2:
        return 0

    cdef int on_headers_complete(self) except -2:
        return 0

    cdef int on_body(self, const char* at, size_t n) except -2:
        return 0

    cdef int on_message_complete(self) except -2:
        return 0


# ---- llhttp's callbacks: C functions, the Parser in llhttp_t.data -------------------
# A hook's exception stops the parser and ends up in cb_error: the callbacks
# are `except -2`, so one returns -2 with the exception set, llhttp takes any
# return other than 0 or HPE_PAUSED as a callback error and returns at once,
# and execute() moves the exception into cb_error. (A try/except in each
# callback saved and restored the thread's exception state on every call:
# some 50 instructions, three calls per header field.)

cdef object _fetch_error():
    """The exception set, taken out of the thread state, with its traceback."""
    cdef PyObject* t = NULL
    cdef PyObject* v = NULL
    cdef PyObject* tb = NULL
    PyErr_Fetch(&t, &v, &tb)
    PyErr_NormalizeException(&t, &v, &tb)
    if tb != NULL:
        PyException_SetTraceback(<object>v, <object>tb)
    exc = <object>v
    Py_XDECREF(t)
    Py_XDECREF(v)
    Py_XDECREF(tb)
    return exc


cdef int _cb_message_begin(llhttp_t* p) except -2:
    return (<Parser>p.data).on_message_begin()


cdef int _cb_url(llhttp_t* p, const char* at, size_t n) except -2:
    return (<Parser>p.data).on_url(at, n)


cdef int _cb_status(llhttp_t* p, const char* at, size_t n) except -2:
    return (<Parser>p.data).on_status(at, n)


cdef int _cb_header_field(llhttp_t* p, const char* at, size_t n) except -2:
    """A part of a field's name: where it lies, or onto the copy of what an
    earlier read held of it."""
    cdef Parser self = <Parser>p.data
    if self.f_copy is not None:
        put_at(self.f_copy, at, n)
    else:
        self.f_at = at
        self.f_len = n
    return 0


cdef int _cb_header_value(llhttp_t* p, const char* at, size_t n) except -2:
    cdef Parser self = <Parser>p.data
    if self.v_copy is not None:
        put_at(self.v_copy, at, n)
    else:
        self.v_at = at
        self.v_len = n
    return 0


cdef int _cb_header_value_complete(llhttp_t* p) except -2:
    """A whole field, to on_field: in place when this read held all of it
    (the common case), else from the copies."""
    cdef Parser self = <Parser>p.data
    cdef int r
    if self.f_copy is None and self.v_copy is None:
        r = self.on_field(self.f_at if self.f_at != NULL else _EMPTY, self.f_len,
                          self.v_at if self.v_at != NULL else _EMPTY, self.v_len)
    else:
        self._keep()                # (a cut field: both parts into the copies)
        if self.f_copy is None:
            self.f_copy = bytearray()
        if self.v_copy is None:
            self.v_copy = bytearray()
        r = self.on_field(PyByteArray_AS_STRING(self.f_copy),
                          PyByteArray_GET_SIZE(self.f_copy),
                          PyByteArray_AS_STRING(self.v_copy),
                          PyByteArray_GET_SIZE(self.v_copy))
        self.f_copy = self.v_copy = None
    self.f_at = self.v_at = NULL
    self.f_len = self.v_len = 0     # (0 when llhttp gave no value part: empty)
    return r


cdef int _cb_headers_complete(llhttp_t* p) except -2:
    return (<Parser>p.data).on_headers_complete()


cdef int _cb_body(llhttp_t* p, const char* at, size_t n) except -2:
    return (<Parser>p.data).on_body(at, n)


cdef int _cb_message_complete(llhttp_t* p) except -2:
    return (<Parser>p.data).on_message_complete()


API.settings_init(&SETTINGS)
SETTINGS.on_message_begin = <llhttp_cb>_cb_message_begin
SETTINGS.on_url = <llhttp_data_cb>_cb_url
SETTINGS.on_status = <llhttp_data_cb>_cb_status
SETTINGS.on_header_field = <llhttp_data_cb>_cb_header_field
SETTINGS.on_header_value = <llhttp_data_cb>_cb_header_value
SETTINGS.on_header_value_complete = <llhttp_cb>_cb_header_value_complete
SETTINGS.on_headers_complete = <llhttp_cb>_cb_headers_complete
SETTINGS.on_body = <llhttp_data_cb>_cb_body
SETTINGS.on_message_complete = <llhttp_cb>_cb_message_complete
