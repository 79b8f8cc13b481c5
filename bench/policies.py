"""The policies_100 scenario: 100 routing rules on one listener, the request
matching only the last, written alike for lbcore (forwarding_policies),
HAProxy (use_backend ... if ACLs, evaluated in order) and nginx (server_name
for host rules, location blocks for paths, a map for the header rules).

The 100: policy i (priority i + 1) is a host rule (h<i>.bench.test) when
i % 3 == 0, a path prefix (/p<i>/) when i % 3 == 1, a header rule
(X-Route: r<i>) when i % 3 == 2, except ten path regexes (^/re<i>/[0-9]+$
for i = 5, 15, ... 95); the last, i = 99, needs host bench.test AND path
prefix /last/ AND X-Route: go, which is what the load sends. lbcore's host
index skips the 33 policies of other hosts; the other 67 are walked."""

from __future__ import annotations

N = 100
HOST = "bench.test"
PATH = "/last/x"
HEADERS = (("Host", HOST), ("X-Route", "go"))
REGEXES = range(5, 100, 10)


def kinds() -> list[tuple[str, str]]:
    """(kind, value) of policies 0..98."""
    out = []
    for i in range(N - 1):
        if i in REGEXES:
            out.append(("regex", f"^/re{i}/[0-9]+$"))
        elif i % 3 == 0:
            out.append(("host", f"h{i}.bench.test"))
        elif i % 3 == 1:
            out.append(("prefix", f"/p{i}/"))
        else:
            out.append(("header", f"r{i}"))
    return out


def lbcore_listener(port: int, pool: str) -> str:
    """A listener of lbcore.yaml (indented as a list item under listeners:)."""
    rules = {"host": "{{type: host, values: [{v}]}}",
             "prefix": "{{type: path, values: [{v}]}}",
             "regex": "{{type: path, match: regex, values: ['{v}']}}",
             "header": "{{type: header, name: X-Route, values: [{v}]}}"}
    lines = [f"  - {{name: pol, protocol: HTTP, address: 127.0.0.1, port: {port}, "
             f"default_pool: {pool},",
             "     idle_timeout: 120, insert_headers: {x_real_ip: false, x_forwarded_host: false},",
             "     forwarding_policies: ["]
    for i, (kind, v) in enumerate(kinds()):
        lines.append(f"       {{name: p{i}, priority: {i + 1}, rules: [{rules[kind].format(v=v)}],"
                     f" action: {{type: forward, pool: {pool}}}}},")
    lines.append(f"       {{name: last, priority: {N}, rules: [{{type: host, values: [{HOST}]}}, "
                 "{type: path, values: [/last/]}, {type: header, name: X-Route, values: [go]}],"
                 f" action: {{type: forward, pool: {pool}}}}}]}}")
    return "\n".join(lines) + "\n"


def haproxy_frontend(port: int, backend: str) -> str:
    acl = {"host": "hdr(host) -i {v}", "prefix": "path_beg {v}", "regex": "path_reg {v}",
           "header": "req.hdr(x-route) -m str {v}"}
    lines = [f"frontend pol\n    bind 127.0.0.1:{port} backlog 4096"]
    for kind, v in kinds():
        lines.append(f"    use_backend {backend} if {{ {acl[kind].format(v=v)} }}")
    lines.append(f"    use_backend {backend} if {{ hdr(host) -i {HOST} }} {{ path_beg /last/ }} "
                 "{ req.hdr(x-route) -m str go }")
    lines.append(f"    default_backend {backend}")
    return "\n".join(lines) + "\n"


def nginx_servers(port: int, upstream: str) -> str:
    """Host rules as servers of their own; paths as locations of bench.test's
    server; header rules through a map (nginx matches headers no other way)."""
    out = []
    headers = [v for kind, v in kinds() if kind == "header"]
    out.append("  map $http_x_route $pol_route { default 0; "
               + " ".join(f"{v} 1;" for v in headers) + " go 2; }")
    for kind, v in kinds():
        if kind == "host":
            out.append(f"  server {{ listen 127.0.0.1:{port}; server_name {v}; "
                       f"location / {{ proxy_pass http://{upstream}; }} }}")
    locs = [f"location / {{ if ($pol_route = 1) {{ proxy_pass http://{upstream}; }} "
            f"proxy_pass http://{upstream}; }}"]
    for kind, v in kinds():
        if kind == "prefix":
            locs.append(f"location {v} {{ proxy_pass http://{upstream}; }}")
        elif kind == "regex":
            locs.append(f"location ~ {v} {{ proxy_pass http://{upstream}; }}")
    locs.append(f"location /last/ {{ if ($pol_route = 2) {{ proxy_pass http://{upstream}; }} "
                f"proxy_pass http://{upstream}; }}")
    out.append(f"  server {{ listen 127.0.0.1:{port} backlog=4096 default_server; "
               f"server_name {HOST};\n    " + "\n    ".join(locs) + " }")
    return "\n".join(out) + "\n"
