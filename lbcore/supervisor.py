"""The master: binds every listener socket, starts the workers and keeps them
alive, reloads without dropping a request, runs the health checks once for all
workers, and serves the admin endpoint with the workers' counters summed.

Workers are exec'd (`lbcore _worker`), not forked from this process's running
event loop: each starts with a clean interpreter and gets what it needs as
inherited file descriptors: the listening sockets, the config text, the
counter cells and the shared state (member health, ticket keys).

Signals, as nginx and HAProxy users expect:
  SIGHUP   validate the file again; if good, start new workers on the same
           sockets, then drain the old ones. A bad file changes nothing.
  SIGTERM  (and SIGQUIT) not ready, stop accepting, drain, exit.
  SIGINT   exit now.
  SIGUSR1  workers reopen their access-log files.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import uvloop
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from lbcore import dns, pidfile
from lbcore.admin import Admin
from lbcore.cells import CellMap, CellsExhausted, layout_from_json, layout_to_json
from lbcore.config import ConfigError, load_config_text
from lbcore.health import HealthChecker, Target, target
from lbcore.metrics import LbcoreCollector, Serving
from lbcore.shm import DOWN, UNKNOWN, UP, SharedState
from lbcore.worker import bind_listener, listeners_status
from lbcore_ext import counters as C
from lbcore_ext.tlsctl import TICKET_KEYS_LEN

log = logging.getLogger("lbcore.master")

TICK = 0.2                       # seconds between looks at the workers
START_TIMEOUT = 30.0             # a new worker must be ready within this
FAST_EXIT_WAIT = 2.0
RESTART_BACKOFF_MAX = 30.0
STABLE_AFTER = 10.0              # a worker that lived this long resets its backoff


def worker_count(setting, cpu_max: str = "/sys/fs/cgroup/cpu.max") -> int:
    """"auto": one per core we may run on, and no more than the container's
    CPU quota (cgroup v2 cpu.max) allows, so a pod limited to 2 CPUs on a
    64-core node runs 2 workers."""
    if setting != "auto":
        return int(setting)
    cores = len(os.sched_getaffinity(0)) or 1
    try:
        quota, period = Path(cpu_max).read_text().split()
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


@dataclass(eq=False)
class Worker:
    gen: Generation
    position: int                 # its place in the generation (for restarts)
    slot: int                     # its row of the counters
    proc: subprocess.Popen
    started: float = field(default_factory=time.monotonic)
    draining: bool = False
    deadline: float = 0.0         # SIGKILL after this while draining
    killed: str | None = None     # why the master killed it


@dataclass(eq=False)
class Generation:
    """One loaded config and the workers serving it."""

    number: int
    cfg: object
    text: str
    layout: list                        # per listener: its ListenerCells
    sockets: list[list[socket.socket]]
    shared: SharedState
    config_fd: int
    # Runtime members per pool (member host names resolved) and each one's
    # shared health cell, by (pool, config index, address).
    members: dict[str, tuple[dns.Resolved, ...]]
    slots: dict[tuple[str, int, str], int]
    free: list[int]
    # Each runtime member's counter blocks, one per listener (lbcore/cells.py).
    blocks: dict[tuple[str, int, str], list[int]] = field(default_factory=dict)
    loaded_at: float = field(default_factory=time.time)
    workers: list[Worker] = field(default_factory=list)
    checker: HealthChecker | None = None

    targets: list[Target] = field(default_factory=list)
    backoff: dict[int, float] = field(default_factory=dict)   # position -> next delay
    restart_at: dict[int, float] = field(default_factory=dict)

    @property
    def bases(self) -> list[int]:
        return [cells.base for cells in self.layout]

    def slot(self, r: dns.Resolved) -> int:
        return self.slots[(r.pool, r.member, r.host)]

    def member(self, r: dns.Resolved) -> tuple[int, float]:
        """(UNKNOWN/DOWN/UP, up since) of a member, as the checks published it."""
        return self.shared.member(self.slot(r))

    def publish_members(self) -> None:
        """The member sets, for the workers (they poll the version)."""
        self.shared.set_member_sets({
            pool: [(r.member, r.host, self.slot(r), self.blocks.get((pool, r.member, r.host), []))
                   for r in members]
            for pool, members in self.members.items()})

    def close(self) -> None:
        self.shared.close()
        with contextlib.suppress(OSError):
            os.close(self.config_fd)


class StartFailed(Exception):
    pass


class Master:
    def __init__(self, path: str, cfg, text: str, phases: str | None = None,
                 verbose: bool = False, pidfile: Path | None = None) -> None:
        self.path = Path(path)
        self.pidfile = pidfile
        self.first_cfg, self.first_text = cfg, text
        self.phases = phases
        self.verbose = verbose
        self.nworkers = worker_count(cfg.load_balancer.workers)
        # Rows: 0 keeps what exited workers counted; room for three generations.
        self.slots = 4 * self.nworkers + 1
        self.cells = CellMap()
        self.row = self.cells.row
        fd = os.memfd_create("lbcore-counters", 0)
        os.ftruncate(fd, self.row * self.slots * 8)
        self.counters_fd = fd
        self.counters = C.Counters(self.row, self.slots, fd)
        self.free_slots = list(range(self.slots - 1, 0, -1))
        self.gauges = self.cells.gauges()
        self.sockets: dict[tuple[str | None, int], list[socket.socket]] = {}
        self.ticket_keys: tuple[bytes, bytes | None] = (os.urandom(TICKET_KEYS_LEN), None)
        self.ticket_rotated = time.monotonic()
        self.ticket_rotations = 0
        self.current: Generation | None = None
        self.generations: list[Generation] = []
        self.number = 0
        self.reloads: Counter[str] = Counter()
        self.restarts = 0
        self.checks: Counter[tuple[str, str, str]] = Counter()
        self.stopping = False
        self.stop_event = asyncio.Event()
        self.reload_task: asyncio.Task | None = None
        self.reload_again = False
        self.admin: Admin | None = None
        self.dns_task: asyncio.Task | None = None
        self.dns_due: dict[str, float] = {}             # pool -> next lookup (monotonic)
        self.resolutions: Counter[tuple[str, str]] = Counter()   # (pool, result)

    # ---- the main loop ---------------------------------------------------------------

    def run(self) -> int:
        loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            return loop.run_until_complete(self._main())
        finally:
            if self.pidfile is not None:
                pidfile.remove(self.pidfile)
            with contextlib.suppress(Exception):
                loop.close()

    async def _main(self) -> int:
        loop = asyncio.get_running_loop()
        self.stop_event = asyncio.Event()
        self.admin = Admin(self.first_cfg.load_balancer.admin, self._collector(), self.status)
        try:
            admin_sock = self.admin.bind()
        except OSError as exc:
            log.error("cannot start: %s", exc)
            return 1
        try:
            resolution = await self._resolve(self.first_cfg)
            self.current = await self._start_generation(self.first_cfg, self.first_text,
                                                        resolution)
        except (StartFailed, OSError) as exc:
            log.error("cannot start: %s", exc)
            self._close_sockets(keep=set())
            admin_sock.close()
            return 1
        self.first_text = ""
        await self.admin.start(admin_sock)
        self.admin.ready = True
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)
        loop.add_signal_handler(signal.SIGTERM, self._on_stop, False)
        loop.add_signal_handler(signal.SIGQUIT, self._on_stop, False)
        loop.add_signal_handler(signal.SIGINT, self._on_stop, True)
        loop.add_signal_handler(signal.SIGUSR1, self._signal_workers, signal.SIGUSR1)
        if self.pidfile is not None:
            # Only now: a SIGHUP before the handler above would have killed us.
            try:
                pidfile.write(self.pidfile)
            except pidfile.PidfileError as exc:
                log.error("cannot start: %s", exc)
                self.pidfile = None        # not ours to remove
                self._on_stop(True)
                await self._shutdown()
                return 1
        self._schedule_dns(self.first_cfg)
        self.dns_task = loop.create_task(self._dns_loop())
        log.info("lbcore master ready: %d worker(s), config %s", self.nworkers, self.path)
        while not self.stop_event.is_set():
            self._tick()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stop_event.wait(), TICK)
        return await self._shutdown()

    def _tick(self) -> None:
        now = time.monotonic()
        for gen in list(self.generations):
            for w in list(gen.workers):
                rc = w.proc.poll()
                if rc is not None:
                    self._reap(w, rc)
                    continue
                if w.draining:
                    if now > w.deadline and w.killed is None:
                        w.killed = "drain timeout"
                        log.warning("worker %d still busy after the drain timeout: killed",
                                    w.proc.pid)
                        w.proc.kill()
                    continue
                self._check_heartbeat(w, now)
            if gen is self.current and not self.stopping:
                for position, at in list(gen.restart_at.items()):
                    if now >= at:
                        del gen.restart_at[position]
                        self._spawn(gen, position)
        if (self.current is not None and now - self.ticket_rotated
                > self.current.cfg.load_balancer.session_ticket_rotation):
            self.rotate_ticket_keys()

    def _check_heartbeat(self, w: Worker, now: float) -> None:
        if w.killed is not None or self.counters.cell(w.slot, C.W_STATE) != C.W_READY:
            return
        beat = self.counters.cell(w.slot, C.W_HEARTBEAT_MS) / 1000
        limit = w.gen.cfg.load_balancer.heartbeat_timeout
        if beat and now - beat > limit:
            w.killed = f"no heartbeat for {now - beat:.1f}s"
            log.error("worker %d is hung (%s): killing it", w.proc.pid, w.killed)
            w.proc.kill()

    def _reap(self, w: Worker, rc: int) -> None:
        gen = w.gen
        gen.workers.remove(w)
        self.counters.retire(w.slot, 0, self.gauges)
        self.free_slots.append(w.slot)
        why = w.killed or (f"signal {signal.Signals(-rc).name}" if rc < 0 else f"exit code {rc}")
        if w.draining or self.stopping:
            log.info("worker %d (generation %d) exited: %s", w.proc.pid, gen.number, why)
        elif gen is self.current:
            lived = time.monotonic() - w.started
            delay = gen.backoff.get(w.position, 0.1) if lived < STABLE_AFTER else 0.1
            gen.backoff[w.position] = min(delay * 2, RESTART_BACKOFF_MAX)
            gen.restart_at[w.position] = time.monotonic() + delay
            self.restarts += 1
            log.error("worker %d died (%s) after %.1fs: restarting in %.1fs", w.proc.pid, why,
                      lived, delay)
        if not gen.workers and gen is not self.current and gen in self.generations:
            self.generations.remove(gen)
            gen.close()

    # ---- workers -----------------------------------------------------------------------

    def _spawn(self, gen: Generation, position: int) -> Worker:
        if not self.free_slots:
            raise StartFailed("no free worker slot (old workers are still draining)")
        slot = self.free_slots.pop()
        fds = [gen.config_fd, self.counters_fd, gen.shared.fd,
               *(s.fileno() for socks in gen.sockets for s in socks)]
        spec = {
            "slot": slot, "config_fd": gen.config_fd, "config_path": str(self.path),
            "counters_fd": self.counters_fd, "row": self.row, "slots": self.slots,
            "state_fd": gen.shared.fd, "members": gen.shared.members,
            "listeners": gen.shared.listeners,
            "layout": layout_to_json(gen.layout),
            "sockets": [[s.fileno() for s in socks] for socks in gen.sockets],
            "master_pid": os.getpid(), "phases": self.phases,
        }
        self.counters.retire(slot, 0, self.gauges)      # a clean row
        proc = subprocess.Popen([sys.executable, "-m", "lbcore", "_worker"], pass_fds=fds,
                                env={**os.environ, "LBCORE_WORKER": json.dumps(spec),
                                     **({"LBCORE_VERBOSE": "1"} if self.verbose else {})})
        w = Worker(gen, position, slot, proc)
        gen.workers.append(w)
        log.info("worker %d started (generation %d, slot %d)", proc.pid, gen.number, slot)
        return w

    def _drain(self, w: Worker, timeout: float) -> None:
        if w.draining:
            return
        w.draining = True
        w.deadline = time.monotonic() + timeout + 5.0
        with contextlib.suppress(ProcessLookupError):
            w.proc.send_signal(signal.SIGTERM)

    def _signal_workers(self, sig: int) -> None:
        for gen in self.generations:
            for w in gen.workers:
                with contextlib.suppress(ProcessLookupError):
                    w.proc.send_signal(sig)

    async def _wait_ready(self, gen: Generation) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            for w in gen.workers:
                rc = w.proc.poll()
                if rc is not None:
                    raise StartFailed(f"worker {w.proc.pid} exited with {rc} while starting "
                                      "(its log above says why)")
            if all(self.counters.cell(w.slot, C.W_STATE) == C.W_READY for w in gen.workers):
                return
            if time.monotonic() > deadline:
                raise StartFailed(f"workers not ready within {START_TIMEOUT:.0f}s")
            await asyncio.sleep(0.05)

    # ---- generations -------------------------------------------------------------------

    def _layout(self, cfg) -> list:
        try:
            return self.cells.layout(cfg)
        except CellsExhausted as exc:
            raise StartFailed(str(exc)) from exc

    def _sockets_for(self, cfg) -> list[list[socket.socket]]:
        """The listening sockets, kept across reloads by (address, port)."""
        out, new = [], []
        try:
            for lst in cfg.listeners:
                key = (lst.address, lst.port)
                if key not in self.sockets:
                    self.sockets[key] = bind_listener(lst.address, lst.port)
                    new.append(key)
                out.append(self.sockets[key])
        except OSError as exc:
            for key in new:
                for s in self.sockets.pop(key):
                    s.close()
            raise StartFailed(f"cannot listen on {lst.address or '*'}:{lst.port}: "
                              f"{exc.strerror or exc}") from exc
        return out

    def _close_sockets(self, keep: set) -> None:
        for key in [k for k in self.sockets if k not in keep]:
            for s in self.sockets.pop(key):
                s.close()

    async def _resolve(self, cfg) -> dict[str, tuple[dns.Resolved, ...]]:
        """Every pool's members, names looked up off the loop; a name that
        does not resolve fails the start or reload, naming it."""
        try:
            resolution = await asyncio.get_running_loop().run_in_executor(
                None, dns.resolve_config, cfg)
        except dns.ResolveError as exc:
            raise StartFailed(f"member address: {exc}") from exc
        return resolution

    def _schedule_dns(self, cfg) -> None:
        """Lookups for the serving config's pools that name hosts."""
        now = time.monotonic()
        self.dns_due = {name: now + pool.resolve_interval for name, pool in cfg.pools.items()
                        if pool.resolve_interval and dns.has_names(pool)}

    async def _start_generation(self, cfg, text: str,
                                resolution: dict[str, tuple[dns.Resolved, ...]]) -> Generation:
        self.number += 1
        layout = self._layout(cfg)
        sockets = self._sockets_for(cfg)
        capacity = dns.capacity(cfg)
        shared = SharedState(capacity, listeners=len(cfg.listeners))
        shared.set_ticket_keys(*self.ticket_keys)
        config_fd = os.memfd_create("lbcore-config", 0)
        os.write(config_fd, text.encode())
        slots: dict[tuple[str, int, str], int] = {}
        for pool, members in resolution.items():
            for r in members:
                slots[(pool, r.member, r.host)] = len(slots)
        gen = Generation(self.number, cfg, text, layout, sockets, shared, config_fd,
                         dict(resolution), slots, list(range(capacity - 1, len(slots) - 1, -1)))
        for pool, members in resolution.items():
            for r in members:
                gen.blocks[(pool, r.member, r.host)] = self.cells.member_cells(
                    cfg, layout, pool, r.name)
        gen.publish_members()
        initial = self._carry_health(gen)
        self.generations.append(gen)
        try:
            for position in range(self.nworkers):
                self._spawn(gen, position)
            await self._wait_ready(gen)
        except StartFailed:
            for w in gen.workers:
                w.draining = True
                w.killed = "start failed"
                w.proc.kill()
            for w in list(gen.workers):
                w.proc.wait()
                self._reap(w, w.proc.returncode)
            if gen in self.generations:
                self.generations.remove(gen)
                gen.close()
            raise
        self._start_checks(gen, initial)
        log.info("generation %d ready: %d worker(s)", gen.number, len(gen.workers))
        return gen

    def _carry_health(self, gen: Generation) -> dict[tuple[str, int], bool]:
        """Members the running generation already knows keep their state (by
        pool, name and address), so a reload neither resurrects a dead member
        nor waits for new checks to trust a live one."""
        initial: dict[tuple[str, int], bool] = {}
        old = self.current
        gen.targets = [t for members in gen.members.values() for r in members
                       if (t := target(gen.cfg, r.pool, gen.slot(r), r.name, r.host, r.port))]
        if old is None or old.checker is None:
            return initial
        known = {(r.pool, r.config_name, r.host, r.port): r
                 for members in old.members.values() for r in members}
        for members in gen.members.values():
            for r in members:
                prev = known.get((r.pool, r.config_name, r.host, r.port))
                state = old.checker.state.get((prev.pool, old.slot(prev))) if prev else None
                if state is None:
                    continue
                initial[(r.pool, gen.slot(r))] = state
                _, up_since = old.member(prev)
                gen.shared.set_member(gen.slot(r), UP if state else DOWN, up_since)
        return initial

    def _start_checks(self, gen: Generation, initial) -> None:
        def publish(t: Target, healthy: bool) -> None:
            i = t.index             # the member's shared slot
            state, up_since = gen.shared.member(i)
            if healthy and state != UP:
                up_since = time.monotonic() if state == DOWN else 0.0  # slow start from here
            gen.shared.set_member(i, UP if healthy else DOWN, up_since)

        def on_result(t: Target, ok: bool, _reason: str) -> None:
            self.checks[(t.pool, t.name, "success" if ok else "failure")] += 1

        gen.checker = HealthChecker(gen.targets, publish, on_result, initial)
        gen.checker.start()

    # ---- DNS ---------------------------------------------------------------------------

    async def _dns_loop(self) -> None:
        """Pools with member host names look them up every resolve_interval;
        a changed answer swaps in the new member set."""
        while True:
            await asyncio.sleep(min(1.0, TICK * 5))
            gen = self.current
            now = time.monotonic()
            for name, due in list(self.dns_due.items()):
                if now < due or gen is None or self.stopping or name not in gen.cfg.pools:
                    continue
                pool = gen.cfg.pools[name]
                self.dns_due[name] = now + pool.resolve_interval
                try:
                    members = await asyncio.get_running_loop().run_in_executor(
                        None, dns.resolve_pool, name, pool)
                except dns.ResolveError as exc:
                    self.resolutions[(name, "failure")] += 1
                    log.warning("DNS: %s; keeping the last answer", exc)
                    continue
                self.resolutions[(name, "success")] += 1
                if gen is self.current and not self.stopping:
                    self._swap_members(gen, name, members)

    def _swap_members(self, gen: Generation, pool: str,
                      members: tuple[dns.Resolved, ...]) -> None:
        """Apply a pool's new member set as health changes are applied:
        through shared memory. Addresses that stay keep their slot, so their
        health carries over; new ones start unknown and are probed; the
        workers swap the set in on their next look."""
        old = gen.members[pool]
        before = {r.key for r in old}
        after = {r.key for r in members}
        if [r.key for r in old] == [r.key for r in members] and \
                [r.name for r in old] == [r.name for r in members]:
            return
        for r in old:
            if r.key not in after:
                gen.blocks.pop((pool, r.member, r.host), None)
                slot = gen.slots.pop((pool, r.member, r.host))
                if gen.checker is not None:
                    gen.checker.remove((pool, slot))
                gen.shared.set_member(slot, UNKNOWN, 0.0)
                gen.free.append(slot)
        added = []
        for r in members:
            if r.key not in before:
                slot = gen.free.pop()
                gen.slots[(pool, r.member, r.host)] = slot
                gen.shared.set_member(slot, UNKNOWN, 0.0)
                added.append(r)
        old_names = {r.key: r.name for r in old}
        for r in members:
            if r.key not in before or old_names[r.key] != r.name:
                # A new member label: its blocks, for the life of the counters.
                gen.blocks[(pool, r.member, r.host)] = self.cells.member_cells(
                    gen.cfg, gen.layout, pool, r.name)
        gen.members[pool] = members
        gen.publish_members()
        if gen.checker is not None:
            for r in members:
                state = None
                if r.key in before:
                    if old_names[r.key] == r.name:
                        continue
                    # Renamed (its name now stands for one address, or several):
                    # the probe carries the new label and the known state.
                    state = gen.checker.state.get((pool, gen.slot(r)))
                    gen.checker.remove((pool, gen.slot(r)))
                t = target(gen.cfg, pool, gen.slot(r), r.name, r.host, r.port)
                if t is not None:
                    gen.checker.add(t, state)
        log.info("DNS: pool %s members now %s (added %s, removed %s)", pool,
                 ", ".join(f"{r.host}:{r.port}" for r in members) or "none",
                 ", ".join(r.host for r in added) or "none",
                 ", ".join(r.host for r in old if r.key not in after) or "none")

    # ---- signals -----------------------------------------------------------------------

    def _on_hup(self) -> None:
        if self.stopping:
            return
        if self.reload_task is not None and not self.reload_task.done():
            self.reload_again = True
            return
        self.reload_task = asyncio.get_running_loop().create_task(self.reload())

    async def reload(self) -> bool:
        log.info("reloading %s", self.path)
        ok = False
        try:
            try:
                text = self.path.read_text(encoding="utf-8")
                # Off the loop: checking resolves member names, which may wait on DNS.
                cfg = await asyncio.get_running_loop().run_in_executor(None, functools.partial(
                    load_config_text, text, filename=str(self.path),
                    base_dir=self.path.resolve().parent, source=self.path))
            except OSError as exc:
                raise StartFailed(f"cannot read {self.path}: {exc}") from exc
            except ConfigError as exc:
                raise StartFailed(f"configuration refused, still serving the old one:\n{exc}"
                                  ) from exc
            if worker_count(cfg.load_balancer.workers) != self.nworkers:
                log.warning("workers: a new count takes a restart; keeping %d", self.nworkers)
            resolution = await self._resolve(cfg)
            gen = await self._start_generation(cfg, text, resolution)
        except StartFailed as exc:
            self.reloads["failure"] += 1
            log.error("reload failed: %s", exc)
        else:
            old, self.current = self.current, gen
            if old is not None:
                if old.checker is not None:
                    await old.checker.stop()
                for w in old.workers:
                    self._drain(w, old.cfg.load_balancer.drain_timeout)
                if not old.workers and old in self.generations:
                    self.generations.remove(old)
                    old.close()
            self._close_sockets(keep={(lst.address, lst.port) for lst in cfg.listeners})
            self._schedule_dns(cfg)
            self.reloads["success"] += 1
            ok = True
            log.info("reloaded: generation %d serving", gen.number)
        if self.reload_again and not self.stopping:
            self.reload_again = False
            self.reload_task = asyncio.get_running_loop().create_task(self.reload())
        return ok

    def _on_stop(self, fast: bool) -> None:
        self.fast = fast
        self.stopping = True
        if self.admin is not None:
            self.admin.ready = False
        self.stop_event.set()

    async def _shutdown(self) -> int:
        fast = getattr(self, "fast", False)
        log.info("stopping (%s)", "now" if fast else "draining")
        if self.dns_task is not None:
            self.dns_task.cancel()
        # New connections are refused outright rather than queued for nobody.
        self._close_sockets(keep=set())
        for gen in self.generations:
            if gen.checker is not None:
                await gen.checker.stop()
            for w in gen.workers:
                if fast:
                    with contextlib.suppress(ProcessLookupError):
                        w.proc.send_signal(signal.SIGINT)
                    w.draining, w.deadline = True, time.monotonic() + FAST_EXIT_WAIT
                else:
                    self._drain(w, gen.cfg.load_balancer.drain_timeout)
        while any(gen.workers for gen in self.generations):
            self._tick()
            await asyncio.sleep(0.05)
        if self.admin is not None:
            self.admin.close()
        log.info("stopped")
        return 0

    def rotate_ticket_keys(self) -> None:
        """A new key seals tickets from now on; the one it replaces still
        opens the tickets it sealed (clients get a fresh ticket), until the
        next rotation retires it."""
        self.ticket_keys = (os.urandom(TICKET_KEYS_LEN), self.ticket_keys[0])
        self.ticket_rotated = time.monotonic()
        self.ticket_rotations += 1
        for gen in self.generations:
            gen.shared.set_ticket_keys(*self.ticket_keys)
        log.info("session-ticket keys rotated")

    # ---- admin -------------------------------------------------------------------------

    def _members(self):
        gen = self.current
        for pool_name, members in gen.members.items():
            for r in members:
                yield pool_name, r.name, gen.member(r)[0] != DOWN

    def _collector(self) -> LbcoreCollector:
        def serving() -> Serving:
            gen = self.current
            return Serving(gen.cfg, gen.layout, gen.loaded_at)

        return LbcoreCollector(serving, self.counters, self._members, extra=self._families,
                               member_blocks=self._member_blocks)

    def _member_blocks(self):
        """(listener, pool, member, block) of the serving members."""
        gen = self.current
        names = [lst.name for lst in gen.cfg.listeners]
        for pool_name, members in gen.members.items():
            for r in members:
                for listener, b in zip(names, gen.blocks.get((pool_name, r.member, r.host), ()),
                                       strict=False):
                    if b >= 0:
                        yield listener, pool_name, r.name, b

    def _families(self):
        reloads = CounterMetricFamily("lbcore_reloads", "Configuration reloads by result",
                                      labels=["result"])
        for result in ("success", "failure"):
            reloads.add_metric([result], self.reloads[result])
        yield reloads
        workers = GaugeMetricFamily("lbcore_workers", "Worker processes by state",
                                    labels=["state"])
        states: Counter[str] = Counter()
        for gen in self.generations:
            for w in gen.workers:
                states["draining" if w.draining else "serving"] += 1
        for state in ("serving", "draining"):
            workers.add_metric([state], states[state])
        yield workers
        restarts = CounterMetricFamily("lbcore_worker_restarts",
                                       "Workers that died and were replaced")
        restarts.add_metric([], self.restarts)
        yield restarts
        checks = CounterMetricFamily("lbcore_health_checks", "Health-check probes by result",
                                     labels=["pool", "member", "result"])
        for (pool, member, result), n in sorted(self.checks.items()):
            checks.add_metric([pool, member, result], n)
        yield checks
        lookups = CounterMetricFamily("lbcore_dns_resolutions",
                                      "Lookups of pools' member host names by result",
                                      labels=["pool", "result"])
        for (pool, result), n in sorted(self.resolutions.items()):
            lookups.add_metric([pool, result], n)
        yield lookups

    def status(self) -> dict:
        gen = self.current
        names = {UP: "up", DOWN: "down", UNKNOWN: "unknown"}
        return {
            "config": {"source": str(self.path), "generation": gen.number,
                       "loaded_at": gen.loaded_at,
                       "reloads": dict(self.reloads)},
            "tls": {"ticket_key_rotations": self.ticket_rotations,
                    "ticket_key_age": round(time.monotonic() - self.ticket_rotated, 1)},
            "listeners": listeners_status(gen.cfg),
            "pools": {name: {"algorithm": pool.algorithm, "members": [
                {"name": r.name, "address": pool.members[r.member].address, "ip": r.host,
                 "port": r.port, "weight": r.weight, "health": names[gen.member(r)[0]]}
                for r in gen.members[name]]} for name, pool in gen.cfg.pools.items()},
            "workers": [{"pid": w.proc.pid, "generation": g.number, "slot": w.slot,
                         "state": "draining" if w.draining else (
                             "ready" if self.counters.cell(w.slot, C.W_STATE) == C.W_READY
                             else "starting"),
                         "uptime": round(time.monotonic() - w.started, 1),
                         "requests": sum(self.counters.cell(w.slot, base + C.REQUESTS)
                                         for base in g.bases),
                         "live": live_objects(self.counters, w.slot)}
                        for g in self.generations for w in g.workers],
        }


