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
from libc.string cimport memcmp

# Memory RE2 may use per pattern for its automata: enough for any path rule,
# small enough that 100 policies of 10 regexes stay in a few MB.
DEF MAX_MEM = 1 << 20


cdef class Regex:
    def __cinit__(self, pattern, bint full=False, bint case_sensitive=True, prefix=None):
        """`pattern` (str or bytes, read as Latin-1 so every byte of a path
        or field matches as one character); `full`: the whole subject must
        match (wildcard values), else a match anywhere (path regexes, as
        nginx's `location ~` and HAProxy's path_reg search). `prefix`: bytes
        every matching subject starts with (a wildcard's literal start);
        found in the pattern when not given. A subject without them is
        refused before RE2 runs: most policies' regexes fail there, in a
        memcmp."""
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
        if prefix is None:
            prefix = literal_prefix(p.decode("latin-1")) if case_sensitive else ""
        self.prefix = (prefix.encode("latin-1") if isinstance(prefix, str) else prefix) or None

    def __dealloc__(self):
        if self.re != NULL:
            del self.re

    cdef bint match(self, bytes subject) noexcept:
        cdef Py_ssize_t n = PyBytes_GET_SIZE(subject)
        cdef Py_ssize_t k
        if self.prefix is not None:
            k = PyBytes_GET_SIZE(self.prefix)
            if n < k or memcmp(PyBytes_AS_STRING(subject), PyBytes_AS_STRING(self.prefix),
                               k) != 0:
                return False
        return self.re.Match(StringPiece(PyBytes_AS_STRING(subject), n), 0, n,
                             <RE2Anchor>self.anchor, NULL, 0)

    def matches(self, subject) -> bool:
        """For tests and the control plane."""
        return self.match(subject if isinstance(subject, bytes) else subject.encode("latin-1"))


_META = frozenset(".^$*+?()[]{}|\\")


def literal_prefix(pattern: str) -> str:
    """The characters every match of `pattern` starts the subject with, when
    that is certain: the pattern starts with ^, has no alternation, and the
    characters before its first metacharacter are not made optional or
    repeated by a quantifier. "" when nothing is certain."""
    if not pattern.startswith("^") or "|" in pattern:
        return ""
    body = pattern[1:]
    out = []
    for i, ch in enumerate(body):
        if ch in _META:
            break
        nxt = body[i + 1] if i + 1 < len(body) else ""
        if nxt in ("?", "*", "{"):
            break
        out.append(ch)
        if nxt == "+":
            break
    return "".join(out)


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
