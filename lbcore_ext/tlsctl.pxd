cdef void* open_lib(str name) except NULL
cdef void* ssl_ctx_ptr(object context) except NULL
