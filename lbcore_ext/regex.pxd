# distutils: language = c++
from libc.stdint cimport int64_t
from libcpp.string cimport string


cdef extern from "re2/re2.h":
    cdef enum RE2Anchor "re2::RE2::Anchor":
        UNANCHORED "re2::RE2::UNANCHORED"
        ANCHOR_BOTH "re2::RE2::ANCHOR_BOTH"

    cdef enum RE2Encoding "re2::RE2::Options::Encoding":
        EncodingLatin1 "re2::RE2::Options::EncodingLatin1"


cdef extern from "re2/re2.h" namespace "re2":
    cdef cppclass StringPiece:
        StringPiece(const char* data, size_t len)

    cdef cppclass RE2:
        cppclass Options:
            Options()
            void set_case_sensitive(bint)
            void set_log_errors(bint)
            void set_max_mem(int64_t)
            void set_encoding(RE2Encoding)
            void set_dot_nl(bint)

        RE2(const StringPiece& pattern, const Options& options) except +
        bint ok()
        const string& error()
        bint Match(const StringPiece& text, size_t startpos, size_t endpos, RE2Anchor anchor,
                   StringPiece* submatch, int nsubmatch) const


cdef class Regex:
    """One compiled RE2 pattern; match() is C all the way (no Python call)."""
    cdef RE2* re
    cdef int anchor
    cdef readonly bytes pattern
    cdef readonly bytes prefix          # every match starts the subject with these bytes
    cdef bint match(self, bytes subject) noexcept
