# cython: language_level=3
"""Client connections on sockets lbcore owns, driven by the loop's readiness
events (add_reader/add_writer): plain TCP (TcpTransport: recv() into one
buffer the worker shares, send()/writev() straight to the socket) and TLS
(TlsTransport: OpenSSL reads and writes the file descriptor itself,
SSL_set_fd, a socket BIO). Both are a SocketTransport: the readiness, the
write queue and its water marks, half-close, close and abort are written
once there; the subclasses supply the byte primitives (_read, _send, _push)
and TLS its handshake states. The Acceptor (acceptor.pyx) hands each accepted
socket to tcp_accept or tls_accept with accept()'s binary address, which
becomes text once (peer_ip) or a peername tuple only when asked.

What the plain transport replaces: uvloop's TCPTransport costs a Python
socket object per connection (the Acceptor's socket.accept()), a peername
tuple and str, libuv's handle tracking, and a read buffer per read; tcp_connect
opens member connections on it too (not yet used by upstream.pyx).

What the TLS transport replaces: uvloop's SSL transport runs Python's SSLObject over memory
BIOs, which costs a Python call and a copy per record, an SSLWantReadError
raised for every WANT_READ, and a 256 KiB read buffer per connection. Here a
read is SSL_read into one buffer the worker shares, a write is SSL_write
straight to the socket, WANT_READ is an int, and an idle connection holds an
SSL object with no record buffers (SSL_MODE_RELEASE_BUFFERS). A connection
that never sends a byte holds no SSL object at all: it is made on the first
readable event.

OpenSSL is the libssl CPython loaded (found by tlsctl.open_lib, symbols by
dlsym): no second copy, no build-time headers, and the SSL_CTX is the one of
the listener's ssl.SSLContext, so everything the control plane set on it
(versions, suites, ALPN, client CA and CRL, ticket-key callback) applies.
Python's own SNI callback can't run on an SSL object Python did not make (it
reads its SSLSocket from the SSL's app data), so SNI goes through
install_sni()'s C callback, which calls the listener's selector.

Why not aiofastnet (PyPI, 1.2.0, read at that version): it reimplements
asyncio's whole transport layer (about 8,600 lines: sockets, pipes, datagrams,
sendfile, a stdlib fallback engine), and by default drives OpenSSL over static
memory BIOs with a read and a write buffer preallocated per connection, the
per-connection memory this module exists to remove; its socket BIO is only
for kTLS or a test flag. It creates its SSL objects from the SSLContext
without the app data Python's SNI callback reads, so an sni_callback crashes
there, and it has no per-listener hooks for what lbcore must see (handshake
failure reasons, the CONN_OPENING gauge, drain of connections mid-handshake,
the plain-HTTP 400). What it shows works is the approach taken here:
dlsym of CPython's libssl and an SSL_CTX taken from the SSLContext. The part
lbcore needs is this file; owning it costs less than adapting that.

The protocol sees the asyncio transport surface it already uses (write,
writelines, close, abort, pause_reading, resume_reading, set_protocol,
get_extra_info) and, as get_extra_info("ssl_object"), the transport itself
with the SSLObject methods the front-ends read (version, cipher,
selected_alpn_protocol, getpeercert(binary_form=True), session_reused,
lbcore_sni)."""

include "consts.pxi"

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.errno cimport EAGAIN, EINPROGRESS, EINTR, errno
from libc.stdint cimport uint16_t, uint32_t
from libc.string cimport memcpy, memset, strerror, strncmp

from lbcore_ext.clock cimport batch_begin, batch_end, monotonic, stamp

from lbcore_ext.counters cimport add, count_reason, inc
from lbcore_ext.runtime cimport ListenerRuntime
from lbcore_ext.tlsctl cimport open_lib, ssl_ctx_ptr

from lbcore_ext.counters import (CONN_OPENING, R_PLAIN_HTTP, TLS_FAIL, TLS_FAIL_REASONS,
                                 TLS_RESUMED)

cdef extern from "<sys/epoll.h>" nogil:
    union epoll_data_t "epoll_data":
        void* ptr
        int fd
    struct epoll_event:
        unsigned int events
        epoll_data_t data
    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event* ev)
    int epoll_wait(int epfd, epoll_event* evs, int maxevents, int timeout)
    int EPOLL_CLOEXEC
    int EPOLL_CTL_ADD
    int EPOLL_CTL_MOD
    int EPOLL_CTL_DEL
    unsigned int EPOLLIN
    unsigned int EPOLLOUT
    unsigned int EPOLLERR
    unsigned int EPOLLHUP

cdef extern from "<unistd.h>" nogil:
    int c_close "close"(int fd)
    ssize_t c_write "write"(int fd, const void* buf, size_t n)

cdef extern from "<sys/uio.h>" nogil:
    struct iovec:
        void* iov_base
        size_t iov_len
    ssize_t writev(int fd, const iovec* iov, int n)

cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    struct sockaddr:
        unsigned short sa_family
    struct sockaddr_storage:
        unsigned short ss_family
    ssize_t recv(int fd, void* buf, size_t n, int flags)
    ssize_t send(int fd, const void* buf, size_t n, int flags)
    int shutdown(int fd, int how)
    int getsockname(int fd, sockaddr* addr, socklen_t* n)
    int getpeername(int fd, sockaddr* addr, socklen_t* n)
    int getsockopt(int fd, int level, int name, void* val, socklen_t* n)
    int setsockopt(int fd, int level, int name, const void* val, socklen_t n)
    int socket(int domain, int type, int protocol)
    int connect(int fd, const sockaddr* addr, socklen_t n)
    int MSG_DONTWAIT
    int MSG_NOSIGNAL
    int SHUT_WR
    int AF_INET
    int AF_INET6
    int SOCK_STREAM
    int SOCK_NONBLOCK
    int SOCK_CLOEXEC
    int SOL_SOCKET
    int SO_ERROR

cdef extern from "<netinet/tcp.h>" nogil:
    int TCP_NODELAY_ "TCP_NODELAY"

cdef extern from "<netinet/in.h>" nogil:
    int IPPROTO_TCP_ "IPPROTO_TCP"
    struct in_addr:
        uint32_t s_addr
    struct sockaddr_in:
        unsigned short sin_family
        uint16_t sin_port
        in_addr sin_addr
    struct in6_addr:
        unsigned char s6_addr[16]
    struct sockaddr_in6:
        unsigned short sin6_family
        uint16_t sin6_port
        in6_addr sin6_addr
    uint16_t ntohs(uint16_t)
    uint16_t htons(uint16_t)

cdef extern from "<arpa/inet.h>" nogil:
    const char* inet_ntop(int af, const void* src, char* dst, socklen_t n)
    int inet_pton(int af, const char* src, void* dst)

# ---- libssl / libcrypto, resolved at import ---------------------------------------

ctypedef void* (*ssl_new_t)(void* ctx) noexcept nogil
ctypedef void (*ssl_void_t)(void* ssl) noexcept nogil
ctypedef int (*ssl_int_t)(void* ssl) noexcept nogil
ctypedef int (*ssl_set_fd_t)(void* ssl, int fd) noexcept nogil
ctypedef long (*ssl_ctrl_t)(void* ssl, int cmd, long larg, void* parg) noexcept nogil
ctypedef int (*ssl_io_t)(void* ssl, void* buf, int n) noexcept nogil
ctypedef int (*ssl_get_error_t)(void* ssl, int ret) noexcept nogil
ctypedef int (*ssl_set_ex_data_t)(void* ssl, int idx, void* data) noexcept nogil
ctypedef void* (*ssl_get_ex_data_t)(void* ssl, int idx) noexcept nogil
ctypedef const char* (*ssl_get_servername_t)(void* ssl, int kind) noexcept nogil
ctypedef void* (*ssl_set_ctx_t)(void* ssl, void* ctx) noexcept nogil
ctypedef const char* (*ssl_str_t)(void* ssl) noexcept nogil
ctypedef void* (*ssl_ptr_t)(void* ssl) noexcept nogil
ctypedef const char* (*cipher_name_t)(void* cipher) noexcept nogil
ctypedef void (*alpn_selected_t)(void* ssl, const unsigned char** data,
                                 unsigned int* n) noexcept nogil
