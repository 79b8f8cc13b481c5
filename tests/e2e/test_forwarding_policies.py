"""Forwarding policies (spec 10), end to end over HTTP/1.1 and HTTP/2 alike:
every rule type and action, priority order, path normalisation (no policy
bypassed by spelling), the HTTP->HTTPS redirect, metrics and the access log.
Real lbcore, real TLS, three echo backends (pools pa, pb, pc = backends a,
b, c): a forward is proven by the backend's name, a local answer by none
of them seeing the request."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_metrics import scrape
from tests.support.lbproc import LbProcess, free_port, wait_port
from tests.support.rawh2 import H2Request, h2_request

POLICIES = """\
      - {name: host-exact, priority: 10, rules: [{type: host, values: [api.example.test]}],
         action: {type: forward, pool: pb}}
      - {name: host-wild, priority: 11, rules: [{type: host, values: ["*.wild.example.test"]}],
         action: {type: forward, pool: pc}}
      - {name: path-exact, priority: 20, rules: [{type: path, match: exact, values: [/exact]}],
         action: {type: forward, pool: pb}}
      - {name: path-prefix, priority: 21, rules: [{type: path, values: [/pre/]}],
         action: {type: forward, pool: pc}}
      - {name: path-regex, priority: 22,
         rules: [{type: path, match: regex, values: ["^/re/[0-9]+$"]}],
         action: {type: forward, pool: pb}}
      - {name: method, priority: 30,
         rules: [{type: method, values: [DELETE]}, {type: path, values: [/m/]}],
         action: {type: forward, pool: pc}}
      - {name: header, priority: 40,
         rules: [{type: header, name: X-Canary, values: ["yes", "b*t?"]}],
         action: {type: forward, pool: pb}}
      - {name: query, priority: 50, rules: [{type: query, name: v, values: ["2 x", "k*"]}],
         action: {type: forward, pool: pc}}
      - {name: cookie, priority: 60, rules: [{type: cookie, name: beta, values: ["on"]}],
         action: {type: forward, pool: pb}}
      - {name: src-other, priority: 69,
         rules: [{type: source_ip, values: ["10.0.0.0/8", "fd00::/8"]},
                 {type: path, values: [/src]}],
         action: {type: fixed_response, status: 403, body: "not you"}}
      - {name: src-local, priority: 70,
         rules: [{type: source_ip, values: ["127.0.0.0/8"]}, {type: path, values: [/src]}],
         action: {type: forward, pool: pc}}
      - {name: fixed, priority: 90, rules: [{type: path, match: exact, values: [/fixed]}],
         action: {type: fixed_response, status: 418, content_type: application/json,
                  body: '{"teapot": true}'}}
      - {name: moved, priority: 91, rules: [{type: path, values: [/old/]}],
         action: {type: redirect, status: 302,
                  url: {path: "/new${path}", query: "${query}&r=1"}}}
      - {name: headers, priority: 92, rules: [{type: path, values: [/hdr]}],
         action: {type: forward, pool: pb, insert_headers: {X-Added: v1, X-Replaced: new},
                  remove_headers: [X-Secret]}}
      - {name: rewrite, priority: 93, rules: [{type: path, values: [/rw/]}],
         action: {type: forward, pool: pc,
                  rewrite_url: {host: internal.test, path: "/internal${path}", query: a=1}}}
      - {name: prio-low, priority: 101, rules: [{type: path, values: [/prio]}],
         action: {type: forward, pool: pc}}
      - {name: prio-high, priority: 100, rules: [{type: path, values: [/prio]}],
         action: {type: forward, pool: pb}}
"""


@pytest.fixture
def site(tmp_path, certs, backends):
    a, b, c = backends(3)
    port, plain, admin = free_port(), free_port(), free_port()
    log = tmp_path / "access.log"
    text = f"""\
load_balancer: {{workers: 1, admin: {{port: {admin}}}, access_log: {{path: {log}}}}}
certificates:
  site: {{type: server, certificate: {certs['crt']}, private_key: {certs['key']}}}
listeners:
  - name: web
    protocol: HTTPS
    address: 127.0.0.1
    port: {port}
    http2: true
    server_certificate: site
    default_pool: pa
    forwarding_policies:
{POLICIES}
  - name: plain
    protocol: HTTP
    address: 127.0.0.1
    port: {plain}
    default_pool: pa
    forwarding_policies:
      - {{name: to-https, priority: 0, rules: [],
         action: {{type: redirect, status: 308, url: {{protocol: HTTPS, port: {port}}}}}}}
