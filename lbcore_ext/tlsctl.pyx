# cython: language_level=3
"""What Python's ssl module can't set on an SSLContext: the TLS 1.3 cipher
suites (SSL_CTX_set_ciphersuites) and shared session-ticket keys. The calls go
to the very libssl CPython's _ssl module loaded (found in /proc/self/maps and
reopened with RTLD_NOLOAD), so there is no second OpenSSL and no build-time
dependency on its headers."""

import ssl

from cpython.object cimport PyObject


cdef extern from "<dlfcn.h>" nogil:
    void* dlopen(const char* filename, int flag)
    void* dlsym(void* handle, const char* symbol)
    char* dlerror()
    int RTLD_NOW
    int RTLD_NOLOAD

cdef extern from *:
    """
    /* CPython's PySSLContext starts with the SSL_CTX pointer (3.7 - 3.13). */
    typedef struct { PyObject_HEAD void *ctx; } lbcore_PySSLContext;
    """
    ctypedef struct lbcore_PySSLContext:
        void* ctx

ctypedef int (*set_ciphersuites_t)(void* ctx, const char* s) noexcept nogil
ctypedef long (*ctx_ctrl_t)(void* ctx, int cmd, long larg, void* parg) noexcept nogil

# OpenSSL's ssl.h: SSL_CTRL_SET_TLSEXT_TICKET_KEYS; 80 bytes of keys in 3.x.
DEF SSL_CTRL_SET_TLSEXT_TICKET_KEYS = 59
DEF SSL_CTRL_SET_DH_AUTO = 118
TICKET_KEYS_LEN = 80

cdef set_ciphersuites_t _set_ciphersuites = NULL
cdef ctx_ctrl_t _ctx_ctrl = NULL


def _libssl_path():
    with open("/proc/self/maps") as maps:
        for line in maps:
            path = line.rstrip().rsplit(" ", 1)[-1]
            if "/libssl.so" in path:
                return path
    return "libssl.so.3"


cdef int _load() except -1:
    global _set_ciphersuites, _ctx_ctrl
    if _set_ciphersuites != NULL:
        return 0
    path = _libssl_path().encode()
    cdef void* handle = dlopen(path, RTLD_NOW | RTLD_NOLOAD)
    if handle == NULL:
        raise OSError(f"cannot find the libssl CPython uses ({path!r})")
    _set_ciphersuites = <set_ciphersuites_t>dlsym(handle, "SSL_CTX_set_ciphersuites")
    _ctx_ctrl = <ctx_ctrl_t>dlsym(handle, "SSL_CTX_ctrl")
    if _set_ciphersuites == NULL or _ctx_ctrl == NULL:
        raise OSError("this libssl has no SSL_CTX_set_ciphersuites (OpenSSL < 1.1.1)")
    return 0


cdef void* _ssl_ctx(object context) except NULL:
    if not isinstance(context, ssl.SSLContext):
        raise TypeError("expected an ssl.SSLContext")
    cdef void* ctx = (<lbcore_PySSLContext*><PyObject*>context).ctx
    if ctx == NULL:
        raise ValueError("SSLContext has no SSL_CTX")
    return ctx


def set_ciphersuites(context, str suites):
    """Exactly these TLS 1.3 suites, in this order ('' = none). Raises ValueError
    naming the list when the local OpenSSL refuses it."""
    _load()
    cdef void* ctx = _ssl_ctx(context)
    b = suites.encode()
    if _set_ciphersuites(ctx, b) != 1:
        raise ValueError(f"TLS 1.3 suites not usable by this OpenSSL: {suites}")


def set_ticket_keys(context, bytes keys):
    """Session-ticket keys (80 bytes: name, HMAC and AES keys) shared by every
    worker, so a ticket issued by one worker resumes on another."""
    _load()
    if len(keys) != TICKET_KEYS_LEN:
        raise ValueError(f"ticket keys must be {TICKET_KEYS_LEN} bytes")
    cdef void* ctx = _ssl_ctx(context)
    cdef const char* p = keys
    if _ctx_ctrl(ctx, SSL_CTRL_SET_TLSEXT_TICKET_KEYS, TICKET_KEYS_LEN, <void*>p) != 1:
        raise ValueError("libssl refused the session-ticket keys")


def set_dh_auto(context):
    """Let OpenSSL choose DH parameters matching the certificate, so DHE suites
    (tls-1-0-inherit) can be negotiated; Python's ssl only loads them from a file."""
    _load()
    cdef void* ctx = _ssl_ctx(context)
    if _ctx_ctrl(ctx, SSL_CTRL_SET_DH_AUTO, 1, NULL) != 1:
        raise ValueError("libssl refused automatic DH parameters")
