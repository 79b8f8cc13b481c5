"""Health checks against real listeners: thresholds, expected codes, TCP mode,
and a dead member taken out of rotation by the data plane."""

from __future__ import annotations

import asyncio

import uvloop

from lbcore.health import HealthChecker, Target, parse_expected, probe


def target(port, protocol="HTTP", expected="200", interval=0.05, healthy=2, unhealthy=2):
    return Target(pool="p", index=0, name="m", host="127.0.0.1", port=port, protocol=protocol,
                  method="GET", path="/healthz", domain="svc.test", interval=interval,
                  timeout=0.5, healthy_threshold=healthy, unhealthy_threshold=unhealthy,
                  expected=parse_expected(expected))


class Answer(asyncio.Protocol):
    status = 200
    seen: list = []

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.seen.append(data)
        self.transport.write(b"HTTP/1.1 %d X\r\nContent-Length: 0\r\n\r\n" % self.status)
        self.transport.close()


def test_parse_expected():
    assert parse_expected("200") == {200}
    assert parse_expected("200,202") == {200, 202}
    assert parse_expected("200-299") == set(range(200, 300))


def test_probe_http_and_tcp():
    async def run():
        loop = asyncio.get_running_loop()
        proto = type("A", (Answer,), {"status": 503, "seen": []})
        server = await loop.create_server(proto, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        results = [await probe(target(port)), await probe(target(port, expected="500-599")),
                   await probe(target(port, protocol="TCP"))]
        server.close()
        dead = await probe(target(port))
        return results, dead, proto.seen

    (bad, good, tcp), dead, seen = uvloop.run(run())
    assert bad == (False, "status 503") and good == (True, "status 503") and tcp[0]
    assert not dead[0]
    assert seen[0].startswith(b"GET /healthz HTTP/1.1\r\nHost: svc.test\r\n")


def test_thresholds_and_transitions():
    async def run():
        loop = asyncio.get_running_loop()
        proto = type("A", (Answer,), {"status": 200, "seen": []})
        server = await loop.create_server(proto, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        events = []
        checker = HealthChecker([target(port)], lambda t, ok: events.append(ok))
        checker.start()
        await asyncio.sleep(0.3)
        proto.status = 500                      # fails from now on
        await asyncio.sleep(0.5)
        proto.status = 200
        await asyncio.sleep(0.5)
        await checker.stop()
        server.close()
        return events

    events = uvloop.run(run())
    assert events == [True, False, True]
