# cython: language_level=3
"""What Python's ssl module can't set on an SSLContext: the TLS 1.3 cipher
suites (SSL_CTX_set_ciphersuites) and session-ticket keys shared by every
worker and rotated without breaking resumption. The calls go to the very
libssl and libcrypto CPython's _ssl module loaded (found in /proc/self/maps and
reopened with RTLD_NOLOAD), so there is no second OpenSSL and no build-time
dependency on its headers."""

import ssl

from cpython.object cimport PyObject
from libc.string cimport memcmp, memcpy


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
ctypedef void (*any_fn_t)() noexcept nogil
ctypedef long (*ctx_callback_ctrl_t)(void* ctx, int cmd, any_fn_t fp) noexcept nogil
ctypedef int (*ticket_cb_t)(void* s, unsigned char* name, unsigned char* iv, void* cctx,
                            void* hctx, int enc) noexcept nogil
ctypedef int (*rand_bytes_t)(unsigned char* buf, int n) noexcept nogil
ctypedef const void* (*evp_getter_t)() noexcept nogil
ctypedef int (*cipher_init_t)(void* cctx, const void* cipher, void* engine,
                              const unsigned char* key, const unsigned char* iv) noexcept nogil
ctypedef int (*hmac_init_t)(void* hctx, const void* key, int n, const void* md,
                            void* engine) noexcept nogil
ctypedef int (*ssl_version_t)(const void* s) noexcept nogil
ctypedef const void* (*fetch_t)(void* libctx, const char* name, const char* props) noexcept nogil

# OpenSSL's ssl.h / tls1.h constants.
DEF SSL_CTRL_SET_TLSEXT_TICKET_KEY_CB = 72
DEF SSL_CTRL_SET_SESS_CACHE_MODE = 44
DEF SSL_SESS_CACHE_OFF = 0
DEF SSL_CTRL_SET_DH_AUTO = 118
# One ticket key: 16 bytes of name, 32 of HMAC-SHA256 key, 32 of AES-256 key.
TICKET_KEYS_LEN = 80
DEF KEY_LEN = 80
DEF NAME_LEN = 16
DEF IV_LEN = 16
DEF TLS1_3_VERSION = 0x0304

cdef set_ciphersuites_t _set_ciphersuites = NULL
cdef ctx_ctrl_t _ctx_ctrl = NULL
cdef ctx_callback_ctrl_t _ctx_callback_ctrl = NULL
cdef rand_bytes_t _rand_bytes = NULL
cdef evp_getter_t _aes_256_cbc = NULL
cdef evp_getter_t _sha256 = NULL
cdef cipher_init_t _encrypt_init = NULL
cdef cipher_init_t _decrypt_init = NULL
cdef hmac_init_t _hmac_init = NULL
cdef ssl_version_t _ssl_version = NULL
# What the ticket callback hands to EVP_*Init_ex/HMAC_Init_ex: on OpenSSL 3,
# AES-256-CBC and SHA-256 fetched from the default provider once, so that no
# ticket sealed or opened fetches them again (the static EVP_aes_256_cbc() and
# EVP_sha256() make every init look their implementation up: an EVP_MD_fetch
# for each of HMAC's three digest contexts and an EVP_CIPHER_fetch).
cdef const void* _cipher = NULL
cdef const void* _md = NULL

# The process's ticket keys: [0] issues and accepts tickets, [1] (the one
# before the last rotation) only accepts them, and asks for a renewed ticket.
cdef unsigned char _keys[2][KEY_LEN]
cdef int _nkeys = 0


def _lib_path(name):
    with open("/proc/self/maps") as maps:
        for line in maps:
            path = line.rstrip().rsplit(" ", 1)[-1]
            if f"/{name}.so" in path:
                return path
    return f"{name}.so.3"


cdef void* open_lib(str name) except NULL:
    """A handle on the libssl or libcrypto CPython loaded (never a second copy)."""
    path = _lib_path(name).encode()
    cdef void* handle = dlopen(path, RTLD_NOW | RTLD_NOLOAD)
    if handle == NULL:
        raise OSError(f"cannot find the {name} CPython uses ({path!r})")
    return handle


