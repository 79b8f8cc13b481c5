"""One serving process: builds the runtime from the config model, opens the
listeners on a uvloop loop and runs until told to stop, draining gracefully.

Two ways to run: alone (`lbcore demo`, tests), binding its own sockets and
running its own health checks and admin endpoint; or as a worker of the
master (lbcore/supervisor.py), with the master's sockets, counter row, member
health and ticket keys handed over in `Inherited`."""

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
from dataclasses import dataclass

import uvloop

from lbcore import dns
from lbcore.accesslog import AccessLogWriter, elb_context
from lbcore.admin import Admin
from lbcore.cells import apply_layout, apply_member_cells
from lbcore.health import HealthChecker, targets_from_config
from lbcore.metrics import LbcoreCollector, Serving, attach_counters
from lbcore.runtime_build import Runtime, build_members, build_runtime
from lbcore.shm import UNKNOWN, UP, SharedState
from lbcore.tls.context import server_context
from lbcore.tls.policies import resolve_policy
from lbcore.tls.sni import SniSelector
from lbcore_ext.acceptor import Acceptor
from lbcore_ext.counters import (
    SNI_UNMATCHED,
    W_DRAINING,
    W_HEARTBEAT_MS,
    W_READY,
    W_STATE,
    Counters,
)
from lbcore_ext.http1 import HttpFactory
from lbcore_ext.tlsctl import TICKET_KEYS_LEN, set_ticket_keys, use_ticket_keys
from lbcore_ext.upstream import close_idle

log = logging.getLogger("lbcore")

# A client that connects and never finishes its handshake is dropped after this.
TLS_HANDSHAKE_TIMEOUT = 10.0
LISTEN_BACKLOG = 1024


def listener_ssl_context(cfg, listener):
    """(SSLContext, SniSelector or None) for the listener; (None, None) for plain
    HTTP. With SNI, one context per certificate set under the same policy,
    chosen during the handshake. Tickets use the process's shared keys."""
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
                use_ticket_keys(ctx)
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
        selector.install_native(default)
    return default, selector


@dataclass
class Inherited:
    """What a worker started by the master gets from it."""

    slot: int                           # its row of the shared counters
    counters: Counters
    layout: list                        # per listener: its cells (lbcore.cells)
    sockets: list[list[socket.socket]]  # per listener: the master's bound sockets
    shared: SharedState                 # member health and ticket keys
    master_pid: int


def bind_listener(address: str | None, port: int) -> list[socket.socket]:
    """Listening sockets for an address, or one per address family when none
    is given (like create_server(host=None)); IPv6 may be missing."""
    hosts = [address] if address else ["0.0.0.0", "::"]
    socks: list[socket.socket] = []
    for host in hosts:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            if address or not socks:
                raise
            continue                    # no IPv6 on this host: IPv4 alone
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, port))
            sock.listen(LISTEN_BACKLOG)
        except OSError:
            sock.close()
            if address or not socks:
                for s in socks:
                    s.close()
                raise
            continue
        socks.append(sock)
    return socks


async def open_listeners(cfg, runtime: Runtime, sockets: list | None = None) -> list:
    """Every listener accepts through an Acceptor: the IP check before any
    byte, the listener's limits, EMFILE backoff, and lbcore's own transports
    (TLS, or plain TCP) instead of uvloop's."""
    loop = asyncio.get_running_loop()
    servers: list = []
    for i, (listener, lrt) in enumerate(zip(cfg.listeners, runtime.listeners, strict=True)):
        lrt.handshake_timeout = TLS_HANDSHAKE_TIMEOUT
        factory = HttpFactory(lrt)
        socks = sockets[i] if sockets is not None else bind_listener(listener.address,
                                                                     listener.port)
        for sock in socks:
            acceptor = Acceptor(loop, sock, factory, lrt)
            acceptor.start()
            servers.append(acceptor)
        where = listener.address or "*"
        log.debug("listener %s: %s on %s:%d -> pool %s", listener.name, listener.protocol,
                  where, listener.port, listener.default_pool)
    return servers


