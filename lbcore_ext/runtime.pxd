from libc.stdint cimport int64_t

from lbcore_ext.balancer cimport Pool
from lbcore_ext.counters cimport Counters
from lbcore_ext.iptrie cimport IpTrie
from lbcore_ext.policy cimport PolicyTable

cdef class ListenerRuntime:
    """One listener compiled for the data plane: plain values, no config objects."""
    cdef public str name
    cdef public bytes scheme            # b"https" / b"http"
    cdef public bytes port_bytes        # the listener's port as ASCII
    cdef public Pool pool               # default pool
    cdef public PolicyTable policies    # forwarding policies, or None
    cdef public dict pools              # every pool by name (hooks may choose one)
    cdef public Py_ssize_t pbase        # route block of the default pool
    cdef public Py_ssize_t pbase_local  # route block of lbcore's own answers (no pool)
    cdef public dict pool_bases         # pool name -> route block
    # Limits across all workers (spec 8): checked at accept.
    cdef public long long max_connections       # 0 = none
    cdef public Py_ssize_t conn_bucket          # max_new_connections_per_second; -1 = none
    cdef public int64_t conn_interval_ns
    cdef public int64_t conn_tolerance_ns
    cdef dict _actions                  # lower-case header name -> H_* (header_actions)
    # _actions as an open-addressing table the framing looks fields up in from
    # C, with no bytes object made (action_of): slot -> name in _akeys, action.
    cdef bytes _akeys
    cdef Py_ssize_t* _aoff
    cdef int* _alen                     # 0: empty slot
    cdef int* _aact
    cdef unsigned int _amask
    cdef public int xff_mode            # XFF_APPEND / XFF_REMOVE / XFF_PRESERVE / XFF_OFF
    cdef public bint x_real_ip
    cdef public bint x_forwarded_proto
    cdef public bint x_forwarded_host
    cdef public bint x_forwarded_port
    cdef public bint x_forwarded_for_port
    cdef public int tls_fields          # TLS_* bits: which X-Forwarded-TLS-* headers
    # Header names as sent, aliases applied (each ends with b": ").
    cdef public bytes n_xff, n_real_ip, n_proto, n_host, n_port, n_for_port
    cdef public bytes n_tls_protocol, n_tls_cipher, n_tls_sni, n_alpn, n_cert_id
    cdef public dict n_clientcert       # field -> b"X-Forwarded-Clientcert-...: "
    # Constant header lines appended to every request (ELB IP and ID).
    cdef public bytes static_lines
    cdef public double idle_timeout     # 0 = no keep-alive
    cdef public double request_timeout
    cdef public double response_timeout
    cdef public double connect_timeout
    cdef public Py_ssize_t max_request_line
    cdef public Py_ssize_t max_header_size
    cdef public Py_ssize_t max_header_block
    cdef public Py_ssize_t max_headers
    cdef public long long max_body
    cdef public bytes cert_id           # name of the served certificate
    cdef public object ssl_ctx          # ssl.SSLContext, or None for plain HTTP
    cdef public double handshake_timeout
    cdef public int acl_mode            # ACL_ALL / ACL_WHITELIST / ACL_BLACKLIST
    cdef public IpTrie acl
    cdef public long long refused       # connections refused by access control
    cdef public object phases           # the Phases object, or None
    cdef public object sni_guard        # SniSelector on mutual+SNI listeners (421 rule)
    cdef public Counters counters       # shared-memory counters, or None
    cdef public Py_ssize_t cbase        # this listener's first cell
    cdef public Py_ssize_t index        # its position in the config (Member.cells)
    cdef public list access_log         # finished requests as tuples, or None when off
    cdef public bytes rid_prefix
    cdef public long long rid_seq
    cdef public int hooks               # HOOK_* bits of the overridden hooks
    cdef public set conns               # open client connections (protocols), for draining
    cdef public bint draining           # graceful stop: no keep-alive, GOAWAY

    cdef bytes tls_lines(self, object transport)
    cdef int action_of(self, const char* lname, Py_ssize_t n, unsigned int h) noexcept
    cdef int _index_actions(self) except -1
    cdef bytes next_request_id(self)
    cdef ForwardedLines forwarded_lines(self, bytes peer_ip, bytes peer_port, bytes tls_lines)
    cdef int append_forwarded(self, bytearray out, ForwardedLines f, bytes xff, bytes host,
                              object view) except -1


cdef class ForwardedLines:
    """The lines lbcore adds toward the backend that are the same for every
    request of one client connection, made once per connection and listener:
    what is left per request is the X-Forwarded-Host line and a client's own
    X-Forwarded-For."""
    cdef ListenerRuntime lrt            # the listener they were made for
    cdef bytes peer_ip
    # One buffer: head, X-Forwarded-For (the peer alone), X-Real-IP, -Proto,
    # up to tail_at; rest, the same from rest_at (no X-Forwarded-For); tail,
    # X-Forwarded-Port, -For-Port, the TLS lines, the static lines.
    cdef bytearray lines
    cdef Py_ssize_t rest_at
    cdef Py_ssize_t tail_at


cdef class TimerBucket:
    """The timers due in one tick, a doubly linked list (no hashing to join
    or leave it)."""
    cdef LazyTimer head
    cdef long long tick


cdef class TimerWheel:
    cdef object loop
    cdef dict buckets                   # tick -> TimerBucket
    cdef list heap                      # ticks that have a bucket (heapq)
    cdef object handle                  # the one loop timer, for tick `armed`
    cdef long long armed
    cdef TimerBucket last               # the latest add's: most adds fall in the same tick
    cdef int add(self, LazyTimer t, long long tick) except -1
    cdef int remove(self, LazyTimer t) except -1


cdef class TimerOwner:
    """What a LazyTimer made by owned_timer() calls when it fires, from C: a
    connection's timer then holds the connection itself, not a bound method
    made for it (an attribute lookup and an object per connection)."""
    cdef int on_timer(self) except -1


cdef class LazyTimer:
    """One timer per connection, fired by the earliest deadline asked for; the
    owner re-checks its phase when it fires and asks again for what remains."""
    cdef object callback                # called when it fires, if owner is None
    cdef TimerOwner owner
    cdef TimerWheel wheel
    cdef long long tick                 # the 10 ms tick it is due in; 0 = not armed
    cdef TimerBucket bucket             # the one it is linked in, or None
    cdef LazyTimer prev
    cdef LazyTimer next
    cdef int schedule(self, double at) except -1
    cdef int cancel(self) except -1


# A LazyTimer on the loop's wheel that calls callback() (made from C).
cdef LazyTimer new_timer(object loop, object callback)
cdef LazyTimer owned_timer(object loop, TimerOwner owner)