cdef int _load() except -1:
    global _set_ciphersuites, _ctx_ctrl, _ctx_callback_ctrl, _rand_bytes, _aes_256_cbc
    global _sha256, _encrypt_init, _decrypt_init, _hmac_init, _ssl_version, _cipher, _md
    if _set_ciphersuites != NULL:
        return 0
    cdef void* ssl_lib = open_lib("libssl")
    cdef void* crypto = open_lib("libcrypto")
    _ctx_ctrl = <ctx_ctrl_t>dlsym(ssl_lib, "SSL_CTX_ctrl")
    _ctx_callback_ctrl = <ctx_callback_ctrl_t>dlsym(ssl_lib, "SSL_CTX_callback_ctrl")
    _rand_bytes = <rand_bytes_t>dlsym(crypto, "RAND_bytes")
    _aes_256_cbc = <evp_getter_t>dlsym(crypto, "EVP_aes_256_cbc")
    _sha256 = <evp_getter_t>dlsym(crypto, "EVP_sha256")
    _encrypt_init = <cipher_init_t>dlsym(crypto, "EVP_EncryptInit_ex")
    _decrypt_init = <cipher_init_t>dlsym(crypto, "EVP_DecryptInit_ex")
    _hmac_init = <hmac_init_t>dlsym(crypto, "HMAC_Init_ex")
    _ssl_version = <ssl_version_t>dlsym(ssl_lib, "SSL_version")
    if (_ctx_ctrl == NULL or _ctx_callback_ctrl == NULL or _rand_bytes == NULL
            or _ssl_version == NULL or _aes_256_cbc == NULL or _sha256 == NULL or _encrypt_init == NULL
            or _decrypt_init == NULL or _hmac_init == NULL):
        raise OSError("this OpenSSL lacks a function lbcore needs for session tickets")
    cdef fetch_t cipher_fetch = <fetch_t>dlsym(crypto, "EVP_CIPHER_fetch")
    cdef fetch_t md_fetch = <fetch_t>dlsym(crypto, "EVP_MD_fetch")
    if cipher_fetch != NULL and md_fetch != NULL:           # OpenSSL 3
        _cipher = cipher_fetch(NULL, "AES-256-CBC", NULL)
        _md = md_fetch(NULL, "SHA256", NULL)
    if _cipher == NULL or _md == NULL:                      # 1.1.1: no providers
        _cipher = _aes_256_cbc()
        _md = _sha256()
    _set_ciphersuites = <set_ciphersuites_t>dlsym(ssl_lib, "SSL_CTX_set_ciphersuites")
    if _set_ciphersuites == NULL:
        raise OSError("this libssl has no SSL_CTX_set_ciphersuites (OpenSSL < 1.1.1)")
    return 0


cdef int _ticket_cb(void* s, unsigned char* name, unsigned char* iv, void* cctx, void* hctx,
                    int enc) noexcept nogil:
    """OpenSSL's ticket-key callback (runs inside the handshake, GIL released):
    encrypt new tickets under key 0; decrypt under whichever key named the
    ticket, asking for a new ticket (2) when it was the previous key or the
    connection is TLS 1.3; 0 (full handshake) for a key we no longer hold.

    TLS 1.3 clients use a ticket once (RFC 8446, C.4: browsers do), and with
    a key callback OpenSSL sends no ticket after a resumption unless the
    callback answers 2: with 1, such a client gets the two tickets of its
    full handshake and then needs a full handshake again every third
    connection. OpenSSL's own keys (nginx's default) send one."""
    cdef int i
    if _nkeys == 0:
        return 0
    if enc == 1:
        if _rand_bytes(iv, IV_LEN) != 1:
            return -1
        memcpy(name, &_keys[0][0], NAME_LEN)
        if _encrypt_init(cctx, _cipher, NULL, &_keys[0][48], iv) != 1:
            return -1
        if _hmac_init(hctx, &_keys[0][16], 32, _md, NULL) != 1:
            return -1
        return 1
    for i in range(_nkeys):
        if memcmp(name, &_keys[i][0], NAME_LEN) == 0:
            if _hmac_init(hctx, &_keys[i][16], 32, _md, NULL) != 1:
                return -1
            if _decrypt_init(cctx, _cipher, NULL, &_keys[i][48], iv) != 1:
                return -1
            return 1 if i == 0 and _ssl_version(s) != TLS1_3_VERSION else 2
    return 0


cdef void* ssl_ctx_ptr(object context) except NULL:
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
    cdef void* ctx = ssl_ctx_ptr(context)
    b = suites.encode()
    if _set_ciphersuites(ctx, b) != 1:
        raise ValueError(f"TLS 1.3 suites not usable by this OpenSSL: {suites}")


def use_ticket_keys(context):
    """Tickets of this context are sealed with the process's keys (see
    set_ticket_keys), not OpenSSL's random per-context ones, so a ticket from
    one worker resumes on another and survives reloads and key rotation."""
    _load()
    cdef void* ctx = ssl_ctx_ptr(context)
    if _ctx_callback_ctrl(ctx, SSL_CTRL_SET_TLSEXT_TICKET_KEY_CB,
                          <any_fn_t>_ticket_cb) != 1:
        raise ValueError("libssl refused the session-ticket callback")
    # Tickets replace OpenSSL's server-side session cache: that cache lives in
    # one worker (a session id resumes only there) and keeps a session in
    # memory for every handshake (up to 20,000 by default).
    _ctx_ctrl(ctx, SSL_CTRL_SET_SESS_CACHE_MODE, SSL_SESS_CACHE_OFF, NULL)


def set_ticket_keys(bytes current, bytes previous=None):
    """The process's ticket keys (TICKET_KEYS_LEN bytes each): `current` seals
    new tickets; `previous`, the key before the last rotation, still opens them."""
    global _nkeys
    _load()
    for key in (current, previous):
        if key is not None and len(key) != TICKET_KEYS_LEN:
            raise ValueError(f"ticket keys must be {TICKET_KEYS_LEN} bytes")
    memcpy(&_keys[0][0], <const char*>current, KEY_LEN)
    if previous is not None and previous != current and any(previous):
        memcpy(&_keys[1][0], <const char*>previous, KEY_LEN)
        _nkeys = 2
    else:
        _nkeys = 1


def set_dh_auto(context):
    """Let OpenSSL choose DH parameters matching the certificate, so DHE suites
    (tls-1-0-inherit) can be negotiated; Python's ssl only loads them from a file."""
    _load()
    cdef void* ctx = ssl_ctx_ptr(context)
    if _ctx_ctrl(ctx, SSL_CTRL_SET_DH_AUTO, 1, NULL) != 1:
        raise ValueError("libssl refused automatic DH parameters")
