"""The C JSON formatter of the access log against the readable Python one,
and the cutting of batches into writes other workers can't split."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from lbcore.accesslog import atomic_chunks, to_json
from lbcore_ext.logfmt import json_line

field = st.one_of(st.none(), st.binary(max_size=40))
text = st.one_of(st.none(), st.text(max_size=20))
tries = st.lists(st.tuples(st.sampled_from(["10.0.0.1", "::1", "backend.local"]),
                           st.integers(1, 65535), st.one_of(st.none(), st.binary(max_size=8))),
                 max_size=3)
entries = st.tuples(
    st.tuples(st.floats(1e9, 2e9), st.sampled_from([b"127.0.0.1", b"::1"]),
              st.integers(1, 65535).map(lambda p: b"%d" % p), field, field,
              st.sampled_from(["1.1", "1.0", "2", None, ""]), field, field, field, field, field,
              st.text(max_size=12), st.text(max_size=12),
              st.one_of(st.none(), st.tuples(st.sampled_from(["TLSv1.2", "TLSv1.3", None]),
                                             text, text)), text),
    st.integers(100, 599), st.floats(0, 1000), st.one_of(st.none(), tries))


@settings(max_examples=400, deadline=None)
@given(entries)
def test_c_formatter_matches_the_reference(entry):
    line = json_line(entry)
    assert line == to_json(entry).encode("ascii")
    parsed = json.loads(line)
    assert parsed["status"] == entry[1]


def test_escapes_like_json():
    meta = (1796000000.5, b"127.0.0.1", b"5000", b"GET", b'/a"b\\c\n\x00\x7f\xe9', "1.1",
            b"rid", b"ua\tx", None, None, b"host", "web", "pool", ("TLSv1.3", "TLS_AES", "h"),
            "api")
    line = json_line((meta, 200, 0.25, [("10.0.0.1", 80, b"200")]))
    assert json.loads(line)["target"] == '/a"b\\c\n\x00\x7f\xe9'
    assert line == to_json((meta, 200, 0.25, [("10.0.0.1", 80, b"200")])).encode()


@given(st.lists(st.binary(min_size=0, max_size=300).map(lambda b: b.replace(b"\n", b"")),
                max_size=60), st.integers(16, 1024))
def test_chunks_end_at_line_ends_and_fit(lines, limit):
    data = b"".join(line + b"\n" for line in lines)
    chunks = atomic_chunks(data, limit)
    assert b"".join(chunks) == data
    for chunk in chunks:
        assert chunk.endswith(b"\n")
        assert len(chunk) <= limit or chunk.count(b"\n") == 1
