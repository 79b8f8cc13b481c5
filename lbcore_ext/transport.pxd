from lbcore_ext.runtime cimport ListenerRuntime, TimerOwner


cdef class HandshakeQueue:
    """Connections still in their TLS handshake on one listener, oldest first:
    one loop timer for all of them (a handshake time-out is the same for every
    connection of a listener, so accept order is deadline order)."""
    cdef object loop
    cdef double timeout
    cdef TlsTransport head
    cdef TlsTransport tail
    cdef object timer                   # loop TimerHandle for head's deadline, or None
    cdef int push(self, TlsTransport t) except -1
    cdef int unlink(self, TlsTransport t) except -1
    cdef int arm(self) except -1


cdef class Receiver(TimerOwner):
    """A protocol that takes what lbcore's transports read in place, as a
    pointer into the worker's shared read buffer, valid until it returns
    (no bytes object, no Python call). The default makes the bytes and calls
    data_received. made() and lost() are connection_made and connection_lost
    called from C (the defaults call those methods)."""
    cdef int buffer_received(self, const char* p, Py_ssize_t n) except -1
    cdef int made(self, object transport) except -1
    cdef int lost(self, object exc) except -1


cdef class ProtocolFactory:
    """A listener's protocol factory the transports call from C (make), with
    no functools.partial, type call or __init__ argument parsing; calling it
    from Python makes one too."""
    cdef object make(self)


cdef class Poller:
    cdef object loop
    cdef int epfd
    cdef list table                     # fd -> the SocketTransport watched, or None
    # connection_lost calls owed: protocol, exc, protocol, exc... (no tuple
    # per call), made after the batch of events that closed them (or by one
    # call_soon outside a batch).
    cdef list lost
    cdef bint dispatching               # inside _ready (or running the owed calls)
    cdef bint flush_armed               # a call_soon of _run_lost is pending
    cdef int update(self, SocketTransport t) except -1
    cdef int defer_lost(self, object protocol, object exc) except -1
    cdef int run_lost(self) except -1


cdef Poller poller_for(object loop)


cdef class SocketTransport:
    """A connection on a socket lbcore owns, driven by the loop's readiness
    events (add_reader/add_writer): the asyncio transport surface the
    protocols use, the write queue with its water marks, half-close and the
    close/abort logic. Subclasses supply the byte primitives (_read, _send,
    _push) and, for TLS, the states before ST_OPEN."""
    cdef int fd
    cdef int state                      # ST_*
    cdef object loop
    cdef object protocol
    cdef ListenerRuntime lrt            # None on member connections
    # The peer as accept() gave it, in binary: text is made only when asked.
    cdef int peer_family                # AF_INET / AF_INET6; 0: unknown
    cdef unsigned short peer_port_h     # host byte order
    cdef unsigned char peer_addr[16]    # 4 bytes for AF_INET, 16 for AF_INET6
    cdef object peer                    # the peername tuple, made when asked
    cdef object sockname
    cdef bint reader_on
    cdef bint writer_on
    cdef Poller poller                  # the loop's, from the first _reader/_writer
    cdef unsigned int polled            # the epoll events it is registered for; 0: none
    cdef bint read_paused               # the protocol asked
    cdef bint read_wants_write          # (TLS) the read side needs the socket writable
    cdef bint write_paused              # we told the protocol to pause_writing
    cdef bint batch_writes              # hold writes made inside data_received (TLS)
    cdef bint batching                  # inside data_received: writes wait for its end
    cdef bint eof_got                   # the peer ended its side
    cdef bint eof_pending               # write_eof asked with bytes still queued
    cdef bint eof_sent                  # our side shut (SHUT_WR)
    cdef int err                        # errno of the failed send, for the exception
    cdef list wqueue                    # bytes not yet taken by the socket; None: none yet
    cdef Py_ssize_t woff                # bytes of wqueue[0] already taken
    cdef Py_ssize_t wsize               # bytes queued
    cdef object close_timer

    cdef int set_peer(self, const void* sa) except -1
    cdef bytes peer_ip(self)            # b"192.0.2.1" (an IPv4-mapped IPv6 peer as IPv4)
    cdef bytes peer_port(self)          # b"50000"
    cdef int _reader(self, bint on) except -1
    cdef int _writer(self, bint on) except -1
    cdef int _event(self, bint readable) except -1
    # Readiness, per state; the base knows ST_OPEN and ST_CLOSING only.
    cdef int _readable(self) except -1
    cdef int _writable(self) except -1
    # The byte primitives.
    cdef int _read(self) except -1
    # Bytes the socket took from p (> 0), 0 when it would block, -1 on an
    # error (self.err set): nothing raised, the caller ends the connection.
    cdef Py_ssize_t _send(self, const char* p, Py_ssize_t n) except -2
    # Send from wqueue: 1 when all of it left, 0 when the socket is full, -1 on an error.
    cdef int _push(self) except -2
    cdef int _deliver(self, Py_ssize_t n) except -1
    cdef int _got_eof(self) except -1
    cdef int _flush(self) except -1
    cdef int _queue(self, object data) except -1
    cdef int _abort(self) except -1
    cdef int _release(self, int prev) except -1   # the subclass's end (close_notify, SSL_free)
    cdef int _finish(self, object exc) except -1
    cdef int _fatal(self, object exc) except -1
    # The asyncio surface, also callable from C by the protocols.
    cpdef write(self, object data)
    cdef int write_at(self, const char* p, Py_ssize_t n) except -1
    cdef int _write(self, object data, const char* p, Py_ssize_t n) except -1
    cpdef close(self)
    cpdef abort(self)
    cpdef pause_reading(self)
    cpdef resume_reading(self)


