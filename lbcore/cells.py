"""Where each counter of a config lives in the shared counter memory.

Every name that labels a metric gets its cells once, for the life of the
memory (the master's, across reloads): a listener's block, a (listener,
pool) route block, a (listener, policy, action) match cell. So a reload that
reorders, adds or drops policies never moves a count to another label, and
counters never go back. Rate-limit buckets (a policy's qps_limit, a
listener's max_new_connections_per_second) are cells of row 0, which every
worker shares and none counts into."""

from __future__ import annotations

from dataclasses import dataclass, field

from lbcore_ext import counters as C

MAX_LISTENER_BLOCKS = 256        # listener names ever seen by one master
MAX_ROUTES = 1024                # (listener, pool) pairs, "" = lbcore's own answers
MAX_POLICY_CELLS = 4096          # (listener, policy, action) triples
MAX_BUCKETS = 4096               # rate limits


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
                 policy_cells: int = MAX_POLICY_CELLS, buckets: int = MAX_BUCKETS) -> None:
        self.listener_blocks, self.max_routes = listener_blocks, routes
        self.max_policy_cells, self.max_buckets = policy_cells, buckets
        self.route_start = C.WORKER_CELLS + listener_blocks * C.BLOCK
        self.policy_start = self.route_start + routes * C.ROUTE_BLOCK
        self.bucket_start = self.policy_start + policy_cells
        self.row = self.bucket_start + buckets
        self.blocks: dict[str, int] = {}
        self.routes: dict[tuple[str, str], int] = {}
        self.policy_cells: dict[tuple[str, str, str], int] = {}
        self.buckets: dict[tuple, int] = {}

    @classmethod
    def sized_for(cls, cfg) -> CellMap:
        """A map just big enough for one config (a process alone)."""
        routes = sum(2 + len(lst.forwarding_policies) * 2 for lst in cfg.listeners)
        policies = sum(len(lst.forwarding_policies) for lst in cfg.listeners)
        return cls(max(1, len(cfg.listeners)), routes, max(1, policies),
                   policies + len(cfg.listeners))

    def gauges(self) -> list[int]:
        """Cells that die with their worker (not added to row 0 when it goes)."""
        return [*range(C.WORKER_CELLS)] + [
            C.WORKER_CELLS + k * C.BLOCK + g for k in range(self.listener_blocks)
            for g in C.GAUGES] + list(range(self.bucket_start, self.row))

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
    for lrt, cells in zip(runtime.listeners, layout, strict=True):
        lrt.counters, lrt.cbase = counters, cells.base
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
