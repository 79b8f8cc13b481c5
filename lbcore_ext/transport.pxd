from lbcore_ext.runtime cimport ListenerRuntime


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


cdef class TlsTransport:
    """One TLS client connection on a socket lbcore owns (OpenSSL on the fd)."""
    cdef void* ssl                      # SSL*, NULL before the first byte and once closed
    cdef void* ctx                      # SSL_CTX* the SSL is made from
    cdef int fd
    cdef int state                      # ST_*
    cdef object loop
    cdef object protocol                # made when the handshake ends
    cdef object factory
    cdef ListenerRuntime lrt
    cdef HandshakeQueue hq
    cdef TlsTransport hq_prev
    cdef TlsTransport hq_next
    cdef double deadline                # end of the handshake time
    cdef object peer                    # (ip, port) from accept
    cdef object sockname
    cdef bint reader_on
    cdef bint writer_on
    cdef bint read_paused               # the protocol asked
    cdef bint read_wants_write          # SSL_read needs the socket writable
    cdef bint write_paused              # we told the protocol to pause_writing
    cdef bint batching                  # inside data_received: writes wait for its end
    cdef bint ssl_failed                # a fatal TLS error: no close_notify
    cdef list wqueue                    # plaintext not yet taken by SSL_write
    cdef Py_ssize_t woff                # bytes of wqueue[0] already taken
    cdef Py_ssize_t wsize               # plaintext bytes queued
    cdef object close_timer
    cdef object cb_error                # an exception in the SNI callback
    # What the handshake settled, kept after the SSL object is freed.
    cdef const char* c_version          # static strings of libssl
    cdef const char* c_cipher
    cdef int alpn                       # ALPN_*
    cdef bint resumed
    cdef public object lbcore_sni       # the name the client sent, or None
    cdef bytes peer_cert                # DER of the client certificate (mutual TLS)

    cdef int _start_ssl(self) except -1
    cdef int _handshake(self) except -1
    cdef int _handshake_ok(self) except -1
    cdef int _handshake_failed(self, str reason) except -1
    cdef int _plain_http(self) except -1
    cdef int _read(self) except -1
    cdef int _deliver(self, Py_ssize_t n) except -1
    cdef int _flush(self) except -1
    cdef int _queue(self, object data) except -1
    cdef int _reader(self, bint on) except -1
    cdef int _writer(self, bint on) except -1
    cdef int _finish(self, object exc) except -1
    cdef int _fatal(self, object exc) except -1
