# cython: language_level=3
"""Every listener accepts here: the peer is checked against the IP group
before any byte is read or any TLS byte written (spec 4), the listener's
limits hold across all workers (spec 8: max_connections,
max_new_connections_per_second), and the connection goes to lbcore's own
transport (lbcore_ext/transport.pyx): TLS, which counts a failed handshake by
reason, or plain TCP. Out of file descriptors, accepting pauses for
ACCEPT_BACKOFF (counted) instead of spinning on a backlog that stays
readable.

accept4() is called from C: the peer stays a binary address (the IP group
looks it up as such, the transport formats it once for the protocol) and the
socket is non-blocking from birth, so an accept costs no Python socket
object, no address tuple and no setblocking() call."""

include "consts.pxi"

from libc.stdint cimport int32_t
from libc.errno cimport EAGAIN, EINTR, EMFILE, ENFILE, ENOBUFS, ENOMEM, errno

from lbcore_ext.counters cimport add, inc, shared_cell, sum_cell
from lbcore_ext.iptrie cimport IP_V4, IP_V6, IpTrie
from lbcore_ext.ratelimit cimport take
from lbcore_ext.runtime cimport ListenerRuntime
from lbcore_ext.tlsctl cimport ssl_ctx_ptr
from lbcore_ext.transport cimport HandshakeQueue, tcp_accept, tls_accept

from lbcore_ext.counters import (ACCEPT_BACKOFF as C_ACCEPT_BACKOFF, CONN_ACTIVE,
                                 CONN_OPENING, CONN_REFUSED, REFUSED)
from lbcore_ext.runtime import ACL_ALL, ACL_WHITELIST

cdef extern from "<unistd.h>" nogil:
    int c_close "close"(int fd)

cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    struct sockaddr:
        unsigned short sa_family
    struct sockaddr_storage:
        unsigned short ss_family
    int accept4(int fd, sockaddr* addr, socklen_t* n, int flags)
    int setsockopt(int fd, int level, int name, const void* val, socklen_t n)
    int AF_INET
    int AF_INET6
    int SOCK_NONBLOCK
    int SOCK_CLOEXEC

cdef extern from "<netinet/tcp.h>" nogil:
    int TCP_NODELAY

cdef extern from "<netinet/in.h>" nogil:
    int IPPROTO_TCP
    struct in_addr:
        unsigned int s_addr
    struct sockaddr_in:
        in_addr sin_addr
    struct in6_addr:
        unsigned char s6_addr[16]
    struct sockaddr_in6:
        in6_addr sin6_addr

cdef int C_WHITELIST = ACL_WHITELIST
cdef int C_ALL = ACL_ALL
cdef Py_ssize_t O_REFUSED = REFUSED
cdef Py_ssize_t O_ACTIVE = CONN_ACTIVE
cdef Py_ssize_t O_OPENING = CONN_OPENING
cdef Py_ssize_t O_REFUSED_MAX = CONN_REFUSED            # CONN_REFUSED_REASONS order
cdef Py_ssize_t O_REFUSED_RATE = CONN_REFUSED + 1
cdef Py_ssize_t O_ACCEPT_BACKOFF = C_ACCEPT_BACKOFF
# Connections taken per readiness event: bounded so one busy listener can't
# starve the rest of the loop (nginx's multi_accept is unbounded; uvloop takes 1).
DEF ACCEPT_BATCH = 64


cdef int32_t _acl_lookup(IpTrie acl, const sockaddr_storage* ss) noexcept:
    """The IP group's value for the peer, from its binary address (an
    IPv4-mapped IPv6 peer, a dual-stack socket's IPv4 client, as IPv4)."""
    cdef const unsigned char* a
    cdef int i
    if ss.ss_family == AF_INET:
        return acl.lookup_key(IP_V4, <const unsigned char*>&(<const sockaddr_in*>ss).sin_addr)
    a = (<const sockaddr_in6*>ss).sin6_addr.s6_addr
    for i in range(10):
        if a[i]:
            return acl.lookup_key(IP_V6, a)
    if a[10] == 0xff and a[11] == 0xff:
        return acl.lookup_key(IP_V4, a + 12)
    return acl.lookup_key(IP_V6, a)


