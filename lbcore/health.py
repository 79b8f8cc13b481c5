"""Active health checks (spec 7.1): HTTP or TCP probes per member, thresholds,
a random first offset so probes don't arrive in lockstep, transitions logged.
The checker only decides; a `publish` callback applies the state (directly to
the Member objects in a single process, through shared memory from the master)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

log = logging.getLogger("lbcore.health")

# Bytes of a probe response we read: the status line is all that matters.
MAX_STATUS_LINE = 4096


@dataclass(frozen=True)
class Target:
    """One member to probe, with its pool's check settings."""

    pool: str
    index: int                # the member's position in the pool
    name: str
    host: str
    port: int
    protocol: str             # "HTTP" | "TCP"
    method: str
    path: str
    domain: str | None
    interval: float
    timeout: float
    healthy_threshold: int
    unhealthy_threshold: int
    expected: frozenset[int]


def parse_expected(spec: str) -> frozenset[int]:
    """'200', '200,202', '200-299' -> the set of codes."""
    codes: set[int] = set()
    for part in str(spec).split(","):
        part = part.strip()
        if "-" in part:
            lo, hi = part.split("-", 1)
            codes.update(range(int(lo), int(hi) + 1))
        elif part:
            codes.add(int(part))
    return frozenset(codes)


def target(cfg, pool_name: str, index: int, name: str, host: str, port: int) -> Target | None:
    """The target for one runtime member, or None if its pool checks nothing.
    `index` keys its state: the member's position (alone) or its shared
    slot (the master)."""
    hc = cfg.pools[pool_name].health_check
    if hc is None or not hc.enabled:
        return None
    expected = getattr(hc, "expected_codes", "200")
    if not isinstance(expected, (set, frozenset)):
        expected = parse_expected(expected if isinstance(expected, str)
                                  else ",".join(map(str, expected)))
    return Target(
        pool=pool_name, index=index, name=name, host=host,
        port=hc.port or port, protocol=hc.protocol, method=hc.method,
        path=hc.path, domain=hc.domain, interval=float(hc.interval),
        timeout=float(hc.timeout), healthy_threshold=hc.healthy_threshold,
        unhealthy_threshold=hc.unhealthy_threshold, expected=frozenset(expected))


def targets_from_config(cfg, pools) -> list[Target]:
    """Targets for every member of every pool whose check is enabled; `pools`
    are the runtime pools, whose members carry the resolved addresses."""
    out = []
    for pool_name in cfg.pools:
        for i, m in enumerate(pools[pool_name].members):
            t = target(cfg, pool_name, i, m.name, m.host, m.port)
            if t is not None:
                out.append(t)
    return out


async def probe(t: Target) -> tuple[bool, str]:
    """One check: (passed, short reason)."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(t.host, t.port), t.timeout)
    except (OSError, asyncio.TimeoutError) as exc:
        return False, f"connect: {exc.__class__.__name__}"
    try:
        if t.protocol == "TCP":
            return True, "connected"
        host = t.domain or (f"[{t.host}]" if ":" in t.host else t.host)
        writer.write(f"{t.method} {t.path} HTTP/1.1\r\nHost: {host}\r\n"
                     f"User-Agent: lbcore-health-check\r\nConnection: close\r\n\r\n".encode())
        line = await asyncio.wait_for(reader.readline(), t.timeout)
        parts = line[:MAX_STATUS_LINE].split()
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            return False, "invalid response"
        code = int(parts[1])
        return code in t.expected, f"status {code}"
    except (OSError, asyncio.TimeoutError, ValueError) as exc:
        return False, exc.__class__.__name__
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


class HealthChecker:
    """Probes each target forever; calls publish(target, healthy) on transitions
    and once after each member's first result (a new member is healthy after its
    first successful check, and taken out by its first failed one)."""

    def __init__(self, targets: Iterable[Target],
                 publish: Callable[[Target, bool], None],
                 on_result: Callable[[Target, bool, str], None] | None = None,
                 initial: dict[tuple[str, int], bool] | None = None) -> None:
        """`initial`: states known before (a reload carries them over, so a
        member known dead stays out and no transition is logged twice)."""
        self.targets = list(targets)
        self.publish = publish
        self.on_result = on_result
        self.state: dict[tuple[str, int], bool | None] = dict(initial or {})
        self.tasks: dict[tuple[str, int], asyncio.Task] = {}

    def start(self) -> None:
        for t in self.targets:
            self.add(t)

    def add(self, t: Target, state: bool | None = None) -> None:
        """Probe one more member (a name resolved to a new address); `state`
        if already known (its address was in the pool under another slot)."""
        key = (t.pool, t.index)
        if state is not None:
            self.state[key] = state
        self.tasks[key] = asyncio.get_running_loop().create_task(self._loop(t))

    def remove(self, key: tuple[str, int]) -> None:
        """Stop probing a member that left its pool."""
        task = self.tasks.pop(key, None)
        if task is not None:
            task.cancel()
        self.state.pop(key, None)

    async def stop(self) -> None:
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _loop(self, t: Target) -> None:
        key = (t.pool, t.index)
        self.state.setdefault(key, None)
        ok_run = bad_run = 0
        await asyncio.sleep(random.uniform(0, t.interval))
        while True:
            ok, reason = await probe(t)
            if self.on_result is not None:
                self.on_result(t, ok, reason)
            ok_run, bad_run = (ok_run + 1, 0) if ok else (0, bad_run + 1)
            current = self.state[key]
            new = current
            if current is None:
                new = ok
            elif not current and ok_run >= t.healthy_threshold:
                new = True
            elif current and bad_run >= t.unhealthy_threshold:
                new = False
            if new != current:
                self.state[key] = new
                if current is not None or not new:
                    log.warning("member %s (%s:%d) of pool %s is %s: %s", t.name, t.host,
                                t.port, t.pool, "UP" if new else "DOWN", reason)
                self.publish(t, new)
            await asyncio.sleep(t.interval)