ctypedef long (*ssl_long_t)(void* ssl) noexcept nogil
ctypedef int (*i2d_x509_t)(void* x, unsigned char** out) noexcept nogil
ctypedef void (*x509_free_t)(void* x) noexcept nogil
ctypedef unsigned long (*err_get_t)() noexcept nogil
ctypedef void (*err_clear_t)() noexcept nogil
ctypedef const char* (*err_string_t)(unsigned long e) noexcept nogil
ctypedef void (*any_fn_t)() noexcept nogil
ctypedef long (*ctx_callback_ctrl_t)(void* ctx, int cmd, any_fn_t fp) noexcept nogil
ctypedef long (*ctx_ctrl_t)(void* ctx, int cmd, long larg, void* parg) noexcept nogil

cdef ssl_new_t SSL_new
cdef ssl_void_t SSL_free
cdef ssl_void_t SSL_set_accept_state
cdef ssl_set_fd_t SSL_set_fd
cdef ssl_ctrl_t SSL_ctrl
cdef ssl_int_t SSL_do_handshake
cdef ssl_io_t SSL_read
cdef ssl_io_t SSL_write
cdef ssl_get_error_t SSL_get_error
cdef ssl_int_t SSL_shutdown
cdef ssl_int_t SSL_has_pending
cdef ssl_int_t SSL_get_verify_mode
cdef ssl_int_t SSL_session_reused
cdef ssl_set_ex_data_t SSL_set_ex_data
cdef ssl_get_ex_data_t SSL_get_ex_data
cdef ssl_get_servername_t SSL_get_servername
cdef ssl_set_ctx_t SSL_set_SSL_CTX
cdef ssl_str_t SSL_get_version
cdef ssl_ptr_t SSL_get_current_cipher
cdef cipher_name_t SSL_CIPHER_get_name
cdef alpn_selected_t SSL_get0_alpn_selected
cdef ssl_long_t SSL_get_verify_result
cdef ssl_ptr_t SSL_get1_peer_certificate
cdef i2d_x509_t i2d_X509
cdef x509_free_t X509_free
cdef err_get_t ERR_peek_last_error
cdef err_clear_t ERR_clear_error
cdef err_string_t ERR_reason_error_string
cdef ctx_callback_ctrl_t SSL_CTX_callback_ctrl
cdef ctx_ctrl_t SSL_CTX_ctrl

# ssl.h / tls1.h
DEF SSL_ERROR_SSL = 1
DEF SSL_ERROR_WANT_READ = 2
DEF SSL_ERROR_WANT_WRITE = 3
DEF SSL_ERROR_SYSCALL = 5
DEF SSL_ERROR_ZERO_RETURN = 6
DEF SSL_CTRL_MODE = 33
DEF SSL_CTRL_SET_READ_AHEAD = 41
DEF SSL_CTRL_GET_SESSION_REUSED = 8
DEF SSL_MODE_ENABLE_PARTIAL_WRITE = 0x1
DEF SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER = 0x2
DEF SSL_MODE_NO_AUTO_CHAIN = 0x8
DEF SSL_MODE_RELEASE_BUFFERS = 0x10
DEF SSL_VERIFY_PEER = 0x1
DEF SSL_CTRL_SET_TLSEXT_SERVERNAME_CB = 53
DEF SSL_CTRL_SET_TLSEXT_SERVERNAME_ARG = 54
DEF SSL_TLSEXT_ERR_OK = 0
DEF SSL_TLSEXT_ERR_ALERT_FATAL = 2
DEF TLSEXT_NAMETYPE_host_name = 0

DEF ST_ACCEPTED = 0     # no byte read yet: no SSL object
DEF ST_HANDSHAKE = 1
DEF ST_OPEN = 2
DEF ST_CLOSING = 3      # close() asked; queued bytes still leaving
DEF ST_LINGER = 4       # plain HTTP answered; reading what is left, then close
DEF ST_CLOSED = 5

DEF ALPN_NONE = 0
DEF ALPN_H2 = 1
DEF ALPN_HTTP11 = 2
DEF ALPN_OTHER = 3


cdef void* _sym(void* lib, const char* name) except NULL:
    cdef void* p = dlsym(lib, name)
    if p == NULL:
        raise OSError(f"libssl lacks {name.decode()}, which lbcore's TLS transport needs")
    return p


cdef extern from "<dlfcn.h>" nogil:
    void* dlsym(void* handle, const char* symbol)


cdef int _load() except -1:
    global SSL_new, SSL_free, SSL_set_accept_state, SSL_set_fd, SSL_ctrl, SSL_do_handshake
    global SSL_read, SSL_write, SSL_get_error, SSL_shutdown, SSL_has_pending
    global SSL_get_verify_mode, SSL_session_reused, SSL_set_ex_data, SSL_get_ex_data
    global SSL_get_servername
    global SSL_set_SSL_CTX, SSL_get_version, SSL_get_current_cipher, SSL_CIPHER_get_name
    global SSL_get0_alpn_selected, SSL_get_verify_result, SSL_get1_peer_certificate
    global i2d_X509, X509_free, ERR_peek_last_error, ERR_clear_error
    global ERR_reason_error_string, SSL_CTX_callback_ctrl, SSL_CTX_ctrl
    cdef void* s = open_lib("libssl")
    cdef void* c = open_lib("libcrypto")
    SSL_new = <ssl_new_t>_sym(s, "SSL_new")
    SSL_free = <ssl_void_t>_sym(s, "SSL_free")
    SSL_set_accept_state = <ssl_void_t>_sym(s, "SSL_set_accept_state")
    SSL_set_fd = <ssl_set_fd_t>_sym(s, "SSL_set_fd")
    SSL_ctrl = <ssl_ctrl_t>_sym(s, "SSL_ctrl")
    SSL_do_handshake = <ssl_int_t>_sym(s, "SSL_do_handshake")
    SSL_read = <ssl_io_t>_sym(s, "SSL_read")
    SSL_write = <ssl_io_t>_sym(s, "SSL_write")
    SSL_get_error = <ssl_get_error_t>_sym(s, "SSL_get_error")
    SSL_shutdown = <ssl_int_t>_sym(s, "SSL_shutdown")
    SSL_has_pending = <ssl_int_t>_sym(s, "SSL_has_pending")
    SSL_get_verify_mode = <ssl_int_t>_sym(s, "SSL_get_verify_mode")
    # A function since OpenSSL 3.0 (the SSL_ctrl it was in 1.1 answers 0 there).
    SSL_session_reused = <ssl_int_t>dlsym(s, "SSL_session_reused")
    SSL_set_ex_data = <ssl_set_ex_data_t>_sym(s, "SSL_set_ex_data")
    SSL_get_ex_data = <ssl_get_ex_data_t>_sym(s, "SSL_get_ex_data")
    SSL_get_servername = <ssl_get_servername_t>_sym(s, "SSL_get_servername")
    SSL_set_SSL_CTX = <ssl_set_ctx_t>_sym(s, "SSL_set_SSL_CTX")
    SSL_get_version = <ssl_str_t>_sym(s, "SSL_get_version")
    SSL_get_current_cipher = <ssl_ptr_t>_sym(s, "SSL_get_current_cipher")
    SSL_CIPHER_get_name = <cipher_name_t>_sym(s, "SSL_CIPHER_get_name")
    SSL_get0_alpn_selected = <alpn_selected_t>_sym(s, "SSL_get0_alpn_selected")
    SSL_get_verify_result = <ssl_long_t>_sym(s, "SSL_get_verify_result")
    SSL_get1_peer_certificate = <ssl_ptr_t>dlsym(s, "SSL_get1_peer_certificate")
    if SSL_get1_peer_certificate == NULL:           # OpenSSL 1.1's name
        SSL_get1_peer_certificate = <ssl_ptr_t>_sym(s, "SSL_get_peer_certificate")
    SSL_CTX_callback_ctrl = <ctx_callback_ctrl_t>_sym(s, "SSL_CTX_callback_ctrl")
    SSL_CTX_ctrl = <ctx_ctrl_t>_sym(s, "SSL_CTX_ctrl")
    i2d_X509 = <i2d_x509_t>_sym(c, "i2d_X509")
    X509_free = <x509_free_t>_sym(c, "X509_free")
    ERR_peek_last_error = <err_get_t>_sym(c, "ERR_peek_last_error")
    ERR_clear_error = <err_clear_t>_sym(c, "ERR_clear_error")
    ERR_reason_error_string = <err_string_t>_sym(c, "ERR_reason_error_string")
    return 0


