"""One serving process: builds the runtime from the config model, opens the
listeners on a uvloop loop and runs until told to stop. The master/worker
split and reloads come with the operations issue; this is the worker half."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
from collections.abc import Awaitable, Callable

import uvloop

from lbcore.runtime_build import Runtime, build_runtime
from lbcore.tls.context import server_context
from lbcore_ext.http1 import HttpProtocol

log = logging.getLogger("lbcore")

# A client that connects and never finishes its handshake is dropped after this.
TLS_HANDSHAKE_TIMEOUT = 10.0
LISTEN_BACKLOG = 1024


def listener_ssl_context(cfg, listener):
    """The listener's SSLContext, or None for plain HTTP."""
    if listener.protocol != "HTTPS":
        return None
    from lbcore.tls.policies import resolve_policy

    policy = resolve_policy(cfg, listener.security_policy)
    cert = cfg.certificates[listener.server_certificate]
    return server_context(cert.certificate, cert.private_key, policy.versions, policy.ciphers)


async def open_listeners(cfg, runtime: Runtime) -> list[asyncio.AbstractServer]:
    loop = asyncio.get_running_loop()
    servers = []
    for listener, lrt in zip(cfg.listeners, runtime.listeners):
        ctx = listener_ssl_context(cfg, listener)
        server = await loop.create_server(
            functools.partial(HttpProtocol, lrt),
            host=listener.address,
            port=listener.port,
            ssl=ctx,
            ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT if ctx else None,
            reuse_address=True,
            backlog=LISTEN_BACKLOG,
        )
        servers.append(server)
        where = listener.address or "*"
        log.info("listener %s: %s on %s:%d -> pool %s", listener.name, listener.protocol,
                 where, listener.port, listener.default_pool)
    return servers


async def _serve(cfg, on_loop_started) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if on_loop_started is not None:
        await on_loop_started(loop)
    try:
        runtime = build_runtime(cfg)
        servers = await open_listeners(cfg, runtime)
    except OSError as exc:
        log.error("cannot open listeners: %s", exc)
        return 1
    except Exception as exc:  # a config the model accepted but the runtime can't serve
        log.error("cannot start: %s", exc)
        return 1
    log.info("lbcore ready: %d listener(s)", len(servers))
    await stop.wait()
    log.info("stopping")
    for server in servers:
        server.close()
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(s.wait_closed() for s in servers)), 1.0)
    return 0


def serve(cfg, *, on_loop_started: Callable[[asyncio.AbstractEventLoop], Awaitable[None]]
          | None = None) -> int:
    """Run one worker until SIGTERM/SIGINT. Returns the process exit code."""
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(_serve(cfg, on_loop_started))
    finally:
        with contextlib.suppress(Exception):
            loop.close()
