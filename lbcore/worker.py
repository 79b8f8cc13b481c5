"""One serving process: builds the runtime from the config model, opens the
listeners on a uvloop loop and runs until told to stop. The master/worker
split and reloads come with the operations issue; this is the worker half."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable

import uvloop

from lbcore.accesslog import AccessLogWriter
from lbcore.admin import Admin
from lbcore.health import HealthChecker, targets_from_config
from lbcore.metrics import LbcoreCollector, attach_counters
from lbcore.runtime_build import Runtime, build_runtime
from lbcore.tls.context import server_context
from lbcore.tls.policies import resolve_policy
from lbcore.tls.sni import SniSelector
from lbcore_ext.acceptor import Acceptor
from lbcore_ext.http1 import HttpProtocol
from lbcore_ext.runtime import ACL_ALL
from lbcore_ext.tlsctl import TICKET_KEYS_LEN, set_ticket_keys

log = logging.getLogger("lbcore")

# A client that connects and never finishes its handshake is dropped after this.
TLS_HANDSHAKE_TIMEOUT = 10.0
LISTEN_BACKLOG = 1024


def listener_ssl_context(cfg, listener, ticket_keys: bytes | None = None):
    """(SSLContext, SniSelector or None) for the listener; (None, None) for plain
    HTTP. With SNI, one context per certificate set under the same policy,
    chosen during the handshake."""
    if listener.protocol != "HTTPS":
        return None, None
    policy = resolve_policy(cfg, listener.security_policy)
    alpn = ("h2", "http/1.1") if listener.http2 else ("http/1.1",)

    client_ca = crl = None
    if listener.ssl_authentication == "mutual":
        ca = cfg.certificates[listener.ca_certificate]
        client_ca, crl = ca.certificate, ca.crl

    def context_for(*names: str):
        ctx = None
        for name in names:
            cert = cfg.certificates[name]
            if ctx is None:
                ctx = server_context(cert.certificate, cert.private_key, policy.versions,
                                     policy.ciphers, policy.tls13_suites, alpn=alpn,
                                     client_ca=client_ca, crl=crl)
                if ticket_keys is not None:
                    set_ticket_keys(ctx, ticket_keys)
            else:       # a second key type for the same names (ECDSA + RSA)
                ctx.load_cert_chain(str(cert.certificate), str(cert.private_key))
        return ctx

    default = context_for(listener.server_certificate)
    selector = None
    if listener.sni.enabled and listener.sni.certificates:
        by_domains: dict[tuple[str, ...], list[str]] = {}
        for name in listener.sni.certificates:
            by_domains.setdefault(tuple(cfg.certificates[name].info.domains), []).append(name)
        entries = [(domains, context_for(*names)) for domains, names in by_domains.items()]
        selector = SniSelector(entries, default, listener.sni.match)
        selector.install(default)
    return default, selector


def _bind(listener) -> list[socket.socket]:
    """Sockets for a listener with access control: one per address family when
    no address is given, like create_server(host=None)."""
    hosts = [listener.address] if listener.address else ["0.0.0.0", "::"]
    socks = []
    for host in hosts:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, listener.port))
        sock.listen(LISTEN_BACKLOG)
        socks.append(sock)
    return socks


async def open_listeners(cfg, runtime: Runtime) -> list:
    """Listeners with access control accept through an Acceptor (IP check
    before any TLS byte); the others use the loop's server with built-in TLS."""
    loop = asyncio.get_running_loop()
    servers: list = []
    for listener, lrt in zip(cfg.listeners, runtime.listeners, strict=True):
        lrt.handshake_timeout = TLS_HANDSHAKE_TIMEOUT
        factory = functools.partial(HttpProtocol, lrt)
        if lrt.acl_mode != ACL_ALL:
            for sock in _bind(listener):
                acceptor = Acceptor(loop, sock, factory, lrt)
                acceptor.start()
                servers.append(acceptor)
        else:
            servers.append(await loop.create_server(
                factory,
                host=listener.address,
                port=listener.port,
                ssl=lrt.ssl_ctx,
                ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT if lrt.ssl_ctx else None,
                reuse_address=True,
                backlog=LISTEN_BACKLOG,
            ))
        where = listener.address or "*"
        log.info("listener %s: %s on %s:%d -> pool %s", listener.name, listener.protocol,
                 where, listener.port, listener.default_pool)
    return servers


def start_health_checks(cfg, runtime: Runtime) -> HealthChecker:
    """In a single process the checker sets the members' state directly."""

    def publish(target, healthy: bool) -> None:
        member = runtime.pools[target.pool].members[target.index]
        if healthy and member.healthy is False:
            member.up_since = time.monotonic()      # slow start ramps from here
        member.healthy = healthy

    checker = HealthChecker(targets_from_config(cfg, runtime.pools), publish)
    checker.start()
    return checker


async def _serve(cfg, on_loop_started, phases) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if on_loop_started is not None:
        await on_loop_started(loop)
    try:
        # Session-ticket keys set explicitly (not OpenSSL's per-context random
        # ones) so that every worker of one master can share and rotate them.
        ticket_keys = os.urandom(TICKET_KEYS_LEN)
        runtime = build_runtime(
            cfg, functools.partial(listener_ssl_context, cfg, ticket_keys=ticket_keys), phases)
        counters = attach_counters(runtime)
        servers = await open_listeners(cfg, runtime)
    except OSError as exc:
        log.error("cannot open listeners: %s", exc)
        return 1
    except Exception as exc:  # a config the model accepted but the runtime can't serve
        log.error("cannot start: %s", exc)
        return 1
    checker = start_health_checks(cfg, runtime)
    log_cfg = cfg.load_balancer.access_log
    access_log = None
    if log_cfg.path != "off":
        access_log = AccessLogWriter(runtime.listeners, log_cfg.path, log_cfg.format)
        access_log.start()
        loop.add_signal_handler(signal.SIGUSR1, access_log.reopen)
    admin = Admin(cfg, runtime, LbcoreCollector(cfg, runtime, counters))
    await admin.start()
    admin.ready = True
    # Everything built so far lives as long as the process: keep it out of the
    # cyclic collector's scans, so per-connection collections stay short.
    gc.freeze()
    log.info("lbcore ready: %d listener(s)", len(servers))
    await stop.wait()
    admin.ready = False
    log.info("stopping")
    admin.close()
    await checker.stop()
    if access_log is not None:
        await access_log.stop()
    for server in servers:
        server.close()
    waiting = [s.wait_closed() for s in servers if isinstance(s, asyncio.AbstractServer)]
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.gather(*waiting), 1.0)
    return 0


def serve(cfg, *, on_loop_started: Callable[[asyncio.AbstractEventLoop], Awaitable[None]]
          | None = None, phases=None) -> int:
    """Run one worker until SIGTERM/SIGINT. Returns the process exit code."""
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(_serve(cfg, on_loop_started, phases))
    finally:
        with contextlib.suppress(Exception):
            loop.close()
