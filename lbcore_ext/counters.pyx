# cython: language_level=3
"""Counters in anonymous shared memory (inherited across fork), so workers
write plain C integers and the scrape sums them; no prometheus_client call on
the request path (DESIGN.md, Boundaries)."""

import mmap

from libc.stdint cimport int64_t


cdef class Counters:
    def __init__(self, Py_ssize_t size, Py_ssize_t slots=1, int fd=-1):
        """Anonymous memory by default (inherited by fork); with `fd`, a memfd
        the master created and passed to exec'd workers."""
        self.size = size
        self.slots = slots
        self.mem = mmap.mmap(fd, max(1, size * slots * 8))
        cdef unsigned char[::1] view = self.mem
        self.base = <int64_t*>&view[0]
        self.row = self.base

    def use_slot(self, Py_ssize_t slot):
        """A worker writes only its own row."""
        if not 0 <= slot < self.slots:
            raise IndexError(slot)
        self.row = self.base + slot * self.size

    def total(self, Py_ssize_t i):
        cdef int64_t t = 0
        cdef Py_ssize_t s
        for s in range(self.slots):
            t += self.base[s * self.size + i]
        return t

    def totals(self, Py_ssize_t start, Py_ssize_t count):
        return [self.total(start + k) for k in range(count)]

    def incr(self, Py_ssize_t i, int64_t v=1):
        """For tests and the control plane."""
        self.row[i] += v

    def set(self, Py_ssize_t i, int64_t v):
        """A cell of this process's row (worker state, heartbeat)."""
        self.row[i] = v

    def cell(self, Py_ssize_t slot, Py_ssize_t i):
        return self.base[slot * self.size + i]

    def retire(self, Py_ssize_t slot, Py_ssize_t into, gauges=()):
        """A worker is gone: add its row to row `into` (so totals never go
        back), except gauge cells, which die with it; then zero the row."""
        cdef int64_t* src = self.base + slot * self.size
        cdef int64_t* dst = self.base + into * self.size
        cdef Py_ssize_t i
        skip = set(gauges)
        for i in range(self.size):
            if i not in skip:
                dst[i] += src[i]
            src[i] = 0


# The first cells of each worker's row describe the worker (lbcore/supervisor.py).
W_PID = 0
W_STATE = 1               # W_STARTING, W_READY, W_DRAINING
W_HEARTBEAT_MS = 2        # CLOCK_MONOTONIC milliseconds, written every tick
# Live objects of the worker (gauges): the tests assert they return to zero
# (client connections, exchanges, member connections busy = all - idle).
W_LIVE_CLIENT_CONNS = 3
W_LIVE_EXCHANGES = 4
W_LIVE_MEMBER_CONNS = 5
W_LIVE_MEMBER_IDLE = 6
WORKER_CELLS = 8
W_STARTING = 1
W_READY = 2
W_DRAINING = 3

