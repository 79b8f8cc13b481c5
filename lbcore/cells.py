"""Where each counter of a config lives in the shared counter memory.

Every name that labels a metric gets its cells once, for the life of the
memory (the master's, across reloads): a listener's block, a (listener,
pool) route block, a (listener, policy, action) match cell, a (listener,
pool, member) member block. So a reload that reorders, adds or drops
policies or members never moves a count to another label, and counters never
go back.

Member blocks are the one table that can grow at runtime: a member whose
host name resolves to a new address (DNS, lbcore/dns.py) is a new member
label, "name/address", and the master gives it a block when it publishes
the new member set. The labels stay bounded by the table: past
MAX_MEMBER_BLOCKS names in one master's life, a new member gets no block
(-1), and its requests count on its pool's series only (a warning is
logged). Each config member that is an IP literal costs one block per
listener routing to its pool. Rate-limit buckets (a policy's qps_limit, a
listener's max_new_connections_per_second) are cells of row 0, which every
worker shares and none counts into."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from lbcore_ext import counters as C

log = logging.getLogger("lbcore")

MAX_LISTENER_BLOCKS = 256        # listener names ever seen by one master
MAX_ROUTES = 1024                # (listener, pool) pairs, "" = lbcore's own answers
MAX_POLICY_CELLS = 4096          # (listener, policy, action) triples
MAX_BUCKETS = 4096               # rate limits
MAX_MEMBER_BLOCKS = 2048         # (listener, pool, member) names


class CellsExhausted(Exception):
    """More distinct names than the memory was sized for (a reload refused)."""


@dataclass
class ListenerCells:
    """One listener's cells: its block, its routes, its policies' cells."""

    base: int
    routes: dict[str, int] = field(default_factory=dict)        # pool ("" none) -> block
    policies: dict[str, tuple[int, int]] = field(default_factory=dict)  # -> (match, bucket)
    conn_bucket: int = -1


class CellMap:
    def __init__(self, listener_blocks: int = MAX_LISTENER_BLOCKS, routes: int = MAX_ROUTES,
                 policy_cells: int = MAX_POLICY_CELLS, buckets: int = MAX_BUCKETS,
                 member_blocks: int = MAX_MEMBER_BLOCKS) -> None:
        self.listener_blocks, self.max_routes = listener_blocks, routes
        self.max_policy_cells, self.max_buckets = policy_cells, buckets
        self.max_member_blocks = member_blocks
        self.route_start = C.WORKER_CELLS + listener_blocks * C.BLOCK
        self.policy_start = self.route_start + routes * C.ROUTE_BLOCK
        self.bucket_start = self.policy_start + policy_cells
        self.member_start = self.bucket_start + buckets
        self.row = self.member_start + member_blocks * C.MEMBER_BLOCK
        self.blocks: dict[str, int] = {}
        self.routes: dict[tuple[str, str], int] = {}
        self.policy_cells: dict[tuple[str, str, str], int] = {}
        self.buckets: dict[tuple, int] = {}
        self.members: dict[tuple[str, str, str], int] = {}
        self.exhausted_warned = False

    @classmethod
    def sized_for(cls, cfg, members: int = 0) -> CellMap:
        """A map just big enough for one config (a process alone), whose
        pools have `members` runtime members in all."""
        routes = sum(2 + len(lst.forwarding_policies) * 2 for lst in cfg.listeners)
        policies = sum(len(lst.forwarding_policies) for lst in cfg.listeners)
        return cls(max(1, len(cfg.listeners)), routes, max(1, policies),
                   policies + len(cfg.listeners),
                   max(1, members * max(1, len(cfg.listeners))))

    def gauges(self) -> list[int]:
        """Cells that die with their worker (not added to row 0 when it goes)."""
        return [*range(C.WORKER_CELLS)] + [
            C.WORKER_CELLS + k * C.BLOCK + g for k in range(self.listener_blocks)
            for g in C.GAUGES] + list(range(self.bucket_start, self.member_start)) + [
            self.member_start + k * C.MEMBER_BLOCK + g for k in range(self.max_member_blocks)
            for g in C.MEMBER_GAUGES]

    def member_block(self, listener: str, pool: str, member: str) -> int:
        """The member block of one (listener, pool, member) name; -1 once the
        table is full (the member counts on its pool's series only)."""
        key = (listener, pool, member)
        k = self.members.get(key)
        if k is None:
            if len(self.members) >= self.max_member_blocks:
                if not self.exhausted_warned:
                    self.exhausted_warned = True
                    log.warning("more than %d (listener, pool, member) names: new members "
                                "are counted on their pool's series only",
                                self.max_member_blocks)
                return -1
            k = self.members[key] = len(self.members)
        return self.member_start + k * C.MEMBER_BLOCK

    def member_cells(self, cfg, layout: list[ListenerCells], pool: str,
                     member: str) -> list[int]:
        """A runtime member's block for each listener of `cfg` (by position):
        -1 where the listener never routes to `pool`."""
        return [self.member_block(lst.name, pool, member) if pool in cells.routes else -1
                for lst, cells in zip(cfg.listeners, layout, strict=True)]

    def _take(self, table: dict, key, limit: int, what: str) -> int:
        if key not in table:
            if len(table) >= limit:
                raise CellsExhausted(f"more than {limit} {what}")
            table[key] = len(table)
        return table[key]

    def layout(self, cfg) -> list[ListenerCells]:
        """The cells of each listener of `cfg`, in order."""
        out = []
        for lst in cfg.listeners:
            k = self._take(self.blocks, lst.name, self.listener_blocks, "listener names")
            cells = ListenerCells(C.WORKER_CELLS + k * C.BLOCK)
            pools = {"", lst.default_pool}
            for fp in lst.forwarding_policies:
                act = fp.action
                if act.type == "forward":
                    pools.update([act.pool] if act.pool else list(act.pools or {}))
            for pool in sorted(pools):
                r = self._take(self.routes, (lst.name, pool), self.max_routes,
                               "(listener, pool) pairs")
                cells.routes[pool] = self.route_start + r * C.ROUTE_BLOCK
            for fp in lst.forwarding_policies:
                m = self._take(self.policy_cells, (lst.name, fp.name, fp.action.type),
                               self.max_policy_cells, "(listener, policy) names")
                b = -1
                if fp.qps_limit:
                    b = self.bucket_start + self._take(
                        self.buckets, ("policy", lst.name, fp.name), self.max_buckets,
                        "rate limits")
                cells.policies[fp.name] = (self.policy_start + m, b)
            if lst.limits.max_new_connections_per_second:
                cells.conn_bucket = self.bucket_start + self._take(
                    self.buckets, ("listener", lst.name), self.max_buckets, "rate limits")
            out.append(cells)
        return out


def apply_layout(runtime, counters, layout: list[ListenerCells]) -> None:
    """Point each listener runtime (and its policies) at its cells."""
    for i, (lrt, cells) in enumerate(zip(runtime.listeners, layout, strict=True)):
        lrt.counters, lrt.cbase, lrt.index = counters, cells.base, i
        lrt.pool_bases = {name: base for name, base in cells.routes.items() if name}
        lrt.pbase_local = cells.routes[""]
        lrt.pbase = cells.routes[lrt.pool.name]
        lrt.conn_bucket = cells.conn_bucket
        if lrt.policies is not None:
            for p in lrt.policies.policies:
                p.match_cell, p.bucket = cells.policies[p.name]
                if p.pool is not None:
                    p.pbase = cells.routes[p.pool.name]
                elif p.action_name == "forward":
                    p.pbases = tuple(cells.routes[pool] for pool in p.pool_names)


def layout_to_json(layout: list[ListenerCells]) -> list[dict]:
    return [{"base": c.base, "routes": c.routes, "policies": c.policies,
             "conn_bucket": c.conn_bucket} for c in layout]


def layout_from_json(data: list[dict]) -> list[ListenerCells]:
    return [ListenerCells(d["base"], dict(d["routes"]),
                          {k: tuple(v) for k, v in d["policies"].items()}, d["conn_bucket"])
            for d in data]


def apply_member_cells(pools, cells_of) -> None:
    """Point each runtime member at its blocks: `cells_of(pool name, member)`
    gives the list member_cells() made (or None: no blocks)."""
    for name, pool in pools.items():
        for m in pool.members:
            bases = cells_of(name, m)
            m.cells = tuple(bases) if bases is not None else ()


def member_series(cfg, layout: list[ListenerCells], pools_members, blocks):
    """(listener, pool, member, block) for each member block to expose:
    `pools_members` yields (pool, member name), `blocks` maps (listener,
    pool, member) to its block (-1 or absent: none)."""
    for lst, cells in zip(cfg.listeners, layout, strict=True):
        for pool, member in pools_members:
            if pool in cells.routes:
                b = blocks(lst.name, pool, member)
                if b is not None and b >= 0:
                    yield lst.name, pool, member, b