_load()

# One read buffer for every connection of the worker (one thread, one loop).
cdef char _rbuf[READ_BUFFER]
# Where a closing connection's unread bytes are dropped: never _rbuf, which a
# protocol may be parsing when it closes this (or another) connection.
cdef char _drain[READ_BUFFER]

cdef Py_ssize_t O_OPENING = CONN_OPENING
cdef Py_ssize_t O_TLS_FAIL = TLS_FAIL
cdef Py_ssize_t O_TLS_RESUMED = TLS_RESUMED
cdef int G_PLAIN_HTTP = R_PLAIN_HTTP
cdef dict _FAIL_CELL = {r: i for i, r in enumerate(TLS_FAIL_REASONS)}

# OpenSSL reason strings (ERR_reason_error_string, upper-cased with '_', which
# is how Python's SSLError.reason spells them) -> bounded metric label.
_REASONS = {
    "NO_SHARED_CIPHER": "no_shared_cipher",
    "NO_SUITABLE_SIGNATURE_ALGORITHM": "no_shared_cipher",
    "UNSUPPORTED_PROTOCOL": "protocol_version",
    "NO_PROTOCOLS_AVAILABLE": "protocol_version",
    "VERSION_TOO_LOW": "protocol_version",
    "WRONG_VERSION_NUMBER": "protocol_version",
    "TLSV1_ALERT_PROTOCOL_VERSION": "protocol_version",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "no_client_certificate",
    "CERTIFICATE_REQUIRED": "no_client_certificate",
    "HTTP_REQUEST": "plain_http",
    "HTTPS_PROXY_REQUEST": "plain_http",
    "UNEXPECTED_EOF_WHILE_READING": "closed",
}
# X509 verify codes of a refused client certificate.
_VERIFY = {10: "client_certificate_expired", 23: "client_certificate_revoked"}

# nginx's answer, word for word where it matters to a person reading it.
cdef bytes _PLAIN_BODY = (
    b"<html>\r\n<head><title>400 The plain HTTP request was sent to HTTPS port</title>"
    b"</head>\r\n<body>\r\n<center><h1>400 Bad Request</h1></center>\r\n"
    b"<center>The plain HTTP request was sent to HTTPS port</center>\r\n</body>\r\n</html>\r\n")
cdef bytes PLAIN_HTTP_400 = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/html\r\nContent-Length: "
    + str(len(_PLAIN_BODY)).encode() + b"\r\nConnection: close\r\n\r\n" + _PLAIN_BODY)


cdef str _ssl_reason(unsigned long e):
    cdef const char* s = ERR_reason_error_string(e) if e else NULL
    if s == NULL:
        return ""
    return (<bytes>s).decode("ascii", "replace").upper().replace(" ", "_")


cdef str _classify(void* ssl, int err):
    """The TLS_FAIL_REASONS label of a failed SSL_do_handshake; clears the
    thread's OpenSSL error queue (Python's ssl module shares it)."""
    cdef unsigned long e = ERR_peek_last_error()
    cdef str key = _ssl_reason(e)
    ERR_clear_error()
    if err == SSL_ERROR_SYSCALL or err == SSL_ERROR_ZERO_RETURN:
        return "closed"
    if key == "CERTIFICATE_VERIFY_FAILED":
        return _VERIFY.get(SSL_get_verify_result(ssl), "client_certificate_invalid")
    return _REASONS.get(key, "other")


cdef int _servername_cb(void* ssl, int* alert, void* arg) noexcept with gil:
    """SNI, inside the handshake: the selector (arg, kept alive by the
    SSLContext it was installed on) picks the SSLContext for the name; its
    SSL_CTX replaces the default's for this connection."""
    cdef void* t = SSL_get_ex_data(ssl, 0)
    cdef const char* name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name)
    cdef TlsTransport tr = <object>t if t != NULL else None
    try:
        server_name = (<bytes>name).decode("ascii", "replace") if name != NULL else None
        if tr is not None:
            tr.sni_text = server_name
            tr.sni_known = True
        chosen = (<object>arg)(server_name)
        if chosen is not None:
            SSL_set_SSL_CTX(ssl, ssl_ctx_ptr(chosen))
        return SSL_TLSEXT_ERR_OK
    except BaseException as exc:
        if tr is not None:
            tr.cb_error = exc
        return SSL_TLSEXT_ERR_ALERT_FATAL


def install_sni(context, select):
    """Choose the certificate by SNI on connections of this transport:
    `select(server_name or None)` returns the SSLContext to serve (or None for
    `context` itself). Replaces any Python sni_callback of the context, which
    can't run on SSL objects Python did not make."""
    cdef void* ctx = ssl_ctx_ptr(context)
    context._lbcore_sni_select = select             # kept alive as long as the context
    if SSL_CTX_callback_ctrl(ctx, SSL_CTRL_SET_TLSEXT_SERVERNAME_CB,
                             <any_fn_t>_servername_cb) != 1:
        raise ValueError("libssl refused the SNI callback")
    SSL_CTX_ctrl(ctx, SSL_CTRL_SET_TLSEXT_SERVERNAME_ARG, 0, <void*>select)


def failure_reason_of(str openssl_reason, int verify_code=0) -> str:
    """The label a handshake failure with this OpenSSL reason gets (tests)."""
    if openssl_reason == "CERTIFICATE_VERIFY_FAILED":
        return _VERIFY.get(verify_code, "client_certificate_invalid")
    return _REASONS.get(openssl_reason, "other")


cdef object _addr_tuple(sockaddr* sa):
    cdef char text[64]
    if sa.sa_family == AF_INET:
        inet_ntop(AF_INET, &(<sockaddr_in*>sa).sin_addr, text, sizeof(text))
        return ((<bytes>text).decode(), ntohs((<sockaddr_in*>sa).sin_port))
    if sa.sa_family == AF_INET6:
        inet_ntop(AF_INET6, &(<sockaddr_in6*>sa).sin6_addr, text, sizeof(text))
        return ((<bytes>text).decode(), ntohs((<sockaddr_in6*>sa).sin6_port), 0, 0)
    return None


cdef class HandshakeQueue:
    def __init__(self, loop, double timeout):
        self.loop = loop
        self.timeout = timeout

    cdef int push(self, TlsTransport t) except -1:
        t.deadline = monotonic() + self.timeout         # loop.time()'s clock, in C
        t.hq = self
        t.hq_prev = self.tail
        if self.tail is None:
            self.head = t
        else:
            self.tail.hq_next = t
        self.tail = t
        if self.timer is None:
            self.arm()
        return 0

    cdef int unlink(self, TlsTransport t) except -1:
        if t.hq is not self:
            return 0
        if t.hq_prev is None:
            self.head = t.hq_next
        else:
            t.hq_prev.hq_next = t.hq_next
        if t.hq_next is None:
            self.tail = t.hq_prev
        else:
            t.hq_next.hq_prev = t.hq_prev
        t.hq_prev = t.hq_next = None
        t.hq = None
        return 0

    cdef int arm(self) except -1:
        # The timer is left running when its connection ends early: when it
        # fires it re-arms for the new head. One timer, never one per connection.
        if self.head is not None and self.timer is None:
            self.timer = self.loop.call_at(self.head.deadline, self._expire)
        return 0

    def _expire(self):
        self.timer = None
        cdef double now = self.loop.time()
        while self.head is not None and self.head.deadline <= now:
            self.head._handshake_failed("timeout")
        self.arm()

    def close(self):
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


cdef int _udigits(char* out, unsigned int v) noexcept nogil:
    """v in decimal at out; the number of digits."""
    cdef char tmp[10]
    cdef int n = 0, i
    while True:
        tmp[n] = <char>(48 + v % 10)
        n += 1
        v //= 10
        if v == 0:
            break
    for i in range(n):
        out[i] = tmp[n - 1 - i]
    return n