# Layout of one listener's block of cells (offsets from ListenerRuntime.cbase).
# The control plane's exposition (lbcore/metrics.py) reads the same offsets.
CONN_TOTAL = 0
CONN_ACTIVE = 1           # open connections (TLS: from the end of the handshake)
REQUESTS = 2
CONN_OPENING = 3          # accepted, not yet its protocol's (TLS handshake...), a gauge
CONN_REFUSED = 4          # one cell per CONN_REFUSED_REASONS entry
# Why a connection was closed at accept: the listener's limits (spec 8).
CONN_REFUSED_REASONS = ("max_connections", "max_new_connections_per_second")
TIMEOUT_IDLE = CONN_REFUSED + len(CONN_REFUSED_REASONS)
TIMEOUT_REQUEST = TIMEOUT_IDLE + 1
TIMEOUT_RESPONSE = TIMEOUT_IDLE + 2
TIMEOUT_CONNECT = TIMEOUT_IDLE + 3
REFUSED = TIMEOUT_IDLE + 4
GENERATED = REFUSED + 1   # one cell per GENERATED_CODES entry
GENERATED_CODES = ((400, "malformed"), (405, "method_not_allowed"), (408, "request_timeout"),
                   (413, "body_too_large"), (414, "uri_too_long"), (421, "misdirected"),
                   (431, "header_too_large"), (501, "transfer_coding"), (502, "bad_gateway"),
                   (503, "no_member"), (504, "gateway_timeout"),
                   # second reasons of a code: count_reason()
                   (502, "upstream_header_too_big"), (503, "qps_limit"),
                   (400, "plain_http"))
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.3, 0.5, 1.0, 1.2, 2.5, 5.0, 10.0)
TLS_VERSIONS = GENERATED + len(GENERATED_CODES)    # TLSv1, TLSv1.1, TLSv1.2, TLSv1.3
TLS_FAIL = TLS_VERSIONS + 4      # one cell per TLS_FAIL_REASONS entry
TLS_FAIL_REASONS = ("no_shared_cipher", "protocol_version", "no_client_certificate",
                    "client_certificate_expired", "client_certificate_revoked",
                    "client_certificate_invalid", "plain_http", "timeout", "closed", "other")
SNI_UNMATCHED = TLS_FAIL + len(TLS_FAIL_REASONS)
H2_GOAWAY = SNI_UNMATCHED + 1    # one cell per H2_GOAWAY_REASONS entry
# Why an HTTP/2 connection got a GOAWAY: the abuse budgets (ENHANCE_YOUR_CALM),
# then protocol errors, drain (shutdown, reload) and the idle time-out.
H2_GOAWAY_REASONS = ("rapid_reset", "ping_flood", "settings_flood", "priority_flood",
                     "window_update_flood", "empty_frames", "continuation_flood",
                     "header_flood", "output_flood", "protocol_error", "drain", "idle")
# HTTP bytes the listener's clients sent and were sent (request and response
# heads as HTTP/1.1 text, bodies as relayed, tunnels' raw bytes).
BYTES_IN = H2_GOAWAY + len(H2_GOAWAY_REASONS)
BYTES_OUT = BYTES_IN + 1
TLS_RESUMED = BYTES_OUT + 1       # handshakes that resumed a session
ACCEPT_BACKOFF = TLS_RESUMED + 1  # accept() out of file descriptors: paused ACCEPT_BACKOFF
BLOCK = ACCEPT_BACKOFF + 1
GAUGES = (CONN_ACTIVE, CONN_OPENING)   # per-listener cells that are not counters

# Layout of one route block: the cells of the responses one listener sent for
# one pool (offsets from Request.pbase), so the `pool` label is the pool the
# decision chose; lbcore's own answers (refusals, redirects, fixed responses)
# go to the listener's route with no pool.
RESP_CLASS = 0            # 5 cells: 1xx .. 5xx
# Retries by the failure that caused them (pool.retries.retry_on), in the
# order of the RETRY_* bits of a Pool's retry_on; then retries the budget refused.
RETRY_REASONS = ("connect_failure", "reset", "response_timeout", "http_502", "http_503")
RETRY_REASON = 5
RETRY_BUDGET_EXHAUSTED = RETRY_REASON + len(RETRY_REASONS)
HIST = RETRY_BUDGET_EXHAUSTED + 1   # bucket counts (not cumulative), then +Inf, sum (us), count
HIST_SUM_US = HIST + len(BUCKETS) + 1
HIST_COUNT = HIST_SUM_US + 1
UPSTREAM_HIST = HIST_COUNT + 1    # like HIST
ROUTE_BLOCK = UPSTREAM_HIST + len(BUCKETS) + 3