pools:
  pa: {{health_check: {{enabled: false}}, members: [{{address: 127.0.0.1, port: {a}}}]}}
  pb: {{health_check: {{enabled: false}}, members: [{{address: 127.0.0.1, port: {b}}}]}}
  pc: {{health_check: {{enabled: false}}, members: [{{address: 127.0.0.1, port: {c}}}]}}
"""
    (tmp_path / "lb.yaml").write_text(text)
    check = LbProcess(["check", "-c", str(tmp_path / "lb.yaml")])
    check.proc.wait(30)
    assert check.proc.returncode == 0, check.stop()
    lb = LbProcess(["run", "-c", str(tmp_path / "lb.yaml")])
    try:
        for p in (port, plain, admin):
            wait_port(p, lb.proc)
        yield {"port": port, "plain": plain, "admin": admin, "ca": str(certs["ca"]),
               "log": log}
    finally:
        out, err = lb.stop()
        print(err[-3000:])


class Reply:
    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def header(self, name: str) -> str | None:
        for n, v in self.headers:
            if n.lower() == name.lower():
                return v
        return None

    @property
    def backend(self) -> str | None:
        """The echo backend's name, None when no backend answered."""
        try:
            return json.loads(self.body)["name"]
        except (ValueError, KeyError, TypeError):
            return None

    @property
    def seen(self) -> dict:
        return json.loads(self.body)


def _tls(site, alpn: str) -> ssl.SSLSocket:
    if site["ca"] is None:                   # an example's own certificates: not verified
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx = ssl.create_default_context(cafile=site["ca"])
    ctx.set_alpn_protocols([alpn])
    sock = socket.create_connection(("127.0.0.1", site["port"]), timeout=5)
    return ctx.wrap_socket(sock, server_hostname="localhost")


def _parse_h1(data: bytes) -> Reply:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:]]
    return Reply(int(lines[0].split()[1]), headers, body)


def h1_raw(port: int, raw: bytes, sock: socket.socket | None = None) -> Reply:
    s = sock or socket.create_connection(("127.0.0.1", port), timeout=5)
    with s:
        s.sendall(raw)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return _parse_h1(data)


def request(site, proto: str, path: str, method: str = "GET", host: str | None = None,
            headers: tuple = ()) -> Reply:
    """One request, the path sent exactly as given (no client-side cleaning)."""
    host = host or f"127.0.0.1:{site['port']}"
    if proto == "h1":
        fields = "".join(f"{n}: {v}\r\n" for n, v in headers)
        raw = (f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{fields}"
               f"Connection: close\r\n\r\n").encode()
        return h1_raw(site["port"], raw, _tls(site, "http/1.1"))
    sock = _tls(site, "h2")
    with sock:
        res = h2_request(sock, H2Request([(b":method", method.encode()), (b":scheme", b"https"),
                                          (b":authority", host.encode()),
                                          (b":path", path.encode())]
                                         + [(n.lower().encode(), v.encode())
                                            for n, v in headers]), timeout=5)
    if res.status is None and res.reset == 1:
        # HTTP/2's 400: a request lbcore refuses as malformed is reset with
        # PROTOCOL_ERROR (RFC 9113 8.1.1), counted and logged as a 400.
        return Reply(400, [], b"")
    assert res.status is not None, res.describe()
    return Reply(res.status, [(n.decode(), v.decode()) for n, v in res.headers
                              if not n.startswith(b":")], res.body)


PROTOS = ["h1", "h2"]