cdef int _ipv4_text(char* out, const unsigned char* a) noexcept nogil:
    """a.b.c.d without inet_ntop's sprintf: the text of every client's
    address is made once per connection (X-Forwarded-For, the access log)."""
    cdef int n = 0, i
    for i in range(4):
        if i:
            out[n] = 46                 # '.'
            n += 1
        n += _udigits(out + n, a[i])
    return n


cdef class Receiver:
    cdef int buffer_received(self, const char* p, Py_ssize_t n) except -1:
        self.data_received(PyBytes_FromStringAndSize(p, n))
        return 0

    cdef int made(self, object transport) except -1:
        self.connection_made(transport)
        return 0

    cdef int lost(self, object exc) except -1:
        self.connection_lost(exc)
        return 0


cdef class ProtocolFactory:
    cdef object make(self):
        raise NotImplementedError

    def __call__(self):
        return self.make()


cdef inline object _make(object factory):
    if isinstance(factory, ProtocolFactory):
        return (<ProtocolFactory>factory).make()
    return factory()


cdef inline int _made(object protocol, object transport) except -1:
    if isinstance(protocol, Receiver):
        (<Receiver>protocol).made(transport)
    else:
        protocol.connection_made(transport)
    return 0


cdef inline int _lost(object protocol, object exc) except -1:
    if isinstance(protocol, Receiver):
        (<Receiver>protocol).lost(exc)
    else:
        protocol.connection_lost(exc)
    return 0


cdef inline int _hand_over(object protocol, Py_ssize_t n) except -1:
    """The n bytes read into _rbuf: in place to a Receiver, as bytes to any
    other protocol's data_received."""
    if isinstance(protocol, Receiver):
        (<Receiver>protocol).buffer_received(_rbuf, n)
    else:
        protocol.data_received(PyBytes_FromStringAndSize(_rbuf, n))
    return 0


cdef class Poller:
    """One epoll set per event loop for every socket lbcore owns, itself
    watched by the loop (add_reader on the epoll descriptor): registering a
    connection is one epoll_ctl, where the loop's add_reader costs a Python
    check of its transport table (a WeakValueDictionary lookup that raises
    KeyError), a libuv poll handle and, in libuv, an epoll_ctl probe pair,
    an ioctl and an io_uring submission, with three deletes at close; and
    one loop callback serves every ready socket of an iteration, dispatched
    here in C. Level-triggered, as the loop's readers are."""

    def __cinit__(self, loop):
        self.loop = loop
        self.table = []
        self.lost = []
        self.epfd = epoll_create1(EPOLL_CLOEXEC)
        if self.epfd < 0:
            raise OSError(errno, "epoll_create1")
        loop.add_reader(self.epfd, self._ready)

    def __dealloc__(self):
        if self.epfd >= 0:
            c_close(self.epfd)

    cdef int update(self, SocketTransport t) except -1:
        """Watch t for what it wants now (reader_on, writer_on)."""
        cdef epoll_event ev
        cdef unsigned int want = (EPOLLIN if t.reader_on else 0) | (
            EPOLLOUT if t.writer_on else 0)
        cdef int fd = t.fd
        if want == t.polled or fd < 0:
            return 0
        ev.events = want
        ev.data.fd = fd
        if t.polled == 0:
            if epoll_ctl(self.epfd, EPOLL_CTL_ADD, fd, &ev) != 0:
                raise OSError(errno, "epoll_ctl ADD")
            while len(self.table) <= fd:
                self.table.extend([None] * (fd + 64 - len(self.table)))
            self.table[fd] = t
        elif want == 0:
            epoll_ctl(self.epfd, EPOLL_CTL_DEL, fd, &ev)
            self.table[fd] = None
        elif epoll_ctl(self.epfd, EPOLL_CTL_MOD, fd, &ev) != 0:
            raise OSError(errno, "epoll_ctl MOD")
        t.polled = want
        return 0

    def _ready(self):
        cdef epoll_event evs[POLL_BATCH]
        cdef int n = epoll_wait(self.epfd, evs, POLL_BATCH, 0)
        cdef int i, fd
        cdef unsigned int e
        cdef object entry
        cdef SocketTransport t
        self.dispatching = True
        batch_begin()
        try:
            for i in range(n):
                fd = evs[i].data.fd
                e = evs[i].events
                # By fd, not a pointer kept in the event: a socket an earlier event
                # of this batch closed is gone from the table (and never freed
                # under us: the table holds it while it is watched).
                entry = self.table[fd] if fd < len(self.table) else None
                if entry is None:
                    continue
                t = <SocketTransport>entry
                stamp()
                if e & (EPOLLIN | EPOLLHUP | EPOLLERR) and t.reader_on:
                    t._event(True)
                if e & (EPOLLOUT | EPOLLHUP | EPOLLERR) and t.writer_on and t.fd == fd:
                    t._event(False)
        finally:
            try:
                self.run_lost()
            finally:
                batch_end()

    cdef int defer_lost(self, object protocol, object exc) except -1:
        """connection_lost is never called inside the close that causes it
        (asyncio's rule: the protocol is not re-entered): it is owed, and
        paid when the batch of events being dispatched ends, or by one
        call_soon for every close made outside a batch (a timer, a future's
        callback). One loop callback per connection cost about 2,500
        instructions (the Handle, the loop's idle handle, the context)."""
        self.lost.append(protocol)
        self.lost.append(exc)
        if not self.dispatching and not self.flush_armed:
            self.flush_armed = True
            self.loop.call_soon(self._run_lost_soon)
        return 0

    def _run_lost_soon(self):
        self.flush_armed = False
        if not self.dispatching:
            self.run_lost()

    cdef int run_lost(self) except -1:
        cdef list owed
        cdef Py_ssize_t i
        self.dispatching = True
        try:
            while self.lost:
                owed, self.lost = self.lost, []
                for i in range(0, len(owed), 2):
                    try:
                        _lost(owed[i], owed[i + 1])
                    except Exception as err:     # one protocol's bug stops no other
                        self.loop.call_exception_handler({
                            "message": "lbcore transport: connection_lost failed",
                            "exception": err, "protocol": owed[i]})
        finally:
            self.dispatching = False
        return 0


cdef dict _pollers = {}


cdef Poller poller_for(object loop):
    """The loop's Poller (a worker has one loop; tests may run several)."""
    cdef Poller p = _pollers.get(loop)
    if p is None:
        p = _pollers[loop] = Poller(loop)
    return p