# Layout of one member block: what one listener sent one member of one pool
# (offsets from Exchange.mbase; lbcore/cells.py gives each (listener, pool,
# member) name its block for the life of the memory).
M_REQUESTS = 0            # tries sent to it (a retry elsewhere counts there too)
M_RESP_CLASS = 1          # 5 cells: its responses by class, 1xx .. 5xx
# Tries that failed on it, by kind (a 502/503 it answered is a 5xx above).
MEMBER_FAILURES = ("refused", "connect_timeout", "lost", "response_timeout",
                   "invalid_response", "header_too_big")
M_FAIL = M_RESP_CLASS + 5
M_RETRIES = M_FAIL + len(MEMBER_FAILURES)   # retries away from it, by RETRY_REASONS
M_HIST = M_RETRIES + len(RETRY_REASONS)     # response-header time, like HIST
M_ACTIVE = M_HIST + len(BUCKETS) + 3        # gauge: requests on it now
M_CONN_ACTIVE = M_ACTIVE + 1                # gauge: connections open to it
M_CONN_TOTAL = M_CONN_ACTIVE + 1            # connections opened to it
M_BYTES_IN = M_CONN_TOTAL + 1               # bytes read from it
M_BYTES_OUT = M_BYTES_IN + 1                # bytes written to it
MEMBER_BLOCK = M_BYTES_OUT + 1
MEMBER_GAUGES = (M_ACTIVE, M_CONN_ACTIVE)

cdef int[600] _gen_index
for _i in range(600):
    _gen_index[_i] = -1
for _k, (_code, _reason) in enumerate(GENERATED_CODES):
    if _gen_index[_code] < 0:           # a code's first entry is its default reason
        _gen_index[_code] = GENERATED + _k
# GENERATED_CODES index of a reason other than its code's default.
R_UPSTREAM_HEADER_TOO_BIG = [r for _, r in GENERATED_CODES].index("upstream_header_too_big")
R_QPS_LIMIT = [r for _, r in GENERATED_CODES].index("qps_limit")
R_PLAIN_HTTP = [r for _, r in GENERATED_CODES].index("plain_http")
cdef double[13] _bounds
for _k, _b in enumerate(BUCKETS):
    _bounds[_k] = _b
# The offsets the per-response functions add, as C integers: a module global
# is a dict lookup and Python arithmetic (two int objects) per response.
cdef Py_ssize_t C_RESP_CLASS = RESP_CLASS
cdef Py_ssize_t C_HIST = HIST
cdef Py_ssize_t C_GENERATED = GENERATED


cpdef void count_response(Counters c, Py_ssize_t base, Py_ssize_t pbase, int status,
                          bint generated, double seconds):
    """One response: its class and duration on its route (`pbase`), its
    generated-error cell on its listener (`base`)."""
    if c is None or base < 0 or pbase < 0 or status < 100 or status > 599:
        return
    c.row[pbase + C_RESP_CLASS + status // 100 - 1] += 1
    if generated and _gen_index[status] >= 0:
        c.row[base + _gen_index[status]] += 1
    if seconds >= 0.0:
        observe(c, pbase + C_HIST, seconds)


cpdef void count_reason(Counters c, Py_ssize_t base, Py_ssize_t pbase, int status, int reason,
                        double seconds):
    """A generated error under `reason` (an index into GENERATED_CODES), not
    its code's default reason."""
    if c is None or base < 0 or pbase < 0 or status < 100 or status > 599:
        return
    c.row[pbase + C_RESP_CLASS + status // 100 - 1] += 1
    c.row[base + C_GENERATED + reason] += 1
    if seconds >= 0.0:
        observe(c, pbase + C_HIST, seconds)


cpdef void observe(Counters c, Py_ssize_t at, double seconds):
    """One observation into the histogram whose first cell is `at`."""
    cdef int k = 0
    if c is None or at < 0:
        return
    while k < 13 and seconds > _bounds[k]:
        k += 1
    c.row[at + k] += 1
    c.row[at + 14] += <int64_t>(seconds * 1e6)
    c.row[at + 15] += 1