@pytest.mark.parametrize("proto", PROTOS)
def test_rule_types_route_to_their_pools(site, proto):
    cases = [
        # (path, method, host, headers) -> backend
        (("/", "GET", None, ()), "a"),                                   # no match: default
        (("/", "GET", "api.example.test", ()), "b"),
        (("/", "GET", "API.Example.Test.:443", ()), "b"),               # case, port, dot
        (("/", "GET", "x.y.wild.example.test", ()), "c"),
        (("/", "GET", "wild.example.test", ()), "a"),                   # *. needs a label
        (("/exact", "GET", None, ()), "b"),
        (("/exact/more", "GET", None, ()), "a"),
        (("/exact?q=1", "GET", None, ()), "b"),                         # query not in path
        (("/pre/x", "GET", None, ()), "c"),
        (("/re/123", "GET", None, ()), "b"),
        (("/re/12a", "GET", None, ()), "a"),
        (("/m/1", "DELETE", None, ()), "c"),
        (("/m/1", "GET", None, ()), "a"),                               # AND: method too
        (("/", "GET", None, (("X-Canary", "YES"),)), "b"),              # header: any case
        (("/", "GET", None, (("X-Canary", "Bolts"),)), "b"),            # b*t?
        (("/", "GET", None, (("X-Canary", "bot"),)), "a"),              # ? is one char
        (("/?v=2%20x", "GET", None, ()), "c"),                          # decoded
        (("/?a=1&v=2+x", "GET", None, ()), "c"),
        (("/?v=kite", "GET", None, ()), "c"),
        (("/?v=3", "GET", None, ()), "a"),
        (("/", "GET", None, (("Cookie", "a=1; beta=on"),)), "b"),
        (("/", "GET", None, (("Cookie", "beta=off"),)), "a"),
        (("/src", "GET", None, ()), "c"),                               # 127/8, not 10/8
        (("/prio", "GET", None, ()), "b"),                              # priority 100 < 101
    ]
    for (path, method, host, headers), want in cases:
        got = request(site, proto, path, method, host, headers)
        assert got.status == 200 and got.backend == want, (proto, path, host, headers,
                                                           got.status, got.body[:200])


@pytest.mark.parametrize("proto", PROTOS)
def test_fixed_response_and_redirect_never_reach_a_backend(site, proto):
    got = request(site, proto, "/fixed")
    assert got.status == 418 and got.body == b'{"teapot": true}'
    assert got.header("content-type") == "application/json"
    got = request(site, proto, "/old/x?q=1")
    assert got.status == 302 and got.backend is None
    assert got.header("location") == f"https://127.0.0.1:{site['port']}/new/old/x?q=1&r=1"
    got = request(site, proto, "/fixed", method="HEAD")
    assert got.status == 418 and got.body == b""


@pytest.mark.parametrize("proto", PROTOS)
def test_forward_inserts_removes_and_rewrites(site, proto):
    got = request(site, proto, "/hdr", headers=(("X-Secret", "s"), ("X-Replaced", "old"),
                                                ("X-Kept", "k")))
    fields = [(n.lower(), v) for n, v in got.seen["headers"]]
    assert ("x-added", "v1") in fields and ("x-replaced", "new") in fields
    assert ("x-kept", "k") in fields
    assert not any(n in ("x-secret",) for n, _ in fields)
    assert [v for n, v in fields if n == "x-replaced"] == ["new"]
    got = request(site, proto, "/rw/a?b=2")
    assert got.backend == "c" and got.seen["path"] == "/internal/rw/a?a=1"
    fields = [(n.lower(), v) for n, v in got.seen["headers"]]
    assert [v for n, v in fields if n == "host"] == ["internal.test"]
    assert ("x-forwarded-host", f"127.0.0.1:{site['port']}") in fields


@pytest.mark.parametrize("proto", PROTOS)
@pytest.mark.parametrize("spelling", ["/pre/../exact", "/%65xact", "//exact", "/a/%2e%2E/exact",
                                      "/./exact", "/x/./../exact"])
def test_spelled_paths_match_and_forward_normalised(site, proto, spelling):
    got = request(site, proto, spelling)
    assert got.backend == "b" and got.seen["path"] == "/exact", (spelling, got.body[:200])


@pytest.mark.parametrize("proto", PROTOS)
def test_paths_that_cannot_be_normalised_are_refused(site, proto):
    for bad in ("/../exact", "/a/%2e%2e/%2e%2e/x", "/%00", "/%zz"):
        got = request(site, proto, bad)
        assert got.status == 400 and got.backend is None, bad
    got = request(site, proto, "/pre/a%2fb")            # an encoded slash stays data
    assert got.backend == "c" and got.seen["path"] == "/pre/a%2Fb"