cdef class SocketTransport:
    def __cinit__(self):
        self.fd = -1

    def __dealloc__(self):
        if self.fd >= 0:
            c_close(self.fd)
            self.fd = -1

    # ---- the peer -----------------------------------------------------------------

    cdef int set_peer(self, const void* sa) except -1:
        cdef const sockaddr* s = <const sockaddr*>sa
        if s.sa_family == AF_INET:
            self.peer_family = AF_INET
            self.peer_port_h = ntohs((<const sockaddr_in*>sa).sin_port)
            memcpy(self.peer_addr, &(<const sockaddr_in*>sa).sin_addr, 4)
        elif s.sa_family == AF_INET6:
            self.peer_family = AF_INET6
            self.peer_port_h = ntohs((<const sockaddr_in6*>sa).sin6_port)
            memcpy(self.peer_addr, &(<const sockaddr_in6*>sa).sin6_addr, 16)
        return 0

    cdef bytes peer_ip(self):
        cdef char text[64]
        cdef const unsigned char* a = self.peer_addr
        cdef int i
        if self.peer_family == AF_INET:
            return PyBytes_FromStringAndSize(text, _ipv4_text(text, a))
        if self.peer_family == AF_INET6:
            for i in range(10):
                if a[i]:
                    break
            else:
                if a[10] == 0xff and a[11] == 0xff:     # ::ffff:a.b.c.d, a dual-stack IPv4 client
                    return PyBytes_FromStringAndSize(text, _ipv4_text(text, a + 12))
            inet_ntop(AF_INET6, a, text, sizeof(text))
            return <bytes>text
        return b"0.0.0.0"

    cdef bytes peer_port(self):
        cdef char text[8]
        return PyBytes_FromStringAndSize(text, _udigits(text, self.peer_port_h))

    # ---- readiness ----------------------------------------------------------------

    cdef int _reader(self, bint on) except -1:
        if on != self.reader_on:
            self.reader_on = on
            if self.poller is None:
                self.poller = poller_for(self.loop)
            self.poller.update(self)
        return 0

    cdef int _writer(self, bint on) except -1:
        if on != self.writer_on:
            self.writer_on = on
            if self.poller is None:
                self.poller = poller_for(self.loop)
            self.poller.update(self)
        return 0

    cdef int _event(self, bint readable) except -1:
        """A readiness event from the Poller (or a call_soon): a failure ends
        this connection and is reported, never raised into the loop."""
        try:
            if readable:
                self._readable()
            else:
                self._writable()
        except BaseException as exc:
            self._fatal(exc)
            self.loop.call_exception_handler({
                "message": "lbcore transport: error while " + ("reading" if readable
                                                               else "writing"),
                "exception": exc, "transport": self, "protocol": self.protocol})
        return 0

    def _on_readable(self):
        self._event(True)

    def _on_writable(self):
        self._event(False)

    cdef int _readable(self) except -1:
        if self.state == ST_OPEN or self.state == ST_CLOSING:
            self._read()
        return 0

    cdef int _writable(self) except -1:
        if self.wqueue:
            self._flush()
        else:
            self._writer(False)
        return 0

    # ---- reading ------------------------------------------------------------------

    cdef int _read(self) except -1:
        raise NotImplementedError

    cdef int _deliver(self, Py_ssize_t n) except -1:
        """What was read, to the protocol. Over TLS, the writes it makes are
        sent together after it returns (one SSL_write, so as few records as
        the data allows); plain TCP sends each write at once."""
        if not self.batch_writes:
            _hand_over(self.protocol, n)
            return 0
        self.batching = True
        try:
            _hand_over(self.protocol, n)
        finally:
            self.batching = False
        if self.wqueue and not self.writer_on and (self.state == ST_OPEN
                                                   or self.state == ST_CLOSING):
            self._flush()
        return 0

    cdef int _got_eof(self) except -1:
        """The peer's FIN (or close_notify): eof_received decides, as asyncio
        lets it: a true answer keeps our side open (half-close) until the
        protocol closes."""
        self.eof_got = True
        self._reader(False)
        if self.state == ST_OPEN:
            keep = self.protocol.eof_received()
            if not keep and self.state == ST_OPEN:
                self.close()
        return 0

    # ---- writing ------------------------------------------------------------------

    cdef Py_ssize_t _send(self, const char* p, Py_ssize_t n) except -2:
        raise NotImplementedError

    cdef int _push(self) except -2:
        raise NotImplementedError

    cpdef write(self, object data):
        if type(data) is bytes:
            self._write(data, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
        else:
            self._write(data, NULL, 0)

    cdef int write_at(self, const char* p, Py_ssize_t n) except -1:
        """write() of n bytes at p, which the caller may reuse when this
        returns: sent from where they lie when nothing waits, and only what
        the socket does not take now (or, inside a batch, all) is copied."""
        self._write(None, p, n)
        return 0

    cdef int _write(self, object data, const char* p, Py_ssize_t n) except -1:
        """data (bytes, then p and n are its bytes), or None and the bytes at p."""
        cdef Py_ssize_t done = 0, sent = 0
        if self.state != ST_OPEN or self.eof_pending or self.eof_sent:
            return 0
        if p != NULL and not self.batching and not self.wqueue and not self.writer_on:
            # The common case: nothing queued, straight to the socket.
            while done < n:
                sent = self._send(p + done, n - done)
                if sent <= 0:
                    break
                done += sent
            if done == n:
                return 0
            if sent < 0:
                self._fatal(ConnectionResetError(self.err, "lost while writing"))
                return 0
            if data is None:
                data = PyBytes_FromStringAndSize(p + done, n - done)
            elif done:
                data = data[done:]
            self._queue(data)
            self._writer(True)                  # the socket is full: wait for it
        else:
            self._queue(data if data is not None else PyBytes_FromStringAndSize(p, n))
            if not self.batching and not self.writer_on:
                self._flush()
        if self.wsize > WRITE_HIGH and not self.write_paused and self.state == ST_OPEN:
            self.write_paused = True
            self.protocol.pause_writing()
        return 0

    def writelines(self, list_of_data):
        for data in list_of_data:
            self.write(data)

    cdef int _queue(self, object data) except -1:
        if type(data) is not bytes:
            data = bytes(data)                  # the caller may change its buffer
        if PyBytes_GET_SIZE(data):
            if self.wqueue is None:
                self.wqueue = []
            self.wqueue.append(data)
            self.wsize += PyBytes_GET_SIZE(data)
        return 0

    cdef int _flush(self) except -1:
        """Send what is queued; at a full socket, the rest waits for the
        writable event. Then the water marks, a pending write_eof, a pending
        close."""
        cdef int r = self._push() if self.wqueue else 1
        if r < 0:
            self._fatal(ConnectionResetError(self.err, "lost while writing"))
            return 0
        if r == 0:
            self._writer(True)
            return 0
        if not self.read_wants_write:
            self._writer(False)
        if self.write_paused and self.wsize <= WRITE_LOW and self.state == ST_OPEN:
            self.write_paused = False
            self.protocol.resume_writing()
        if self.eof_pending and not self.wqueue and self.fd >= 0:
            self.eof_pending = False
            self.eof_sent = True
            shutdown(self.fd, SHUT_WR)
        if self.state == ST_CLOSING and not self.wqueue:
            self._finish(None)
        return 0

    def get_write_buffer_size(self):
        return self.wsize

    def get_write_buffer_limits(self):
        return (WRITE_LOW, WRITE_HIGH)

    def can_write_eof(self):
        return True

    def write_eof(self):
        """Our side ends (FIN) once what is queued has left; reading goes on."""
        if self.state != ST_OPEN or self.eof_sent or self.eof_pending:
            return
        if self.wqueue:
            self.eof_pending = True
            return
        self.eof_sent = True
        shutdown(self.fd, SHUT_WR)

    # ---- the rest of asyncio's transport ------------------------------------------

    cpdef pause_reading(self):
        if not self.read_paused:
            self.read_paused = True
            if self.state == ST_OPEN:
                self._reader(False)

    cpdef resume_reading(self):
        if self.read_paused:
            self.read_paused = False
            if self.state == ST_OPEN and not self.eof_got:
                self._reader(True)

    def is_reading(self):
        return self.state == ST_OPEN and not self.read_paused and not self.eof_got

    def is_closing(self):
        return self.state >= ST_CLOSING

    def set_protocol(self, protocol):
        self.protocol = protocol

    def get_protocol(self):
        return self.protocol

    def fileno(self):
        """The socket's descriptor (-1 once closed): still the transport's."""
        return self.fd

    cpdef close(self):
        """Send what is queued, then close."""
        if self.state >= ST_CLOSING:
            return
        if self.state < ST_OPEN:
            self.abort()
            return
        self._reader(False)
        if self.wqueue:
            self.state = ST_CLOSING
            self.close_timer = self.loop.call_later(CLOSE_FLUSH_TIMEOUT, self._time_out)
            return
        self._finish(None)

    cpdef abort(self):
        if self.state != ST_CLOSED:
            self._abort()

    def _time_out(self):
        """close_timer: the queued bytes did not leave in time (or the plain
        HTTP linger ended)."""
        self.abort()

    cdef int _abort(self) except -1:
        self._finish(None)
        return 0

    cdef int _fatal(self, object exc) except -1:
        if self.state != ST_CLOSED:
            self._finish(exc)
        return 0

    cdef int _release(self, int prev) except -1:
        return 0

    cdef int _finish(self, object exc) except -1:
        """The end, whatever the path: the subclass's own end (close_notify),
        the unread bytes dropped (closing over them would reset the connection
        under the answer just sent), the fd closed now, connection_lost soon
        after."""
        cdef int prev = self.state
        if prev == ST_CLOSED:
            return 0
        self.state = ST_CLOSED
        if self.close_timer is not None:
            self.close_timer.cancel()
            self.close_timer = None
        self._reader(False)
        self._writer(False)
        self._release(prev)
        if self.fd >= 0:
            if not self.eof_got:
                for _ in range(4):
                    if recv(self.fd, _drain, READ_BUFFER, MSG_DONTWAIT) <= 0:
                        break
            c_close(self.fd)
            self.fd = -1
        self.wqueue = None
        self.wsize = 0
        if self.protocol is not None and (prev == ST_OPEN or prev == ST_CLOSING):
            if self.poller is None:
                self.poller = poller_for(self.loop)
            self.poller.defer_lost(self.protocol, exc)
        # The protocol holds this transport: drop the way back, so reference
        # counting frees both (no cycle left for the cyclic GC).
        self.protocol = None
        return 0

    def get_extra_info(self, name, default=None):
        cdef sockaddr_storage ss
        cdef socklen_t n = sizeof(ss)
        if name == "peername":
            if self.peer is None and self.peer_family:
                self.peer = _peer_tuple(self)
            return self.peer if self.peer is not None else default
        if name == "sockname":
            if self.sockname is None and self.fd >= 0 and getsockname(
                    self.fd, <sockaddr*>&ss, &n) == 0:
                self.sockname = _addr_tuple(<sockaddr*>&ss)
            return self.sockname if self.sockname is not None else default
        return default

    def __repr__(self):
        return f"<{type(self).__name__} fd={self.fd} state={self.state}>"


cdef object _peer_tuple(SocketTransport t):
    cdef char text[64]
    if t.peer_family == AF_INET:
        return (PyBytes_FromStringAndSize(text, _ipv4_text(text, t.peer_addr)).decode(),
                t.peer_port_h)
    inet_ntop(AF_INET6, t.peer_addr, text, sizeof(text))
    return ((<bytes>text).decode(), t.peer_port_h, 0, 0)


cdef class TcpTransport(SocketTransport):

    cdef int _read(self) except -1:
        cdef ssize_t n = recv(self.fd, _rbuf, READ_BUFFER, 0)
        if n > 0:
            self._deliver(n)
        elif n == 0:
            self._got_eof()
        elif errno != EAGAIN and errno != EINTR:
            self._fatal(ConnectionResetError(errno, "lost while reading"))
        return 0

    cdef Py_ssize_t _send(self, const char* p, Py_ssize_t n) except -2:
        cdef ssize_t r
        while True:
            r = send(self.fd, p, <size_t>n, MSG_NOSIGNAL)
            if r >= 0:
                return r
            if errno == EINTR:
                continue
            if errno == EAGAIN:
                return 0
            self.err = errno
            return -1

    cdef int _push(self) except -2:
        """writev() of the queue's pieces as they are (no join, no copy)."""
        cdef iovec iov[WRITEV_MAX]
        cdef list q = self.wqueue
        cdef Py_ssize_t i, cnt, total, r, sent, size
        cdef bytes b
        while q:
            cnt = len(q) if len(q) < WRITEV_MAX else WRITEV_MAX
            total = 0
            for i in range(cnt):
                b = <bytes>q[i]
                if i == 0:
                    iov[i].iov_base = PyBytes_AS_STRING(b) + self.woff
                    iov[i].iov_len = PyBytes_GET_SIZE(b) - self.woff
                else:
                    iov[i].iov_base = PyBytes_AS_STRING(b)
                    iov[i].iov_len = PyBytes_GET_SIZE(b)
                total += iov[i].iov_len
            r = writev(self.fd, iov, <int>cnt)
            if r < 0:
                if errno == EINTR:
                    continue
                if errno == EAGAIN:
                    return 0
                self.err = errno
                return -1
            self.wsize -= r
            sent = r
            i = 0
            while r > 0:
                size = <Py_ssize_t>iov[i].iov_len
                if r < size:
                    self.woff += r
                    break
                r -= size
                self.woff = 0
                i += 1
            if i:
                del q[:i]
            if sent < total:
                return 0                        # the socket took less: it is full
        return 1

    def writelines(self, list_of_data):
        """One writev() for all of them when nothing is queued."""
        if self.state != ST_OPEN or self.eof_pending or self.eof_sent:
            return
        for data in list_of_data:
            self._queue(data)
        if not self.writer_on:
            self._flush()
        if self.wsize > WRITE_HIGH and not self.write_paused and self.state == ST_OPEN:
            self.write_paused = True
            self.protocol.pause_writing()


cdef TcpTransport tcp_accept(object loop, int fd, const void* sa, object factory,
                             ListenerRuntime lrt):
    cdef TcpTransport t = TcpTransport.__new__(TcpTransport)
    t.loop = loop
    t.fd = fd
    t.lrt = lrt
    t.set_peer(sa)
    t.state = ST_OPEN
    try:
        t.protocol = _make(factory)
        _made(t.protocol, t)
    except BaseException as exc:
        t._fatal(exc)
        loop.call_exception_handler({"message": "lbcore transport: connection_made failed",
                                     "exception": exc, "transport": t})
        return t
    if t.state == ST_OPEN and not t.read_paused and not t.eof_got:
        t._reader(True)
    return t


class _Connecting:
    """A member connection being opened (tcp_connect): the writable event of
    a non-blocking connect(), then the transport."""

    __slots__ = ("loop", "fd", "factory", "fut")

    def __init__(self, loop, fd, factory, fut):
        self.loop, self.fd, self.factory, self.fut = loop, fd, factory, fut

    def done(self, fut=None):
        cdef int fd = self.fd
        cdef int err = 0
        cdef socklen_t n = sizeof(err)
        cdef TcpTransport t
        self.loop.remove_writer(fd)
        if self.fut.done():             # cancelled: its callback closes the socket
            return
        if getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &n) != 0:
            err = errno
        if err:
            c_close(fd)
            self.fut.set_exception(ConnectionRefusedError(err, strerror(err).decode()))
            return
        t = _tcp_open(self.loop, fd)
        try:
            protocol = _make(self.factory)
            t.protocol = protocol
            _made(protocol, t)
        except BaseException as exc:
            t._fatal(exc)
            self.fut.set_exception(exc)
            return
        if t.state == ST_OPEN and not t.read_paused and not t.eof_got:
            t._reader(True)
        self.fut.set_result((t, protocol))


