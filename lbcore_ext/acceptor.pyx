# cython: language_level=3
"""Accepting connections ourselves, for listeners with access control, TLS or
connection limits: the peer is checked against the IP group before any byte
is read or any TLS byte written (spec 4), the listener's limits hold across
all workers (spec 8: max_connections, max_new_connections_per_second), and a
failed handshake is seen (and counted by reason), which the loop's own server
would swallow. Plain HTTP listeners without any of these use the loop's
server."""

import socket
import ssl
from functools import partial

from lbcore_ext.counters cimport add, inc, shared_cell, sum_cell
from lbcore_ext.iptrie cimport IpTrie
from lbcore_ext.ratelimit cimport take
from lbcore_ext.runtime cimport ListenerRuntime

from lbcore_ext.counters import (CONN_ACTIVE, CONN_OPENING, CONN_REFUSED, REFUSED,
                                 TLS_FAIL, TLS_FAIL_REASONS)
from lbcore_ext.runtime import ACL_ALL, ACL_WHITELIST

cdef int C_WHITELIST = ACL_WHITELIST
cdef int C_ALL = ACL_ALL
cdef Py_ssize_t O_REFUSED = REFUSED
cdef Py_ssize_t O_ACTIVE = CONN_ACTIVE
cdef Py_ssize_t O_OPENING = CONN_OPENING
cdef Py_ssize_t O_REFUSED_MAX = CONN_REFUSED            # CONN_REFUSED_REASONS order
cdef Py_ssize_t O_REFUSED_RATE = CONN_REFUSED + 1
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
        for i in range(ACCEPT_BATCH):
            try:
                conn, addr = self.sock.accept()
            except (BlockingIOError_, InterruptedError_):
                return
            except OSError:
                # EMFILE and friends: leave the rest in the backlog for later.
                return
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
            task = self.loop.create_task(self.loop.connect_accepted_socket(
                self.factory, conn, ssl=self.ssl_ctx,
                ssl_handshake_timeout=lrt.handshake_timeout if self.ssl_ctx is not None else None))
            # Counted from accept: the protocol counts itself only once the
            # task runs (after the TLS handshake), and the limit must see
            # every connection of this batch.
            add(lrt.counters, lrt.cbase + O_OPENING, 1)
            task.add_done_callback(partial(_handshake_done, lrt))

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


def _handshake_done(ListenerRuntime lrt, task):
    """A failed handshake is the client's problem: count it by reason (and
    retrieve it so asyncio does not log a never-retrieved exception)."""
    add(lrt.counters, lrt.cbase + O_OPENING, -1)
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        inc(lrt.counters, lrt.cbase + TLS_FAIL + TLS_FAIL_REASONS.index(failure_reason(exc)))


# OpenSSL reason codes (SSLError.reason) -> bounded metric label.
_REASONS = {
    "NO_SHARED_CIPHER": "no_shared_cipher",
    "NO_SUITABLE_SIGNATURE_ALGORITHM": "no_shared_cipher",
    "UNSUPPORTED_PROTOCOL": "protocol_version",
    "NO_PROTOCOLS_AVAILABLE": "protocol_version",
    "VERSION_TOO_LOW": "protocol_version",
    "TLSV1_ALERT_PROTOCOL_VERSION": "protocol_version",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "no_client_certificate",
    "HTTP_REQUEST": "plain_http",
    "HTTPS_PROXY_REQUEST": "plain_http",
    "UNEXPECTED_EOF_WHILE_READING": "closed",
}
# X509 verify codes of a refused client certificate.
_VERIFY = {10: "client_certificate_expired", 23: "client_certificate_revoked"}


def failure_reason(exc) -> str:
    """The TLS_FAIL_REASONS label for a handshake's exception."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return _VERIFY.get(exc.verify_code, "client_certificate_invalid")
    if isinstance(exc, ssl.SSLError):
        return _REASONS.get(exc.reason or "", "other")
    if isinstance(exc, ConnectionAbortedError) and "taking longer" in str(exc):
        return "timeout"        # uvloop's handshake time-out
    if isinstance(exc, (TimeoutError, ConnectionError, EOFError)):
        return "closed"
    return "other"