def test_http_to_https_redirect_keeps_path_and_query(site):
    got = h1_raw(site["plain"], f"GET /a/b?x=1&y=%20 HTTP/1.1\r\nHost: 127.0.0.1:{site['plain']}"
                 "\r\nConnection: close\r\n\r\n".encode())
    assert got.status == 308 and got.backend is None
    assert got.header("location") == f"https://127.0.0.1:{site['port']}/a/b?x=1&y=%20"
    got = h1_raw(site["plain"], b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\nConnection: close\r\n\r\n")
    assert got.header("location") == f"https://[::1]:{site['port']}/"
    got = h1_raw(site["plain"], b"GET / HTTP/1.1\r\nHost: www.example.test\r\n"
                 b"Connection: close\r\n\r\n")
    assert got.header("location") == f"https://www.example.test:{site['port']}/"
    r = httpx.get(f"http://127.0.0.1:{site['plain']}/p?q=1", follow_redirects=True,
                  verify=ssl.create_default_context(cafile=site["ca"]))
    assert r.status_code == 200 and r.json()["name"] == "a" and r.json()["path"] == "/p?q=1"


def test_absolute_form_host_is_the_routed_host(site):
    """HTTP/1.1 absolute-form: the target's authority is the host policies
    see and the member gets origin-form (one host per request)."""
    got = h1_raw(site["port"], b"GET https://api.example.test/z HTTP/1.1\r\n"
                 b"Host: api.example.test\r\nConnection: close\r\n\r\n", _tls(site, "http/1.1"))
    assert got.backend == "b" and got.seen["path"] == "/z"
    got = h1_raw(site["port"], b"GET https://api.example.test/z HTTP/1.1\r\n"
                 b"Host: other.test\r\nConnection: close\r\n\r\n", _tls(site, "http/1.1"))
    assert got.status == 400


def test_metrics_and_access_log_name_the_policy(site):
    before = scrape(site["admin"])
    for proto in PROTOS:
        request(site, proto, "/exact")
        request(site, proto, "/fixed")
    time.sleep(0.3)
    after = scrape(site["admin"])

    def delta(name, labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    m = "lbcore_forwarding_policy_matches_total"
    assert delta(m, {"listener": "web", "policy": "path-exact", "action": "forward"}) == 2
    assert delta(m, {"listener": "web", "policy": "fixed", "action": "fixed_response"}) == 2
    r = "lbcore_responses_total"
    assert delta(r, {"listener": "web", "pool": "pb", "code": "2xx"}) == 2
    assert delta(r, {"listener": "web", "pool": "", "code": "4xx"}) == 2
    assert delta(r, {"listener": "web", "pool": "pa", "code": "2xx"}) == 0
    lines = [json.loads(x) for x in site["log"].read_text().splitlines()]
    exact = [x for x in lines if x["target"] == "/exact"]
    assert exact and all(x["policy"] == "path-exact" and x["pool"] == "pb" for x in exact)
    status = httpx.get(f"http://127.0.0.1:{site['admin']}/status").json()
    web = next(x for x in status["listeners"] if x["name"] == "web")
    assert [p["name"] for p in web["forwarding_policies"]][:2] == ["host-exact", "host-wild"]


def test_local_answers_keep_the_connection_and_pipelining_order(site):
    """A redirect or fixed response to a request without a body keeps the
    HTTP/1.1 connection; behind a pipelined request still in flight it waits
    its turn."""
    with socket.create_connection(("127.0.0.1", site["plain"]), timeout=5) as s:
        for _ in range(3):
            s.sendall(b"GET /x HTTP/1.1\r\nHost: a.test\r\n\r\n")
            head = b""
            while b"\r\n\r\n" not in head:
                head += s.recv(4096)
            assert head.startswith(b"HTTP/1.1 308 ") and b"Connection: close" not in head
    with _tls(site, "http/1.1") as s:
        s.sendall(b"GET /exact HTTP/1.1\r\nHost: x\r\n\r\n"
                  b"GET /fixed HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        deadline = time.monotonic() + 5
        while data.count(b"HTTP/1.1 ") < 2 and time.monotonic() < deadline:
            data += s.recv(65536)
        first, second = data.index(b"HTTP/1.1 200"), data.index(b"HTTP/1.1 418")
        assert first < second, data[:300]


@contextlib.contextmanager
def example(tmp_path, name: str, backends):
    """examples/<name>, run as written but for its certificate files (made
    here), its ports (free ones on 127.0.0.1) and its members (echo
    backends a, b, c... in pool order, health checks off). Yields (ports by
    listener name, backend name by pool name, site for request())."""
    import yaml

    from tests.support.lbproc import LbProcess as Lb
    from tests.test_docs import make_certificates

    root = Path(__file__).resolve().parents[2]
    text = (root / "examples" / name).read_text()
    make_certificates(text, tmp_path)
    cfg = yaml.safe_load(text)
    for c in cfg["certificates"].values():
        for k in ("certificate", "private_key", "crl"):
            if c.get(k):
                c[k] = str(tmp_path / c[k])
    lb_cfg = cfg.setdefault("load_balancer", {})
    lb_cfg.update(workers=1, admin={"address": "127.0.0.1", "port": free_port()},
                  access_log={"path": "off"})
    ports = {}
    for lst in cfg["listeners"]:
        lst["address"], lst["port"] = "127.0.0.1", free_port()
        ports[lst["name"]] = lst["port"]
    names = {}
    for (pool_name, pool), port in zip(cfg["pools"].items(), backends(len(cfg["pools"])),
                                       strict=True):
        pool["members"] = [{"address": "127.0.0.1", "port": port}]
        pool["health_check"] = {"enabled": False}
        names[pool_name] = "abcdefgh"[len(names)]
    (tmp_path / "lb.yaml").write_text(yaml.safe_dump(cfg))
    lb = Lb(["run", "-c", str(tmp_path / "lb.yaml")])
    try:
        for p in ports.values():
            wait_port(p, lb.proc)
        yield ports, names, lambda listener: {"port": ports[listener], "ca": None}
    finally:
        lb.stop()


def test_the_http_to_https_example_acts_as_written(tmp_path, backends):
    """examples/http-to-https.yaml: every policy does what its comment says."""
    with example(tmp_path, "http-to-https.yaml", backends) as (ports, names, site_of):
        got = h1_raw(ports["http"], b"GET /a?b=1 HTTP/1.1\r\nHost: www.example.com\r\n"
                     b"Connection: close\r\n\r\n")
        assert got.status == 308 and got.header("location") == "https://www.example.com/a?b=1"
        site = site_of("https")
        for proto in PROTOS:
            assert request(site, proto, "/v1/x", host="api.example.com").backend == names["api"]
            assert request(site, proto, "/v1/x").backend == names["web"]
            got = request(site, proto, "/docs", host="www.example.com")
            assert got.status == 301
            assert got.header("location") == "https://www.example.com/documentation"
            got = request(site, proto, "/admin/users")
            assert got.status == 503 and got.body == b"down for maintenance\n"
            assert request(site, proto, "/search?q=x").backend == names["web"]
            canary = {request(site, proto, "/", headers=(("X-Canary", "1"),)).backend
                      for _ in range(10)}
            assert canary == {names["web"], names["web-canary"]}, canary   # 90/10: 9 + 1


def test_the_reference_example_acts_as_written(tmp_path, backends):
    """examples/reference.yaml (every key set): its policies, as written."""
    with example(tmp_path, "reference.yaml", backends) as (ports, names, site_of):
        plain = next(n for n in ports if n != "https-443")
        got = h1_raw(ports[plain], b"GET /x HTTP/1.1\r\nHost: www.example.com\r\n"
                     b"Connection: close\r\n\r\n")
        assert got.status == 308 and got.header("location") == "https://www.example.com:8443/x"
        site = site_of("https-443")
        for proto in PROTOS:
            got = request(site, proto, "/v1/users", host="api.example.com",
                          headers=(("X-Api-Version", "1.2"),))
            assert got.backend == names["api"], got.body[:200]
            got = request(site, proto, "/docs", host="www.example.com")
            assert got.status == 301
            assert got.header("location") == "https://docs.example.com/documentation?from=www"
            got = request(site, proto, "/robots.txt")
            assert got.status == 200 and got.body == b"User-agent: *\nDisallow:\n"
            got = request(site, proto, "/app/42?x=1", headers=(
                ("Cookie", "beta=team-blue"), ("X-Debug", "1"), ("X-Beta", "0")))
            assert got.backend == names["api"]
            fields = [(n.lower(), v) for n, v in got.seen["headers"]]
            assert got.seen["path"] == "/beta/app/42?x=1"
            assert ("host", "beta.internal") in fields and ("x-beta", "1") in fields
            assert not any(n in ("x-debug",) for n, _ in fields)
            assert [v for n, v in fields if n == "x-beta"] == ["1"]
            assert request(site, proto, "/other").backend == names["web"]
