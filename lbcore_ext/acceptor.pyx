# cython: language_level=3
"""Accepting connections ourselves, for listeners with access control, TLS or
connection limits: the peer is checked against the IP group before any byte
is read or any TLS byte written (spec 4), the listener's limits hold across
all workers (spec 8: max_connections, max_new_connections_per_second), and a
TLS connection goes to lbcore's own transport (lbcore_ext/transport.pyx),
which counts a failed handshake by reason. Out of file descriptors, accepting
pauses for ACCEPT_BACKOFF (counted) instead of spinning on a backlog that
stays readable. Plain HTTP listeners without any of these use the loop's
server (libuv drops connections it can't take a descriptor for: its EMFILE
reserve-descriptor trick)."""

include "consts.pxi"

import errno
import socket
from functools import partial

from lbcore_ext.counters cimport add, inc, shared_cell, sum_cell
from lbcore_ext.iptrie cimport IpTrie
from lbcore_ext.ratelimit cimport take
from lbcore_ext.runtime cimport ListenerRuntime
from lbcore_ext.transport cimport HandshakeQueue, TlsTransport

from lbcore_ext.counters import (ACCEPT_BACKOFF as C_ACCEPT_BACKOFF, CONN_ACTIVE,
                                 CONN_OPENING, CONN_REFUSED, REFUSED)
from lbcore_ext.runtime import ACL_ALL, ACL_WHITELIST

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

cdef object BlockingIOError_ = BlockingIOError
cdef object InterruptedError_ = InterruptedError
cdef int IPPROTO_TCP = socket.IPPROTO_TCP
cdef int TCP_NODELAY = socket.TCP_NODELAY
cdef tuple OUT_OF_FDS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


cdef class Acceptor:
    cdef object loop
    cdef object sock
    cdef object factory
    cdef ListenerRuntime lrt
    cdef object ssl_ctx
    cdef HandshakeQueue hq
    cdef object backoff                 # TimerHandle while accepting is paused
    cdef bint closed

    def __init__(self, loop, sock, factory, ListenerRuntime lrt):
        self.loop = loop
        self.sock = sock
        self.factory = factory
        self.lrt = lrt
        self.ssl_ctx = lrt.ssl_ctx
        if self.ssl_ctx is not None:
            self.hq = HandshakeQueue(loop, lrt.handshake_timeout)
        sock.setblocking(False)

    def start(self):
        self.loop.add_reader(self.sock.fileno(), self._on_readable)

    def close(self):
        """Stop accepting; handshakes in progress go on (a drain waits for them)."""
        if not self.closed:
            self.closed = True
            if self.backoff is not None:
                self.backoff.cancel()
                self.backoff = None
            else:
                self.loop.remove_reader(self.sock.fileno())
            self.sock.close()

    def _resume(self):
        self.backoff = None
        if not self.closed:
            self.loop.add_reader(self.sock.fileno(), self._on_readable)

    def _on_readable(self):
        cdef ListenerRuntime lrt = self.lrt
        cdef IpTrie acl = lrt.acl
        cdef int i
        for i in range(ACCEPT_BATCH):
            try:
                conn, addr = self.sock.accept()
            except (BlockingIOError_, InterruptedError_):
                return
            except OSError as exc:
                if exc.errno in OUT_OF_FDS:
                    # The backlog stays readable: without a pause this is a busy
                    # loop. Connections wait in the backlog (nginx: 500 ms).
                    inc(lrt.counters, lrt.cbase + O_ACCEPT_BACKOFF)
                    self.loop.remove_reader(self.sock.fileno())
                    self.backoff = self.loop.call_later(ACCEPT_BACKOFF, self._resume)
                return       # ECONNABORTED and the like: the next event
            if lrt.acl_mode != C_ALL and (acl.lookup(addr[0]) >= 0) != (
                    lrt.acl_mode == C_WHITELIST):
                lrt.refused += 1
                inc(lrt.counters, lrt.cbase + O_REFUSED)
                conn.close()
                continue
            if lrt.counters is not None and not self._admit(lrt):
                conn.close()
                continue
            conn.setblocking(False)
            conn.setsockopt(IPPROTO_TCP, TCP_NODELAY, 1)
            if self.ssl_ctx is not None:
                # Ours from here: TLS on the fd (it counts itself in CONN_OPENING
                # until its handshake ends either way).
                TlsTransport.accept(self.loop, conn.detach(), addr, self.factory, lrt,
                                    self.hq, self.ssl_ctx)
                continue
            task = self.loop.create_task(self.loop.connect_accepted_socket(self.factory, conn))
            # Counted from accept: the protocol counts itself only once the
            # task runs, and the limit must see every connection of this batch.
            add(lrt.counters, lrt.cbase + O_OPENING, 1)
            task.add_done_callback(partial(_accepted, lrt))

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


def _accepted(ListenerRuntime lrt, task):
    """A plain connection became its protocol's (or failed to: retrieve it so
    asyncio does not log a never-retrieved exception)."""
    add(lrt.counters, lrt.cbase + O_OPENING, -1)
    if not task.cancelled():
        task.exception()
