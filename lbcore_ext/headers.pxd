cpdef bytes error_response(int code, bytes router_code=*, bint close=*)
cdef bytes chunk_header(Py_ssize_t n)
cpdef bytes header_line(object name, object value)
cpdef bytes reason_phrase(int status)