cdef class TcpTransport(SocketTransport):
    """Plain TCP: recv() into the worker's shared read buffer, send()/writev()
    straight to the socket."""
    pass


cdef class TlsTransport(SocketTransport):
    """One TLS client connection on a socket lbcore owns (OpenSSL on the fd)."""
    cdef void* ssl                      # SSL*, NULL before the first byte and once closed
    cdef void* ctx                      # SSL_CTX* the SSL is made from
    cdef object factory
    cdef HandshakeQueue hq
    cdef TlsTransport hq_prev
    cdef TlsTransport hq_next
    cdef double deadline                # end of the handshake time
    cdef bint ssl_failed                # a fatal TLS error: no close_notify
    cdef object cb_error                # an exception in the SNI callback
    # What the handshake settled, kept after the SSL object is freed.
    cdef const char* c_version          # static strings of libssl
    cdef const char* c_cipher
    cdef int alpn                       # ALPN_*
    cdef bint resumed
    # The name the client sent, as str (None: none), made when first asked
    # (sni(); lbcore_sni from Python) or by the SNI callback, which needs it.
    cdef object sni_text
    cdef bint sni_known
    cdef object sni(self)
    cdef bytes peer_cert                # DER of the client certificate (mutual TLS)

    cdef int _start_ssl(self) except -1
    cdef int _handshake(self) except -1
    cdef int _handshake_ok(self) except -1
    cdef int _handshake_failed(self, str reason) except -1
    cdef int _plain_http(self) except -1
    cdef int tls_version(self)          # 0..3 for TLSv1..TLSv1.3, -1: none (yet)
    cdef bint alpn_h2(self)             # ALPN settled on h2


# Take over an accepted, non-blocking socket (its fd is the transport's to
# close) whose peer address is `sa` (a struct sockaddr from accept()).
# Plain: the protocol is made and connected at once.
cdef TcpTransport tcp_accept(object loop, int fd, const void* sa, object factory,
                             ListenerRuntime lrt)
# TLS: counted in CONN_OPENING (and lrt.conns, so a drain waits for it) until
# its handshake ends either way; the protocol is made only then.
cdef TlsTransport tls_accept(object loop, int fd, const void* sa, object factory,
                             ListenerRuntime lrt, HandshakeQueue hq, void* ctx)
