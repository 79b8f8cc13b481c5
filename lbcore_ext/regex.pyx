# cython: language_level=3
# distutils: language = c++
"""Linear-time regular expressions for forwarding policies: RE2 (Debian
libre2-dev at build time), called from C. No pattern a policy can hold makes
a match cost more than linear time in the subject, so no policy is a ReDoS.

Why not google-re2 from PyPI: it calls the same library through Python
objects, 2 us per failed search on a short path (measured); a policy table of
10 regexes would cost 20 us per request. From here a miss costs what RE2's
matcher costs, with no Python call and no allocation."""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE

# Memory RE2 may use per pattern for its automata: enough for any path rule,
# small enough that 100 policies of 10 regexes stay in a few MB.
DEF MAX_MEM = 1 << 20


cdef class Regex:
    def __cinit__(self, pattern, bint full=False, bint case_sensitive=True):
        """`pattern` (str or bytes, read as Latin-1 so every byte of a path
        or field matches as one character); `full`: the whole subject must
        match (wildcard values), else a match anywhere (path regexes, as
        nginx's `location ~` and HAProxy's path_reg search)."""
        cdef bytes p = pattern.encode("latin-1") if isinstance(pattern, str) else pattern
        cdef RE2.Options opts
        opts.set_log_errors(False)
        opts.set_max_mem(MAX_MEM)
        opts.set_encoding(EncodingLatin1)
        opts.set_dot_nl(True)
        opts.set_case_sensitive(case_sensitive)
        self.re = new RE2(StringPiece(PyBytes_AS_STRING(p), PyBytes_GET_SIZE(p)), opts)
        if not self.re.ok():
            msg = self.re.error().decode("utf-8", "replace")
            del self.re
            self.re = NULL
            raise ValueError(msg)
        self.anchor = ANCHOR_BOTH if full else UNANCHORED
        self.pattern = p

    def __dealloc__(self):
        if self.re != NULL:
            del self.re

    cdef bint match(self, bytes subject) noexcept:
        cdef Py_ssize_t n = PyBytes_GET_SIZE(subject)
        return self.re.Match(StringPiece(PyBytes_AS_STRING(subject), n), 0, n,
                             <RE2Anchor>self.anchor, NULL, 0)

    def matches(self, subject) -> bool:
        """For tests and the control plane."""
        return self.match(subject if isinstance(subject, bytes) else subject.encode("latin-1"))


def regex_error(pattern: str) -> str | None:
    """Why RE2 refuses `pattern` (lookarounds, backreferences...), or None."""
    try:
        Regex(pattern)
    except ValueError as exc:
        return str(exc)
    return None


def glob_regex(value: str) -> str:
    """A value with `*` (any run of characters) and `?` (one character) as
    an RE2 pattern for a whole-subject match; every other character literal."""
    out = []
    for ch in value:
        if ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        elif ch.isalnum():
            out.append(ch)
        else:
            out.append("\\x%02x" % ord(ch) if ord(ch) < 256 else ch)
    return "".join(out)
