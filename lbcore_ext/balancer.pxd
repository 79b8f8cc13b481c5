from libc.stdint cimport uint32_t, uint64_t

# Pool.algorithm and Pool.sticky, as C constants (the module exports the same
# values under the names without C_ for the control plane): compared per
# request, a module global is a dict lookup and an int object.
cdef enum:
    C_ALG_WRR = 0
    C_ALG_WLC = 1
    C_ALG_SOURCE_IP_HASH = 2
    C_STICKY_NONE = 0
    C_STICKY_LB_COOKIE = 1
    C_STICKY_APP_COOKIE = 2
    C_STICKY_SOURCE_IP = 3

cdef class Member:
    """A backend server. `healthy` is set by the health checker (operations issue)."""
    cdef public str name
    cdef public str host                # an IP literal: hostnames resolve at load
    cdef public int port
    cdef public int weight
    cdef public bint healthy
    cdef public double up_since         # loop time it became healthy (slow start)
    cdef public long active             # requests in flight
    # Idle upstream connections: a stack linked through the connections
    # (upstream.pyx idle_push / idle_pop), the most recent on top. No list that
    # reallocates as it empties and fills again, request after request.
    cdef object idle_top                # an UpstreamConnection, or None
    cdef public int n_idle
    cdef public bytes token             # opaque id for the lb_cookie (never the address)
    cdef public int config_index        # its member's position in the config's pool (-1: none)
    # Its member block (counters.M_*) per listener position, -1 where none.
    cdef public tuple cells
    cdef long current_weight            # smooth WRR state
    cdef int eff_weight(self, double now, double slow_start)

cdef class Pool:
    cdef public str name
    cdef public tuple members
    cdef public int algorithm           # ALG_*
    cdef public int sticky              # STICKY_*
    cdef public bytes cookie_name       # lb_cookie / app_cookie name
    cdef public int cookie_max_age      # seconds
    cdef public double slow_start       # seconds, 0 = off
    cdef public bint fail_open
    cdef public Py_ssize_t max_head     # a member response head's limit; 0 = the listener's
    cdef public bytes set_cookie_suffix # "; Max-Age=..; Path=/; HttpOnly; SameSite=Lax"
    cdef public bytes set_cookie_suffix_tls   # the same on HTTPS listeners ("; Secure")
    # Retries (spec 7.2, a pool's `retries`): bit k of retry_on allows
    # counters.RETRY_REASONS[k]; a request tries at most 1 + max_retries
    # members; this worker's requests of the pool now on a retry stay below
    # max(budget_min, budget_percent % of its active requests).
    cdef public int retry_on
    cdef public int max_retries
    cdef public double budget_percent
    cdef public long budget_min
    # Request buffering (a pool's request_buffering): body bytes read from the
    # client before a member is chosen (0 = off), and the time they may take.
    cdef public long long buffer_max
    cdef public double buffer_timeout
    cdef public long retrying
    cdef bint retry_allowed(self, bint already)
    cdef dict by_token
    cdef dict app_sessions              # app cookie value -> (Member, expiry)
    cdef uint32_t* ring_hash
    cdef int* ring_member
    cdef Py_ssize_t ring_len
    cdef Py_ssize_t rr_start
    cdef object clock
    cdef Member pick(self, list tried, bytes client_ip, bytes cookie)
    cdef Member _wrr(self, list tried, double now)
    cdef Member _wlc(self, list tried, double now)
    cdef Member _hash(self, list tried, bytes key)
    cpdef Member sticky_member(self, bytes cookie)
    cdef bint eligible(self, Member m, list tried)
    cpdef remember_app_cookie(self, bytes value, Member m)

cdef uint64_t fnv1a(const unsigned char* p, Py_ssize_t n)
cdef bytes cookie_value(bytes header, bytes name)
