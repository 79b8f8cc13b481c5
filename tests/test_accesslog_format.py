"""The C formatters of the access log (JSON, ELB's elb_01, nginx's combined)
against the readable Python ones, and the cutting of batches into writes
other workers can't split."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from lbcore.accesslog import ElbContext, atomic_chunks, to_combined, to_elb, to_json
from lbcore_ext.logfmt import combined_line, elb_line, json_line

field = st.one_of(st.none(), st.binary(max_size=40))
text = st.one_of(st.none(), st.text(max_size=20))
seconds = st.one_of(st.just(-1.0), st.floats(0, 100))
tries = st.lists(st.tuples(st.sampled_from(["10.0.0.1", "::1", "backend.local"]),
                           st.integers(1, 65535),
                           st.one_of(st.none(), st.binary(max_size=8),
                                     st.sampled_from([b"200", b"refused", b"connect_timeout",
                                                      b"503"])),
                           seconds, seconds, st.floats(0, 100), st.text(max_size=12)),
                 max_size=3)
entries = st.tuples(
    st.tuples(st.floats(1e9, 2e9), st.sampled_from([b"127.0.0.1", b"::1"]),
              st.integers(1, 65535).map(lambda p: b"%d" % p), field, field,
              st.sampled_from(["1.1", "1.0", "2", None, ""]), field, field, field, field, field,
              st.text(max_size=12), st.text(max_size=12),
              st.one_of(st.none(), st.tuples(st.sampled_from(["TLSv1.2", "TLSv1.3", None]),
                                             text, text, st.booleans())), text),
    st.integers(100, 599), st.floats(0, 1000), st.one_of(st.none(), tries),
    st.integers(0, 1 << 40), st.integers(0, 1 << 40), st.integers(0, 1 << 40))
contexts = st.builds(ElbContext, st.text(min_size=1, max_size=12),
                     st.sampled_from(["http", "https"]),
                     st.sampled_from(["-", "203.0.113.7"]), st.integers(1, 65535),
                     st.text(max_size=12)).map(ElbContext.as_tuple)


@settings(max_examples=400, deadline=None)
@given(entries)
def test_json_formatter_matches_the_reference(entry):
    line = json_line(entry)
    assert line == to_json(entry).encode("ascii")
    parsed = json.loads(line)
    assert parsed["status"] == entry[1] and parsed["bytes_sent"] == entry[5]


@settings(max_examples=400, deadline=None)
@given(entries, contexts)
def test_elb_formatter_matches_the_reference(entry, ctx):
    line = elb_line(entry, ctx)
    assert line == to_elb(entry, ctx).encode("utf-8")
    assert line.isascii()


@settings(max_examples=400, deadline=None)
@given(entries)
def test_combined_formatter_matches_the_reference(entry):
    line = combined_line(entry)
    assert line == to_combined(entry).encode("utf-8")
    assert line.isascii() and b"\n" not in line


META = (1796000000.5, b"127.0.0.1", b"5000", b"GET", b'/a"b\\c\n\x00\x7f\xe9', "1.1",
        b"rid", b"ua\tx", None, None, b"host", "web", "pool", ("TLSv1.3", "TLS_AES", "h", True),
        "api")
TRIES = [("10.0.0.1", 80, b"refused", -1.0, -1.0, 0.0002, "a"),
         ("10.0.0.2", 80, b"200", 0.000312, 0.0021, 0.0035, "b")]
ENTRY = (META, 200, 0.25, TRIES, 120, 300, 200)


def test_escapes_like_json():
    line = json_line(ENTRY)
    parsed = json.loads(line)
    assert parsed["target"] == '/a"b\\c\n\x00\x7f\xe9'
    assert parsed["tls"]["resumed"] is True
    assert [u["connect_s"] for u in parsed["upstream"]] == [None, 0.000312]
    assert line == to_json(ENTRY).encode()


def test_elb_line_has_33_fields_and_every_try():
    ctx = ElbContext("lb", "https", "-", 443, "site").as_tuple()
    line = elb_line(ENTRY, ctx).decode()
    assert '"502, 200"' in line and '"-, 0.000"' in line and '"0.000, 0.004"' in line
    assert '"10.0.0.1:80, 10.0.0.2:80"' in line and '"a, b"' in line
    assert "/a\\x22b\\x5Cc\\x0A\\x00\\x7F\\xE9 HTTP/1.1" in line
    assert " 120 300 200 0.250 " in line and " -:443 " in line and " site TLSv1.3 " in line
    # Quoted fields may hold spaces: count the fields outside quotes.
    fields, quoted = 1, False
    for ch in line:
        if ch == '"':
            quoted = not quoted
        elif ch == " " and not quoted:
            fields += 1
    assert fields == 33


@given(st.lists(st.binary(min_size=0, max_size=300).map(lambda b: b.replace(b"\n", b"")),
                max_size=60), st.integers(16, 1024))
def test_chunks_end_at_line_ends_and_fit(lines, limit):
    data = b"".join(line + b"\n" for line in lines)
    chunks = atomic_chunks(data, limit)
    assert b"".join(chunks) == data
    for chunk in chunks:
        assert chunk.endswith(b"\n")
        assert len(chunk) <= limit or chunk.count(b"\n") == 1