cdef class Acceptor:
    cdef object loop
    cdef object sock
    cdef int lfd
    cdef object factory
    cdef ListenerRuntime lrt
    cdef object ssl_ctx
    cdef void* ctx                      # its SSL_CTX (ssl_ctx keeps it alive)
    cdef HandshakeQueue hq
    cdef object backoff                 # TimerHandle while accepting is paused
    cdef bint closed

    def __init__(self, loop, sock, factory, ListenerRuntime lrt):
        self.loop = loop
        self.sock = sock
        self.lfd = sock.fileno()
        self.factory = factory
        self.lrt = lrt
        self.ssl_ctx = lrt.ssl_ctx
        if self.ssl_ctx is not None:
            self.ctx = ssl_ctx_ptr(self.ssl_ctx)
            self.hq = HandshakeQueue(loop, lrt.handshake_timeout)
        sock.setblocking(False)

    def start(self):
        self.loop.add_reader(self.lfd, self._on_readable)

    def close(self):
        """Stop accepting; handshakes in progress go on (a drain waits for them)."""
        if not self.closed:
            self.closed = True
            if self.backoff is not None:
                self.backoff.cancel()
                self.backoff = None
            else:
                self.loop.remove_reader(self.lfd)
            self.sock.close()

    def _resume(self):
        self.backoff = None
        if not self.closed:
            self.loop.add_reader(self.lfd, self._on_readable)

    def _on_readable(self):
        cdef ListenerRuntime lrt = self.lrt
        cdef sockaddr_storage ss
        cdef socklen_t n
        cdef int i, fd, err, one = 1
        for i in range(ACCEPT_BATCH):
            if self.closed:
                return
            n = sizeof(ss)
            fd = accept4(self.lfd, <sockaddr*>&ss, &n, SOCK_NONBLOCK | SOCK_CLOEXEC)
            if fd < 0:
                err = errno
                if err == EINTR:
                    continue
                if err == EMFILE or err == ENFILE or err == ENOBUFS or err == ENOMEM:
                    # The backlog stays readable: without a pause this is a busy
                    # loop. Connections wait in the backlog (nginx: 500 ms).
                    inc(lrt.counters, lrt.cbase + O_ACCEPT_BACKOFF)
                    self.loop.remove_reader(self.lfd)
                    self.backoff = self.loop.call_later(ACCEPT_BACKOFF, self._resume)
                return       # EAGAIN; ECONNABORTED and the like: the next event
            if lrt.acl_mode != C_ALL and (_acl_lookup(lrt.acl, &ss) >= 0) != (
                    lrt.acl_mode == C_WHITELIST):
                lrt.refused += 1
                inc(lrt.counters, lrt.cbase + O_REFUSED)
                c_close(fd)
                continue
            if lrt.counters is not None and (lrt.max_connections or lrt.conn_bucket >= 0) \
                    and not self._admit(lrt):
                c_close(fd)
                continue
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one))
            # The transport's from here (it closes the fd).
            if self.ssl_ctx is not None:
                # TLS on the fd (it counts itself in CONN_OPENING until its
                # handshake ends either way).
                tls_accept(self.loop, fd, &ss, self.factory, lrt, self.hq, self.ctx)
            else:
                # Open at once: the protocol counts itself in CONN_ACTIVE in
                # connection_made, before the next accept's limit check.
                tcp_accept(self.loop, fd, &ss, self.factory, lrt)

    cdef bint _admit(self, ListenerRuntime lrt):
        """The listener's limits, over every worker's connections: the open
        ones and those still opening (TLS handshake), gauges each worker
        keeps in its row, summed here (a few cells). Two workers accepting at the same
        instant may each let one through: the limit holds within one
        connection per worker."""
        if lrt.max_connections and (
                sum_cell(lrt.counters, lrt.cbase + O_ACTIVE)
                + sum_cell(lrt.counters, lrt.cbase + O_OPENING) >= lrt.max_connections):
            inc(lrt.counters, lrt.cbase + O_REFUSED_MAX)
            return False
        if lrt.conn_bucket >= 0 and not take(shared_cell(lrt.counters, lrt.conn_bucket),
                                             lrt.conn_interval_ns, lrt.conn_tolerance_ns):
            inc(lrt.counters, lrt.cbase + O_REFUSED_RATE)
            return False
        return True
