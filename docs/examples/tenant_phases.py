"""An example Phases plugin: `lbcore run -c lb.yaml --phases tenant_phases:TenantPhases`
(with docs/examples on PYTHONPATH).

- refuses /admin to anyone but loopback clients, without touching a backend;
- tells the backend which tenant a request is for (from the Host's first label);
- stamps responses with the member that served them;
- replaces lbcore's 502/504 page with its own;
- counts responses by status."""

from collections import Counter

from lbcore.phases import Phases


class TenantPhases(Phases):
    def __init__(self) -> None:
        self.statuses: Counter[int] = Counter()

    def request_filter(self, req):
        if req.target.startswith(b"/admin") and req.client_ip not in ("127.0.0.1", "::1"):
            return 403, [("Content-Type", "text/plain")], b"admin is local only\n"
        return None

    def upstream_request_filter(self, req):
        host = (req.header("host") or b"").split(b":")[0]
        tenant = host.split(b".")[0] if b"." in host else b"default"
        req.ctx["tenant"] = tenant
        return [("X-Tenant", tenant)]

    def response_filter(self, req, status, headers):
        headers.append((b"X-Tenant-Served", req.ctx.get("tenant", b"")))

    def fail_to_proxy(self, req, status):
        # (status, headers, body): written in the client's framing, HTTP/1.1 or HTTP/2.
        return status, [("Content-Type", "text/html")], b"<h1>We'll be right back</h1>\n"

    def logging(self, req, status, member):
        self.statuses[status] += 1
