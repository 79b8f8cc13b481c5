# cython: language_level=3
"""The per-event clock (see clock.pxd): one module, so that every module's
stamps read the same event time."""

cdef double _event_time = 0.0
cdef int _depth = 0


cdef double monotonic() noexcept nogil:
    if _depth:
        return _event_time
    return clock_now()


cdef void batch_begin() noexcept nogil:
    global _depth, _event_time
    if _depth == 0:
        _event_time = clock_now()
    _depth += 1


cdef void stamp() noexcept nogil:
    global _event_time
    _event_time = clock_now()


cdef void batch_end() noexcept nogil:
    global _depth
    if _depth > 0:
        _depth -= 1