def start_health_checks(cfg, runtime: Runtime) -> HealthChecker:
    """Alone, the process checks its members itself and sets their state."""

    def publish(target, healthy: bool) -> None:
        member = runtime.pools[target.pool].members[target.index]
        if healthy and member.healthy is False:
            member.up_since = time.monotonic()      # slow start ramps from here
        member.healthy = healthy

    checker = HealthChecker(targets_from_config(cfg, runtime.pools), publish)
    checker.start()
    return checker


def shared_members(cfg, shared: SharedState):
    """The master's member sets: (version, resolution, slots, member blocks)."""
    while True:
        version, sets = shared.member_sets()
        if sets is not None:
            return (version, *dns.from_sets(cfg, sets))
        time.sleep(0.001)           # the master is writing them: a moment


class MasterLink:
    """A worker's side of the shared state: heartbeat out; member sets,
    member health, ticket keys and the master's liveness in, checked every
    tick."""

    TICK = 0.1

    def __init__(self, cfg, runtime: Runtime, inherited: Inherited,
                 on_orphaned: Callable[[], None], members_version: int,
                 slots: dict[tuple[str, int, str], int]) -> None:
        # (the members' counter blocks were applied when the runtime was built)
        self.cfg = cfg
        self.runtime = runtime
        self.inh = inherited
        self.on_orphaned = on_orphaned
        self.members_seen = members_version
        self.cells = self._cells(slots)
        self.health_seen = self.ticket_seen = -1
        self.handle: asyncio.TimerHandle | None = None

    def _cells(self, slots: dict[tuple[str, int, str], int]) -> list:
        """(runtime member, its shared health cell) for every member."""
        out = []
        for pool_name, pool in self.runtime.pools.items():
            for m in pool.members:
                out.append((m, slots[(pool_name, m.config_index, m.host)]))
        return out

    def _swap_members(self) -> None:
        """The master swapped in new member sets (DNS): each pool gets its
        new tuple, keeping the Member objects of addresses that stay."""
        version, sets = self.inh.shared.member_sets()
        if sets is None:
            return                      # being written: next tick
        resolution, slots, blocks = dns.from_sets(self.cfg, sets)
        for pool_name, pool in self.runtime.pools.items():
            old = {(m.config_index, m.host): m for m in pool.members}
            fresh = resolution[pool_name]
            if [(r.member, r.host, r.name) for r in fresh] == \
                    [(m.config_index, m.host, m.name) for m in pool.members]:
                continue
            members = []
            for r in fresh:
                m = old.pop(r.key, None)
                if m is None or m.name != r.name:
                    m = build_members((r,))[0]
                members.append(m)
            for m in members:
                m.cells = tuple(blocks.get((pool_name, m.config_index, m.host), ()))
            pool.set_members(members)
            for gone in old.values():
                close_idle(gone)
        self.cells = self._cells(slots)
        self.members_seen = version
        self.health_seen = -1           # apply the new members' health now

    def start(self) -> None:
        self.tick()

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.cancel()

    def tick(self) -> None:
        inh = self.inh
        inh.counters.set(W_HEARTBEAT_MS, int(time.monotonic() * 1000))
        if inh.shared.members_version != self.members_seen:
            self._swap_members()
        if inh.shared.health_version != self.health_seen:
            self.health_seen = inh.shared.health_version
            for member, cell in self.cells:
                state, up_since = inh.shared.member(cell)
                if state != UNKNOWN:
                    member.healthy = state == UP
                    member.up_since = up_since
        if inh.shared.ticket_version != self.ticket_seen:
            self.ticket_seen = inh.shared.ticket_version
            set_ticket_keys(*inh.shared.ticket_keys())
        if os.getppid() != inh.master_pid:
            log.warning("master is gone: stopping")
            self.on_orphaned()
        self.handle = asyncio.get_running_loop().call_later(self.TICK, self.tick)


