"""The Phases seam through real sockets: the example plugin's hooks fire, and
hooks that are not overridden are never called."""

from __future__ import annotations

import asyncio
import functools
import sys
from pathlib import Path

import uvloop

from lbcore.phases import Phases, hook_mask
from lbcore_ext.balancer import Member, Pool
from lbcore_ext.http1 import HttpProtocol
from lbcore_ext.phases import HOOK_LOGGING
from lbcore_ext.runtime import H_CONNECTION, H_HOST, ListenerRuntime

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "docs" / "examples"))
from tenant_phases import TenantPhases  # noqa: E402

from tests.support.inproc import HeadEcho  # noqa: E402


async def fetch(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    data = await asyncio.wait_for(reader.read(65536), 5)
    writer.close()
    return data


def runtime(port: int, phases) -> ListenerRuntime:
    lrt = ListenerRuntime("test", Pool("p", [Member("m", "127.0.0.1", port, 1)]))
    lrt.header_actions = {b"connection": H_CONNECTION, b"host": H_HOST}
    lrt.phases, lrt.hooks = phases, hook_mask(phases)
    return lrt


async def scenario(phases, dead_backend=False):
    loop = asyncio.get_running_loop()
    backend = await loop.create_server(HeadEcho, "127.0.0.1", 0)
    bport = backend.sockets[0].getsockname()[1]
    if dead_backend:
        backend.close()
        await backend.wait_closed()
    lb = await loop.create_server(functools.partial(HttpProtocol, runtime(bport, phases)),
                                  "127.0.0.1", 0)
    port = lb.sockets[0].getsockname()[1]
    try:
        return [await fetch(port, b"GET /x HTTP/1.1\r\nHost: acme.example.com\r\n\r\n"),
                await fetch(port, b"GET /admin HTTP/1.1\r\nHost: a.b\r\n\r\n")]
    finally:
        lb.close()
        backend.close()


def test_example_plugin_hooks_fire():
    phases = TenantPhases()
    ok, admin = uvloop.run(scenario(phases))
    assert ok.startswith(b"HTTP/1.1 200")
    assert b"X-Tenant: acme" in ok                     # upstream_request_filter
    assert b"X-Tenant-Served: acme" in ok              # response_filter
    assert admin.startswith(b"HTTP/1.1 200")           # loopback may see /admin
    assert phases.statuses[200] == 2                   # logging


def test_fail_to_proxy_replaces_error_page():
    phases = TenantPhases()
    res, _ = uvloop.run(scenario(phases, dead_backend=True))
    assert res.startswith(b"HTTP/1.1 502") and b"right back" in res


def test_request_filter_answers_without_backend():
    class Deny(Phases):
        def request_filter(self, req):
            return 451, [("X-Why", "legal")], b"no"

    res, _ = uvloop.run(scenario(Deny()))
    assert res.startswith(b"HTTP/1.1 451") and b"X-Why: legal" in res and res.endswith(b"no")


def test_only_overridden_hooks_are_called():
    calls = []

    class OnlyLogging(Phases):
        def logging(self, req, status, member):
            calls.append(status)

    assert hook_mask(OnlyLogging()) == HOOK_LOGGING
    assert hook_mask(Phases()) == 0
    res, _ = uvloop.run(scenario(OnlyLogging()))
    assert res.startswith(b"HTTP/1.1 200") and calls == [200, 200]


def test_hook_header_injection_is_refused():
    class Evil(Phases):
        def upstream_request_filter(self, req):
            return [("X-A", "1\r\nX-Injected: 1")]

    res, _ = uvloop.run(scenario(Evil()))
    assert res.startswith(b"HTTP/1.1 400") and b"X-Injected" not in res