def live_objects(counters: C.Counters, slot: int) -> dict[str, int]:
    """A worker's live data-plane objects; at rest, every one but the idle
    member connections is zero (the tests' leak check)."""
    return {"client_connections": counters.cell(slot, C.W_LIVE_CLIENT_CONNS),
            "exchanges": counters.cell(slot, C.W_LIVE_EXCHANGES),
            "member_connections": counters.cell(slot, C.W_LIVE_MEMBER_CONNS),
            "member_connections_idle": counters.cell(slot, C.W_LIVE_MEMBER_IDLE)}


def worker_main() -> int:
    """`lbcore _worker`: the process the master exec'd, described by the
    LBCORE_WORKER environment variable."""
    from lbcore.worker import Inherited, serve

    spec = json.loads(os.environ.pop("LBCORE_WORKER"))
    counters = C.Counters(spec["row"], spec["slots"], spec["counters_fd"])
    counters.use_slot(spec["slot"])
    counters.set(C.W_PID, os.getpid())
    counters.set(C.W_STATE, C.W_STARTING)
    counters.set(C.W_HEARTBEAT_MS, int(time.monotonic() * 1000))
    with os.fdopen(spec["config_fd"], "rb", closefd=False) as f:
        f.seek(0)
        text = f.read().decode()
    path = Path(spec["config_path"])
    try:
        cfg = load_config_text(text, filename=str(path), base_dir=path.resolve().parent,
                               source=path, resolve=False)
    except ConfigError as exc:      # the files it names changed since the master read them
        log.error("worker: %s", exc)
        return 1
    phases = None
    if spec["phases"]:
        from lbcore.phases import load_phases

        phases = load_phases(spec["phases"])
    sockets = [[socket.socket(fileno=fd) for fd in fds] for fds in spec["sockets"]]
    inherited = Inherited(spec["slot"], counters, layout_from_json(spec["layout"]), sockets,
                          SharedState(spec["members"], spec["state_fd"], spec["listeners"]),
                          spec["master_pid"])
    return serve(cfg, phases=phases, inherited=inherited)