async def drain(servers: list, runtime: Runtime, timeout: float) -> None:
    """Stop accepting; let busy connections finish (HTTP/1.1 answers with
    Connection: close, HTTP/2 gets GOAWAY), close quiet ones; give up at `timeout`."""
    for server in servers:
        server.close()
    for lrt in runtime.listeners:
        lrt.draining = True
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while any(lrt.conns for lrt in runtime.listeners) and loop.time() < deadline:
        for lrt in runtime.listeners:
            for conn in list(lrt.conns):
                conn.drain()
        await asyncio.sleep(0.05)
    left = sum(len(lrt.conns) for lrt in runtime.listeners)
    if left:
        log.warning("drain timeout: closing %d connection(s) still busy", left)


def _stop_signals(loop, stop: asyncio.Event, fast: list[bool]) -> None:
    """SIGTERM and SIGQUIT drain; SIGINT exits at once; SIGHUP belongs to the
    master (a worker ignores it, so a terminal hang-up can't kill it)."""

    def graceful() -> None:
        stop.set()

    def immediate() -> None:
        fast.append(True)
        stop.set()

    loop.add_signal_handler(signal.SIGTERM, graceful)
    loop.add_signal_handler(signal.SIGQUIT, graceful)
    loop.add_signal_handler(signal.SIGINT, immediate)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


async def _serve(cfg, on_loop_started, phases, inherited: Inherited | None) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    fast: list[bool] = []
    _stop_signals(loop, stop, fast)
    if on_loop_started is not None:
        await on_loop_started(loop)
    selectors: dict = {}
    # Session-ticket keys of our own (not OpenSSL's per-context random ones),
    # so that every worker of one master shares them and they rotate.
    set_ticket_keys(*(inherited.shared.ticket_keys() if inherited is not None
                      else (os.urandom(TICKET_KEYS_LEN), None)))

    def ssl_for(listener):
        ctx, selector = listener_ssl_context(cfg, listener)
        if selector is not None:
            selectors[listener.name] = selector
        return ctx, selector

    resolution = slots = blocks = None
    members_version = 0
    if inherited is not None:
        members_version, resolution, slots, blocks = shared_members(cfg, inherited.shared)
    try:
        runtime = build_runtime(cfg, ssl_for, phases, resolution)
        if inherited is None:
            counters, layout = attach_counters(cfg, runtime)
        else:
            counters, layout = inherited.counters, inherited.layout
            counters.use_slot(inherited.slot)
            apply_layout(runtime, counters, layout)
            apply_member_cells(runtime.pools, _blocks_of(blocks))
        for lrt in runtime.listeners:
            selector = selectors.get(lrt.name)
            if selector is not None:
                selector.on_unmatched = functools.partial(counters.incr,
                                                          lrt.cbase + SNI_UNMATCHED)
        servers = await open_listeners(cfg, runtime,
                                       inherited.sockets if inherited is not None else None)
    except OSError as exc:
        log.error("cannot open listeners: %s", exc)
        return 1
    except Exception as exc:  # a config the model accepted but the runtime can't serve
        log.error("cannot start: %s", exc)
        return 1
    log_cfg = cfg.load_balancer.access_log
    access_log = None
    if log_cfg.path != "off":
        access_log = AccessLogWriter(runtime.listeners, log_cfg.path, log_cfg.format,
                                     [elb_context(cfg, lst) for lst in cfg.listeners])
        access_log.start()
        loop.add_signal_handler(signal.SIGUSR1, access_log.reopen)
    checker = admin = link = None
    if inherited is None:
        checker = start_health_checks(cfg, runtime)
        serving = Serving(cfg, layout, time.time())
        admin = Admin(cfg.load_balancer.admin,
                      LbcoreCollector(lambda: serving, counters,
                                      functools.partial(runtime_members, runtime),
                                      member_blocks=functools.partial(runtime_member_blocks,
                                                                      cfg, runtime)),
                      functools.partial(runtime_status, cfg, runtime))
        try:
            await admin.start()
        except OSError as exc:
            log.error("cannot start: %s", exc)
            for server in servers:
                server.close()
            return 1
        admin.ready = True
    else:
        link = MasterLink(cfg, runtime, inherited, stop.set, members_version, slots)
        link.start()
    # Everything built so far lives as long as the process: keep it out of the
    # cyclic collector's scans, so per-connection collections stay short.
    gc.freeze()
    if inherited is not None:
        counters.set(W_STATE, W_READY)
    log.info("lbcore %s: %d listener(s)", "worker ready" if inherited else "ready",
             len(cfg.listeners))
    await stop.wait()
    if admin is not None:
        admin.ready = False
    if inherited is not None:
        counters.set(W_STATE, W_DRAINING)
    if fast:
        log.info("stopping now")
        for server in servers:
            server.close()
    else:
        log.info("draining (up to %ds)", cfg.load_balancer.drain_timeout)
        await drain(servers, runtime, cfg.load_balancer.drain_timeout)
    if admin is not None:
        admin.close()
    if checker is not None:
        await checker.stop()
    if link is not None:
        link.stop()
    if access_log is not None:
        await access_log.stop()
    return 0