cdef TcpTransport _tcp_open(object loop, int fd):
    cdef TcpTransport t = TcpTransport.__new__(TcpTransport)
    cdef sockaddr_storage ss
    cdef socklen_t n = sizeof(ss)
    t.loop = loop
    t.fd = fd
    if getpeername(fd, <sockaddr*>&ss, &n) == 0:
        t.set_peer(&ss)
    t.state = ST_OPEN
    return t


def tcp_connect(loop, str host, int port, factory):
    """A member connection on the owned transport, as loop.create_connection
    for an IP literal: a future of (TcpTransport, protocol). connect() is
    non-blocking; the protocol is made when the socket is writable without
    SO_ERROR. Cancelling the future before that closes the socket."""
    cdef sockaddr_in6 a6
    cdef sockaddr_in a4
    cdef bytes h = host.encode("ascii")
    cdef int fd, one = 1, r
    cdef socklen_t n
    fut = loop.create_future()
    memset(&a6, 0, sizeof(a6))
    memset(&a4, 0, sizeof(a4))
    if inet_pton(AF_INET, h, &a4.sin_addr) == 1:
        a4.sin_family = AF_INET
        a4.sin_port = htons(<uint16_t>port)
        fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)
        n = sizeof(a4)
    elif inet_pton(AF_INET6, h, &a6.sin6_addr) == 1:
        a6.sin6_family = AF_INET6
        a6.sin6_port = htons(<uint16_t>port)
        fd = socket(AF_INET6, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)
        n = sizeof(a6)
    else:
        raise ValueError(f"tcp_connect needs an IP address, not {host!r}")
    if fd < 0:
        raise OSError(errno, strerror(errno).decode())
    setsockopt(fd, IPPROTO_TCP_, TCP_NODELAY_, &one, sizeof(one))
    r = connect(fd, <sockaddr*>&a4 if n == sizeof(a4) else <sockaddr*>&a6, n)
    if r != 0 and errno != EINPROGRESS:
        r = errno
        c_close(fd)
        fut.set_exception(ConnectionRefusedError(r, strerror(r).decode()))
        return fut
    c = _Connecting(loop, fd, factory, fut)
    loop.add_writer(fd, c.done)
    fut.add_done_callback(_connect_cancelled(c))
    return fut


