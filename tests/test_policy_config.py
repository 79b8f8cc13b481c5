"""What `lbcore check` refuses in forwarding policies (spec 10), all faults
of a file at once with file:line, and the compiled table's matching and
weighted choice (hypothesis) without a network."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from lbcore.config import load_config_text
from lbcore.runtime_build import build_runtime
from tests.test_config import errors_of

HEAD = """\
listeners:
  - name: web
    protocol: HTTP
    port: 8080
    default_pool: p
    forwarding_policies:
"""
POOLS = """\
pools:
  p: {members: [{address: 127.0.0.1, port: 9000}]}
  q: {members: [{address: 127.0.0.1, port: 9001}]}
  r: {members: [{address: 127.0.0.1, port: 9002}]}
"""


def policies(*lines: str) -> str:
    return HEAD + "".join(f"      - {line}\n" for line in lines) + POOLS


def test_check_refuses_every_fault_at_once_with_lines():
    text = policies(
        "{name: a, priority: 1, action: {type: forward, pool: nope}}",                   # 7
        "{name: b, priority: 1, action: {type: forward, pool: q}}",                      # 8
        "{name: c, priority: 2, action: {type: forward, pool: q, insert_headers: {X-Real-IP: x}}}",
        "{name: d, priority: 3, action: {type: forward, pool: q, remove_headers: [Host]}}",
        "{name: e, priority: 4, rules: [{type: path, match: regex, values: ['(?=x)y']}],"
        " action: {type: forward, pool: q}}",                                            # 11
        "{name: e, priority: 5, action: {type: forward, pool: q}}",                      # 12
        "{name: f, priority: 6, rules: [{type: header, name: Host, values: [x]}],"
        " action: {type: forward, pool: q}}",
    )
    errors = errors_of(text)
    joined = "\n".join(errors)
    assert "lb.yaml:7" in joined and "no pool named 'nope'" in joined
    assert "lb.yaml:8" in joined and "priority 1 is also used by 'a'" in joined
    assert "lb.yaml:9" in joined and "X-Real-IP is a header lbcore owns" in joined
    assert "lb.yaml:10" in joined and "Host is a header lbcore owns" in joined
    assert "lb.yaml:11" in joined and "RE2" in joined
    assert "lb.yaml:12" in joined and "'e' is also the name" in joined
    assert "lb.yaml:13" in joined and "use a host rule" in joined
    assert len(errors) == 7, errors


def test_elb_limits_100_policies_and_10_rules():
    many = [f"{{name: p{i}, priority: {i}, action: {{type: forward, pool: q}}}}"
            for i in range(101)]
    assert any("101 policies; at most 100" in e for e in errors_of(policies(*many)))
    rules = ", ".join(f"{{type: header, name: X-{i}, values: [v]}}" for i in range(11))
    text = policies(f"{{name: a, priority: 1, rules: [{rules}], "
                    "action: {type: forward, pool: q}}")
    assert any("11 rules; at most 10" in e for e in errors_of(text))


def test_model_refuses_malformed_rules_and_actions():
    bad = [
        ("{name: a, priority: 1, rules: [{type: header, values: [x]}], "
         "action: {type: forward, pool: q}}", "needs a name"),
        ("{name: a, priority: 1, rules: [{type: host, match: exact, values: [x.test]}], "
         "action: {type: forward, pool: q}}", "match applies to path rules only"),
        ("{name: a, priority: 1, rules: [{type: path, values: [nothing]}], "
         "action: {type: forward, pool: q}}", "must start with /"),
        ("{name: a, priority: 1, action: {type: forward, pool: q, pools: {r: 1}}}",
         "exactly one of pool or pools"),
        ("{name: a, priority: 1, action: {type: forward, pools: {q: 0, r: 0}}}",
         "at least one weight above 0"),
        ("{name: a, priority: 1, action: {type: fixed_response, status: 302}}", "use redirect"),
        ("{name: a, priority: 1, action: {type: fixed_response, body: " + "x" * 1025 + "}}",
         "1024"),
        ("{name: a, priority: 1, action: {type: redirect, status: 200, url: {path: /x}}}",
         "301"),
    ]
    for line, message in bad:
        errors = errors_of(policies(line))
        assert any(message in e for e in errors), (line, errors)


def table(*lines: str):
    cfg = load_config_text(policies(*lines), "lb.yaml")
    return build_runtime(cfg).listeners[0].policies


def test_priority_first_match_and_host_index():
    t = table(
        "{name: late, priority: 9, rules: [{type: host, values: [a.test]}], "
        "action: {type: forward, pool: q}}",
        "{name: early, priority: 2, rules: [{type: path, values: [/x]}], "
        "action: {type: forward, pool: r}}",
        "{name: wild, priority: 5, rules: [{type: host, values: ['*.test']}, "
        "{type: path, values: [/w]}], action: {type: forward, pool: r}}",
    )
    assert t.route_for_test(host=b"a.test", path=b"/x").name == "early"
    assert t.route_for_test(host=b"a.test", path=b"/y").name == "late"
    assert t.route_for_test(host=b"a.test", path=b"/w").name == "wild"
    assert t.route_for_test(host=b"b.test", path=b"/w").name == "wild"
    assert t.route_for_test(host=b"b.test", path=b"/y") is None
    assert t.route_for_test(host=b"test", path=b"/w") is None


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 100), min_size=2, max_size=4).filter(lambda w: sum(w) > 0))
def test_weighted_pools_follow_their_weights(weights):
    """Smooth WRR across pools: over whole cycles every pool gets exactly
    its share, so 10,000 requests are within 2% (and much closer)."""
    names = ["p", "q", "r", "p2"][:len(weights)]
    pools_yaml = "".join(f"  {n}: {{members: [{{address: 127.0.0.1, port: {9000 + i}}}]}}\n"
                         for i, n in enumerate(names))
    text = (HEAD + "      - {name: w, priority: 1, action: {type: forward, pools: {"
            + ", ".join(f"{n}: {w}" for n, w in zip(names, weights, strict=True)) + "}}}\n"
            + "pools:\n" + pools_yaml)
    t = build_runtime(load_config_text(text, "lb.yaml")).listeners[0].policies
    p = t.policies[0]
    n = 10_000
    got = Counter(t.choose_for_test(p) for _ in range(n))
    total = sum(weights)
    for name, w in zip(names, weights, strict=True):
        assert abs(got[name] - n * w / total) <= 0.02 * n, (weights, got)
        if w == 0:
            assert got[name] == 0


def test_check_cli_reports_policy_faults(tmp_path):
    path = tmp_path / "lb.yaml"
    path.write_text(policies("{name: a, priority: 1, action: {type: forward, pool: nope}}"))
    r = subprocess.run([sys.executable, "-m", "lbcore", "check", "-c", str(path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert f"{path}:7" in r.stdout + r.stderr and "nope" in r.stdout + r.stderr


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["host", "exact", "prefix", "method", "header",
                                           "regex", "glob", "none"]),
                          st.sampled_from(["a", "b", "ab"])), min_size=1, max_size=12),
       st.sampled_from([b"a.test", b"b.test", b"ab.test"]),
       st.sampled_from([b"/a", b"/b", b"/ab", b"/abx", b"/"]),
       st.sampled_from([b"GET", b"POST"]),
       st.sampled_from([None, b"a", b"b", b"AB"]))
def test_the_candidate_index_never_changes_the_answer(specs, host, path, method, field):
    """The indexes only skip policies that can't match: the first match is
    the one a plain walk of every policy in order finds."""
    rule = {"host": "{{type: host, values: [{v}.test]}}",
            "exact": "{{type: path, match: exact, values: [/{v}]}}",
            "prefix": "{{type: path, values: [/{v}]}}",
            "method": "{{type: method, values: [{m}]}}",
            "header": "{{type: header, name: X-K, values: [{v}]}}",
            "regex": "{{type: path, match: regex, values: ['^/{v}']}}",
            "glob": "{{type: header, name: X-K, values: ['{v}*']}}",
            "none": ""}
    lines = []
    for i, (kind, v) in enumerate(specs):
        r = rule[kind].format(v=v, m="GET" if v == "a" else "POST")
        lines.append(f"{{name: p{i}, priority: {i}, rules: [{r}], "
                     "action: {type: forward, pool: q}}")
    t = table(*lines)
    headers = [(b"x-k", field)] if field is not None else []
    got = t.route_for_test(method=method, host=host, path=path, headers=headers)
    walk = next((p for p in t.policies if t.matches_for_test(p, method=method, host=host,
                                                              path=path, headers=headers)),
                None)
    assert got is walk, (specs, host, path, method, field)
