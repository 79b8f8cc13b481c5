cdef class Member:
    """A backend server. `healthy` is set by the health checker (operations issue)."""
    cdef public str name
    cdef public str host                # an IP literal: hostnames resolve at load
    cdef public int port
    cdef public int weight
    cdef public bint healthy
    cdef public long active             # requests in flight
    cdef public list idle               # idle upstream connections, most recent last
    cdef long current_weight            # smooth WRR state

cdef class Pool:
    cdef public str name
    cdef public tuple members
    cdef Member pick(self, list tried)
