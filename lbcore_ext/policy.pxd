from libc.stdint cimport int64_t, uint64_t

from lbcore_ext.balancer cimport Pool
from lbcore_ext.iptrie cimport IpTrie

# Policy.action
cdef enum:
    A_FORWARD = 1
    A_REDIRECT = 2
    A_FIXED = 3


cdef class Facts:
    """What the rules of a listener's policies read of one request, filled
    by the request core (request.pyx) for both framings; the parts that cost
    something (the host key, the decoded query) are made on first use."""
    cdef bytes method
    cdef bytes host                     # as received (Host or :authority)
    cdef bytes host_key                 # lower case, no port, no trailing dot
    cdef bytes path                     # normalised, without the query
    cdef bytes query                    # after "?", as received; None without one
    cdef list qpairs                    # [(name, value)] percent-decoded, on first use
    cdef list hvals                     # header-rule slots: the field's value, lower case
    cdef bytes cookie                   # every Cookie field, joined
    cdef bytes peer_ip
    cdef int store(self, Py_ssize_t slot, Py_ssize_t nslots, bytes value) except -1


cdef class Rule:
    cdef readonly int kind
    cdef frozenset exact                # exact values (bytes)
    cdef tuple prefixes                 # path prefixes; host wildcard suffixes (".a.com")
    cdef tuple regexes                  # Regex: path regexes, values with * or ?
    cdef bytes name                     # query / cookie name
    cdef Py_ssize_t slot                # header rules: the Facts.hvals slot
    cdef IpTrie trie                    # source_ip rules
    cdef bint matches(self, Facts f) except -1
    cdef bint _value(self, bytes v)


cdef class Policy:
    cdef readonly str name
    cdef readonly int priority
    cdef readonly str action_name
    cdef readonly tuple rules
    cdef int action
    # forward
    cdef readonly Pool pool             # one pool, or None with weighted pools
    cdef public Py_ssize_t pbase        # its route block
    cdef tuple pools                    # weighted pools, and their route blocks
    cdef readonly tuple pool_names
    cdef public tuple pbases
    cdef list weights
    cdef list current                   # smooth WRR state across the pools
    cdef readonly bytes insert_lines    # "Name: value\r\n" lines added
    cdef readonly list remove           # lower-case names of fields removed
    cdef tuple rw_host, rw_path, rw_query   # URL rewrite templates, or None
    # redirect
    cdef bytes r_proto                  # b"http" / b"https", or None (the request's)
    cdef bytes r_port                   # or None (the request's)
    cdef tuple r_host, r_path, r_query  # templates, or None (the request's)
    # redirect and fixed response
    cdef readonly int status
    cdef readonly bytes lines
    cdef readonly bytes body
    # observability and the qps limit
    cdef public Py_ssize_t match_cell
    cdef public Py_ssize_t bucket       # cell in the shared row, -1 = no limit
    cdef int64_t interval_ns
    cdef int64_t tolerance_ns
    cdef bint matches(self, Facts f) except -1
    cdef Py_ssize_t choose(self, bytes cookie)
    cdef bytes location(self, bytes scheme, Facts f)
    cdef bytes rewrite(self, tuple template, Facts f, bytes original)


# Candidate sets: bit i = the listener's i-th policy in priority order.
cdef enum:
    MASK_WORDS = 2                      # 128 policies; check allows 100


cdef class PolicyTable:
    """A listener's policies, in priority order, with indexes that give the
    set of policies a request could match (as a bit mask), so that only
    those are evaluated. Each policy is indexed by one of its rules whose
    values are all exact (a host, an exact path, a path prefix, a method, a
    field's value); policies with none (regexes, wildcards, query, cookie,
    source IP only) are candidates for every request."""
    cdef readonly tuple policies
    cdef bint indexed                   # False: more policies than the masks hold
    cdef uint64_t always[MASK_WORDS]
    cdef uint64_t* masks                # MASK_WORDS words per index entry
    cdef Py_ssize_t nmasks
    cdef dict by_host                   # host key -> entry
    cdef dict by_path                   # exact path -> entry
    cdef tuple prefix_trie              # path prefixes: (children by byte, entry) nodes
    cdef dict by_method
    cdef list by_field                  # per header slot: value -> entry, or None
    cdef int _or(self, uint64_t* c, dict index, object key) except -1
    cdef int _prefixes(self, uint64_t* c, bytes path) except -1
    cdef readonly Py_ssize_t nslots     # header-rule slots
    cdef readonly dict slots            # lower-case field name -> slot
    cdef Policy route(self, Facts f)


cdef bytes host_key(bytes host)
cdef bytes host_part(bytes host)
cdef bytes port_part(bytes host)