cdef object _connect_cancelled(object c):
    def cb(fut):
        if fut.cancelled():
            c.loop.remove_writer(c.fd)
            c_close(c.fd)
    return cb


cdef class TlsTransport(SocketTransport):
    def __dealloc__(self):
        if self.ssl != NULL:
            SSL_free(self.ssl)
            self.ssl = NULL

    # ---- readiness, per state -----------------------------------------------------

    cdef int _readable(self) except -1:
        cdef int st = self.state
        if st == ST_OPEN or st == ST_CLOSING:
            if not self.read_wants_write:
                self._read()
        elif st == ST_HANDSHAKE:
            self._handshake()
        elif st == ST_ACCEPTED:
            self._start_ssl()
            self._handshake()
        elif st == ST_LINGER:
            self._linger_read()
        return 0

    cdef int _writable(self) except -1:
        if self.state == ST_HANDSHAKE:
            self._handshake()
            return 0
        if self.read_wants_write:
            self.read_wants_write = False
            if not self.wqueue:
                self._writer(False)
            self._read()
        if self.wqueue:
            self._flush()
        elif not self.read_wants_write:
            self._writer(False)
        return 0

    # ---- handshake ----------------------------------------------------------------

    cdef int _start_ssl(self) except -1:
        """The first byte arrived: only now an SSL object (a connection that
        never sends a ClientHello costs a socket and this object)."""
        cdef void* ssl = SSL_new(self.ctx)
        if ssl == NULL:
            ERR_clear_error()
            raise MemoryError("SSL_new")
        self.ssl = ssl
        if SSL_set_fd(ssl, self.fd) != 1:
            ERR_clear_error()
            raise OSError("SSL_set_fd failed")
        SSL_set_accept_state(ssl)
        # NO_AUTO_CHAIN, as nginx sets it: the chain sent is the certificate
        # file's, never one OpenSSL builds per handshake from the context's
        # verify store (an X509_verify_cert for every full handshake with a
        # certificate file that holds no intermediates).
        SSL_ctrl(ssl, SSL_CTRL_MODE, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE
                 | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_NO_AUTO_CHAIN, NULL)
        # A record's header and body in one read() (two without); what is read
        # past a record stays in OpenSSL's buffer, so SSL_has_pending is checked
        # where the socket alone would not wake us.
        SSL_ctrl(ssl, SSL_CTRL_SET_READ_AHEAD, 1, NULL)
        SSL_set_ex_data(ssl, 0, <void*>self)
        self.state = ST_HANDSHAKE
        return 0

    cdef int _handshake(self) except -1:
        cdef int r = SSL_do_handshake(self.ssl)
        cdef int err
        if r == 1:
            self._writer(False)
            self._handshake_ok()
            return 0
        err = SSL_get_error(self.ssl, r)
        if err == SSL_ERROR_WANT_READ:
            self._writer(False)
            return 0
        if err == SSL_ERROR_WANT_WRITE:
            self._writer(True)
            return 0
        self.ssl_failed = True
        if self.cb_error is not None:
            ERR_clear_error()
            self._handshake_failed("other")
            return 0
        self._handshake_failed(_classify(self.ssl, err))
        return 0

    cdef int _handshake_ok(self) except -1:
        cdef ListenerRuntime lrt = self.lrt
        cdef const unsigned char* alpn = NULL
        cdef unsigned int alpn_len = 0
        cdef void* x509
        cdef int n
        cdef unsigned char* p
        if self.hq is not None:
            self.hq.unlink(self)
        lrt.conns.discard(self)
        add(lrt.counters, lrt.cbase + O_OPENING, -1)
        self.state = ST_OPEN
        self.c_version = SSL_get_version(self.ssl)
        cipher = SSL_get_current_cipher(self.ssl)
        self.c_cipher = SSL_CIPHER_get_name(cipher) if cipher != NULL else NULL
        SSL_get0_alpn_selected(self.ssl, &alpn, &alpn_len)
        if alpn_len == 2 and alpn[0] == 104 and alpn[1] == 50:            # h2
            self.alpn = ALPN_H2
        elif alpn_len == 8 and alpn[0] == 104 and alpn[5] == 49:          # http/1.1
            self.alpn = ALPN_HTTP11
        elif alpn_len:
            self.alpn = ALPN_OTHER
        self.resumed = (SSL_session_reused(self.ssl) if SSL_session_reused != NULL else
                        SSL_ctrl(self.ssl, SSL_CTRL_GET_SESSION_REUSED, 0, NULL)) == 1
        if self.resumed:
            inc(lrt.counters, lrt.cbase + O_TLS_RESUMED)
        if SSL_get_verify_mode(self.ssl) & SSL_VERIFY_PEER:
            x509 = SSL_get1_peer_certificate(self.ssl)
            if x509 != NULL:
                n = i2d_X509(x509, NULL)
                if n > 0:
                    self.peer_cert = PyBytes_FromStringAndSize(NULL, n)
                    p = <unsigned char*>PyBytes_AS_STRING(self.peer_cert)
                    i2d_X509(x509, &p)
                X509_free(x509)
        self.protocol = _make(self.factory)
        self.factory = None
        _made(self.protocol, self)
        # Application data that came with the client's last handshake flight
        # may already sit in OpenSSL's buffer: the socket won't say so.
        if self.state == ST_OPEN and not self.read_paused and SSL_has_pending(self.ssl):
            self._read()
        return 0

    cdef object sni(self):
        """The server name the client sent (str), or None: decoded only for
        those who ask (the logs, the SNI guard, the TLS headers)."""
        cdef const char* name
        if not self.sni_known:
            self.sni_known = True
            if self.ssl != NULL:
                name = SSL_get_servername(self.ssl, TLSEXT_NAMETYPE_host_name)
                if name != NULL:
                    self.sni_text = (<bytes>name).decode("ascii", "replace")
        return self.sni_text

    @property
    def lbcore_sni(self):
        return self.sni()

    cdef int _handshake_failed(self, str reason) except -1:
        cdef ListenerRuntime lrt = self.lrt
        cdef object cell = _FAIL_CELL.get(reason)
        if self.hq is not None:
            self.hq.unlink(self)
        lrt.conns.discard(self)
        add(lrt.counters, lrt.cbase + O_OPENING, -1)
        if cell is not None:
            inc(lrt.counters, lrt.cbase + O_TLS_FAIL + <Py_ssize_t>cell)
        if reason == "plain_http":
            self._plain_http()
        else:
            self._finish(None)
        return 0

    cdef int _plain_http(self) except -1:
        """Plain HTTP on the TLS port (OpenSSL saw "GET " where a record
        should be): 400 in plain HTTP, as nginx answers (spec 7.3), then read
        and drop the rest for a moment so that closing does not reset the
        connection before the client read the answer."""
        SSL_free(self.ssl)
        self.ssl = NULL
        self.state = ST_LINGER
        self._linger_read()
        if self.fd < 0:
            return 0
        c_write(self.fd, PyBytes_AS_STRING(PLAIN_HTTP_400), PyBytes_GET_SIZE(PLAIN_HTTP_400))
        # A 400 of lbcore's own, as the HTTP/1.1 framing's are (besides the
        # handshake failure reason plain_http counted above).
        count_reason(self.lrt.counters, self.lrt.cbase, self.lrt.pbase_local, 400,
                     G_PLAIN_HTTP, 0.0)
        shutdown(self.fd, SHUT_WR)
        self.close_timer = self.loop.call_later(PLAIN_HTTP_LINGER, self._time_out)
        return 0

    def _linger_read(self):
        cdef ssize_t n
        while self.fd >= 0:
            n = recv(self.fd, _drain, READ_BUFFER, MSG_DONTWAIT)
            if n > 0:
                continue
            if n < 0 and (errno == EAGAIN or errno == EINTR):
                return
            self._finish(None)          # the client's FIN (or an error): done
            return

    def drain(self):
        """A draining worker lets handshakes in progress finish (the handshake
        time-out bounds them): the protocol then answers one request with
        Connection: close."""

    # ---- the byte primitives over OpenSSL -----------------------------------------

    cdef int _read(self) except -1:
        cdef Py_ssize_t got = 0
        cdef int n = 0, err = 0
        cdef bint drained = False
        while READ_BUFFER - got >= 16384:
            n = SSL_read(self.ssl, _rbuf + got, <int>(READ_BUFFER - got))
            if n <= 0:
                break
            got += n
            if n < 16384 and not SSL_has_pending(self.ssl):
                # A short record and nothing left in OpenSSL's buffer: read
                # ahead took all the socket had, so the next SSL_read would
                # only hit EAGAIN (a read() and OpenSSL's error-queue marks).
                # The poll is level-triggered: bytes that come later wake us.
                drained = True
                break
        if n <= 0:
            err = SSL_get_error(self.ssl, n)
        if got:
            self._deliver(got)
            if self.state != ST_OPEN and self.state != ST_CLOSING:
                return 0
        if drained:
            return 0
        if n > 0:
            # The buffer filled: more may wait in OpenSSL (read ahead) or the socket.
            if not self.read_paused and SSL_has_pending(self.ssl):
                self.loop.call_soon(self._on_readable)
            return 0
        if err == SSL_ERROR_WANT_READ:
            return 0
        if err == SSL_ERROR_WANT_WRITE:         # a key update's answer is stuck
            self.read_wants_write = True
            self._writer(True)
            return 0
        if err == SSL_ERROR_ZERO_RETURN or (err == SSL_ERROR_SYSCALL and errno == 0) or (
                err == SSL_ERROR_SSL and _ssl_reason(ERR_peek_last_error())
                == "UNEXPECTED_EOF_WHILE_READING"):
            # close_notify, or the TCP FIN most clients close with.
            ERR_clear_error()
            if err != SSL_ERROR_ZERO_RETURN:
                self.ssl_failed = True
            self._got_eof()
            return 0
        ERR_clear_error()
        self.ssl_failed = True
        self._fatal(ConnectionResetError(errno, "TLS connection lost") if err == SSL_ERROR_SYSCALL
                    else ConnectionAbortedError("TLS error on a client connection"))
        return 0

    cdef Py_ssize_t _send(self, const char* p, Py_ssize_t n) except -2:
        cdef int r = SSL_write(self.ssl, <void*>p, <int>(n if n < 0x40000000 else 0x40000000))
        cdef int err
        if r > 0:
            return r
        err = SSL_get_error(self.ssl, r)
        if err == SSL_ERROR_WANT_WRITE or err == SSL_ERROR_WANT_READ:
            return 0
        self.err = errno
        ERR_clear_error()
        self.ssl_failed = True
        return -1

    cdef int _push(self) except -2:
        """SSL_write what is queued, small pieces joined first (one record
        for them, not one each)."""
        cdef bytes data
        cdef const char* p
        cdef Py_ssize_t left, n
        while self.wqueue:
            if len(self.wqueue) > 1:
                first = self.wqueue[0]
                if self.woff:
                    self.wqueue[0] = first[self.woff:]
                    self.woff = 0
                self.wqueue = [b"".join(self.wqueue)]
            data = self.wqueue[0]
            p = PyBytes_AS_STRING(data) + self.woff
            left = PyBytes_GET_SIZE(data) - self.woff
            while left > 0:
                n = self._send(p, left)
                if n <= 0:
                    return <int>n
                p += n
                left -= n
                self.woff += n
                self.wsize -= n
            self.wqueue.pop(0)
            self.woff = 0
        return 1

    def can_write_eof(self):
        return False

    def write_eof(self):
        raise NotImplementedError("no half-close over TLS (close_notify ends both ways)")

    cpdef resume_reading(self):
        if self.read_paused:
            self.read_paused = False
            if self.state == ST_OPEN and not self.eof_got:
                self._reader(True)
                if self.ssl != NULL and SSL_has_pending(self.ssl):
                    self.loop.call_soon(self._on_readable)

    cdef int _abort(self) except -1:
        if self.state < ST_OPEN:
            self._handshake_failed("closed")
            return 0
        self.ssl_failed = True          # no close_notify: a reset, as asyncio's abort
        self._finish(None)
        return 0

    cdef int _fatal(self, object exc) except -1:
        if self.state == ST_CLOSED:
            return 0
        self.ssl_failed = True
        if self.state < ST_OPEN:
            self._handshake_failed("other")
            return 0
        self._finish(exc)
        return 0

    cdef int _release(self, int prev) except -1:
        """close_notify when the session is sound; the SSL object freed now
        (not when the last reference goes)."""
        if self.ssl != NULL:
            if not self.ssl_failed and prev >= ST_OPEN:
                SSL_shutdown(self.ssl)
            ERR_clear_error()
            SSL_free(self.ssl)
            self.ssl = NULL
        self.factory = None
        return 0

    def get_extra_info(self, name, default=None):
        if name == "ssl_object":
            return self if self.state >= ST_OPEN else default
        if name == "sslcontext":
            return None
        return SocketTransport.get_extra_info(self, name, default)

    # ---- what Python's SSLObject would say (the handshake's facts) ---------------

    def version(self):
        return (<bytes>self.c_version).decode() if self.c_version != NULL else None

    cdef int tls_version(self):
        cdef const char* v = self.c_version
        if v == NULL or strncmp(v, "TLSv1", 5) != 0:
            return -1
        if v[5] == 0:
            return 0
        if v[5] == 46 and v[6] >= 49 and v[6] <= 51 and v[7] == 0:    # ".1" .. ".3"
            return v[6] - 48
        return -1

    cdef bint alpn_h2(self):
        return self.alpn == ALPN_H2

    def cipher(self):
        if self.c_cipher == NULL:
            return None
        return ((<bytes>self.c_cipher).decode(), self.version(), None)

    def selected_alpn_protocol(self):
        if self.alpn == ALPN_H2:
            return "h2"
        if self.alpn == ALPN_HTTP11:
            return "http/1.1"
        return None

    @property
    def session_reused(self):
        return self.resumed

    def getpeercert(self, binary_form=False):
        if not binary_form:
            raise ValueError("lbcore's TLS transport gives the client certificate in DER only")
        return self.peer_cert


