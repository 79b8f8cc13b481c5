# cython: language_level=3
"""Member selection. The pool is immutable from the control plane's view: a
config reload or health change builds a new Pool and swaps the reference."""


cdef class Member:
    def __init__(self, str name, str host, int port, int weight=1):
        self.name = name
        self.host = host
        self.port = port
        self.weight = weight
        self.healthy = True
        self.active = 0
        self.idle = []
        self.current_weight = 0

    def __repr__(self):
        return f"<Member {self.name} {self.host}:{self.port} w={self.weight}>"


cdef class Pool:
    def __init__(self, str name, members):
        self.name = name
        self.members = tuple(members)

    cdef Member pick(self, list tried):
        """Smooth weighted round robin (nginx's algorithm): no bursts to one
        member, exact shares over a cycle. Skips weight 0, unhealthy members
        and those in `tried` (retries go to another member)."""
        cdef Member m, best = None
        cdef long total = 0
        for m in self.members:
            if m.weight <= 0 or not m.healthy:
                continue
            if tried is not None and m in tried:
                continue
            m.current_weight += m.weight
            total += m.weight
            if best is None or m.current_weight > best.current_weight:
                best = m
        if best is not None:
            best.current_weight -= total
        return best

    def pick_for_test(self, tried=None):
        """Python entry point for unit tests of the selection order."""
        return self.pick(tried)