def runtime_members(runtime: Runtime):
    """(pool, member, up) for the exposition, from this process's own checks."""
    for pool_name, pool in runtime.pools.items():
        for m in pool.members:
            yield pool_name, m.name, bool(m.healthy)


def runtime_member_blocks(cfg, runtime: Runtime):
    """(listener, pool, member, block) for the exposition, alone."""
    names = [lst.name for lst in cfg.listeners]
    for pool_name, pool in runtime.pools.items():
        for m in pool.members:
            for listener, b in zip(names, m.cells, strict=False):
                if b >= 0:
                    yield listener, pool_name, m.name, b


def _blocks_of(blocks: dict | None):
    """cells_of() for apply_member_cells, from the master's published blocks."""
    blocks = blocks or {}
    return lambda pool, m: blocks.get((pool, m.config_index, m.host))


def runtime_status(cfg, runtime: Runtime) -> dict:
    return {
        "config": {"source": str(cfg.source) if cfg.source else None},
        "listeners": listeners_status(cfg),
        "pools": {name: {"algorithm": cfg.pools[name].algorithm, "members": [
            {"name": m.name, "address": m.host, "port": m.port, "weight": m.weight,
             "healthy": bool(m.healthy), "active": m.active}
            for m in pool.members]} for name, pool in runtime.pools.items()},
    }


def listeners_status(cfg) -> list[dict]:
    return [{"name": lst.name, "protocol": lst.protocol, "port": lst.port,
             "address": lst.address, "default_pool": lst.default_pool,
             "description": lst.description,
             "limits": {"max_connections": lst.limits.max_connections,
                        "max_new_connections_per_second":
                            lst.limits.max_new_connections_per_second},
             "forwarding_policies": [policy_status(fp) for fp in sorted(
                 lst.forwarding_policies, key=lambda fp: fp.priority)]}
            for lst in cfg.listeners]


def policy_status(fp) -> dict:
    """A forwarding policy as /status shows it, in evaluation order."""
    act = fp.action
    out = {"name": fp.name, "priority": fp.priority, "action": act.type,
           "rules": [r.model_dump(exclude_none=True) for r in fp.rules]}
    if act.type == "forward":
        out["pools"] = {act.pool: 100} if act.pool else dict(act.pools)
    elif act.type == "redirect":
        out["status"] = act.status
        out["url"] = act.url.model_dump(exclude_none=True)
    else:
        out["status"] = act.status
    if fp.qps_limit:
        out["qps_limit"] = fp.qps_limit
    return out


def serve(cfg, *, on_loop_started: Callable[[asyncio.AbstractEventLoop], Awaitable[None]]
          | None = None, phases=None, inherited: Inherited | None = None) -> int:
    """Run until SIGTERM/SIGQUIT (drain) or SIGINT (at once); the exit code."""
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(_serve(cfg, on_loop_started, phases, inherited))
    finally:
        with contextlib.suppress(Exception):
            loop.close()