cdef TlsTransport tls_accept(object loop, int fd, const void* sa, object factory,
                             ListenerRuntime lrt, HandshakeQueue hq, void* ctx):
    """ctx: the listener's SSL_CTX (ssl_ctx_ptr of lrt.ssl_ctx, which keeps it
    alive), taken once by the Acceptor, not per connection."""
    cdef TlsTransport t = TlsTransport.__new__(TlsTransport)
    t.loop = loop
    t.fd = fd
    t.set_peer(sa)
    t.factory = factory
    t.lrt = lrt
    t.ctx = ctx
    t.batch_writes = True
    add(lrt.counters, lrt.cbase + O_OPENING, 1)
    lrt.conns.add(t)
    hq.push(t)
    t._reader(True)
    return t


def live_read_buffer_size():
    """The one read buffer every connection of this worker shares."""
    return READ_BUFFER


def peer_text_of(bytes packed, int port):
    """(peer_ip(), peer_port()) of a connection from this address (4 or 16
    bytes, network order): what X-Forwarded-For and the access log get
    (tests)."""
    cdef sockaddr_in a4
    cdef sockaddr_in6 a6
    cdef TcpTransport t = TcpTransport.__new__(TcpTransport)
    memset(&a4, 0, sizeof(a4))
    memset(&a6, 0, sizeof(a6))
    if len(packed) == 4:
        a4.sin_family = AF_INET
        a4.sin_port = htons(<uint16_t>port)
        memcpy(&a4.sin_addr, <const char*>packed, 4)
        t.set_peer(&a4)
    elif len(packed) == 16:
        a6.sin6_family = AF_INET6
        a6.sin6_port = htons(<uint16_t>port)
        memcpy(&a6.sin6_addr, <const char*>packed, 16)
        t.set_peer(&a6)
    else:
        raise ValueError("an address is 4 or 16 bytes")
    return t.peer_ip(), t.peer_port(), t.get_extra_info("peername")
