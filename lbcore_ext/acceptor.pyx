# cython: language_level=3
"""Accepting connections ourselves, for listeners with access control: the
peer is checked against the IP group before any byte is read or any TLS byte
written (spec 4). Listeners without access control use the loop's own server."""

import socket

from lbcore_ext.counters cimport inc
from lbcore_ext.iptrie cimport IpTrie
from lbcore_ext.runtime cimport ListenerRuntime

from lbcore_ext.counters import REFUSED
from lbcore_ext.runtime import ACL_WHITELIST

cdef int C_WHITELIST = ACL_WHITELIST
cdef Py_ssize_t O_REFUSED = REFUSED
# Connections taken per readiness event: bounded so one busy listener can't
# starve the rest of the loop (nginx's multi_accept is unbounded; uvloop takes 1).
DEF ACCEPT_BATCH = 64

cdef object BlockingIOError_ = BlockingIOError
cdef object InterruptedError_ = InterruptedError
cdef int IPPROTO_TCP = socket.IPPROTO_TCP
cdef int TCP_NODELAY = socket.TCP_NODELAY


cdef class Acceptor:
    cdef object loop
    cdef object sock
    cdef object factory
    cdef ListenerRuntime lrt
    cdef object ssl_ctx
    cdef bint closed

    def __init__(self, loop, sock, factory, ListenerRuntime lrt):
        self.loop = loop
        self.sock = sock
        self.factory = factory
        self.lrt = lrt
        self.ssl_ctx = lrt.ssl_ctx
        sock.setblocking(False)

    def start(self):
        self.loop.add_reader(self.sock.fileno(), self._on_readable)

    def close(self):
        if not self.closed:
            self.closed = True
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()

    def _on_readable(self):
        cdef ListenerRuntime lrt = self.lrt
        cdef IpTrie acl = lrt.acl
        cdef int i
        cdef bint hit
        for i in range(ACCEPT_BATCH):
            try:
                conn, addr = self.sock.accept()
            except (BlockingIOError_, InterruptedError_):
                return
            except OSError:
                # EMFILE and friends: leave the rest in the backlog for later.
                return
            hit = acl.lookup(addr[0]) >= 0
            if hit != (lrt.acl_mode == C_WHITELIST):
                lrt.refused += 1
                inc(lrt.counters, lrt.cbase + O_REFUSED)
                conn.close()
                continue
            conn.setblocking(False)
            conn.setsockopt(IPPROTO_TCP, TCP_NODELAY, 1)
            task = self.loop.create_task(self.loop.connect_accepted_socket(
                self.factory, conn, ssl=self.ssl_ctx,
                ssl_handshake_timeout=lrt.handshake_timeout if self.ssl_ctx is not None else None))
            task.add_done_callback(_consume)


def _consume(task):
    """A failed handshake is the client's problem: retrieve it so asyncio does
    not log it as a never-retrieved exception."""
    if not task.cancelled():
        task.exception()
