"""Member host names -> addresses (issue 13, item 5).

A member whose address is a host name stands for every address the name
resolves to (as Envoy's strict DNS clusters and HAProxy's server-template
do), so a Kubernetes headless Service's pods are all members. The master
resolves names when a config loads and again every pool's `resolve_interval`
seconds; workers never resolve, they get the master's member sets through
shared memory (lbcore/shm.py), so every worker balances over the same set.

Addresses kept: those of the family of the first answer (getaddrinfo orders
answers by RFC 6724, so that is the family the host prefers), without
duplicates, sorted so the order does not depend on the resolver's rotation,
and at most MAX_ADDRESSES per name.

Tests can't change real DNS: LBCORE_TEST_HOSTS names a file in /etc/hosts
format that is read before the system resolver at every resolution (a name
it lists resolves to its lines there, others go to getaddrinfo). It exists
for the test suite; it is not part of the configuration."""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

# Addresses one name may contribute to a pool; shared memory is sized for it.
MAX_ADDRESSES = 64
TEST_HOSTS_ENV = "LBCORE_TEST_HOSTS"


class ResolveError(Exception):
    """A member's host name did not resolve."""


@dataclass(frozen=True)
class Resolved:
    """One runtime member: a config member at one of its addresses."""

    pool: str
    member: int        # the config member's position in its pool
    name: str          # metric and status label: the member's name, or name/address
    config_name: str   # the config member's name (what a reload matches on)
    host: str          # an IP literal
    port: int
    weight: int

    @property
    def key(self) -> tuple[int, str]:
        """What stays the same member across re-resolutions."""
        return self.member, self.host


# pool name -> its runtime members, in order
Resolution = Mapping[str, tuple[Resolved, ...]]


def is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _test_hosts(host: str) -> list[str] | None:
    path = os.environ.get(TEST_HOSTS_ENV)
    if not path:
        return None
    found: list[str] = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                parts = line.split("#", 1)[0].split()
                if len(parts) >= 2 and host.lower() in (p.lower() for p in parts[1:]):
                    found.append(parts[0])
    except OSError:
        return None
    return found or None


def resolve_addresses(host: str) -> list[str]:
    """The addresses a member host stands for; ResolveError if none."""
    if is_literal(host):
        return [str(ipaddress.ip_address(host))]
    addrs = _test_hosts(host)
    if addrs is None:
        try:
            infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise ResolveError(f"{host!r} does not resolve: {exc}") from exc
        family = infos[0][0] if infos else None
        addrs = [str(info[4][0]) for info in infos if info[0] == family]
    ips = sorted({ipaddress.ip_address(a) for a in addrs},
                 key=lambda ip: (ip.version, int(ip)))
    if not ips:
        raise ResolveError(f"{host!r} resolves to no address")
    return [str(ip) for ip in ips[:MAX_ADDRESSES]]


def resolve_pool(name: str, pool, cache: dict[str, list[str]] | None = None
                 ) -> tuple[Resolved, ...]:
    """A pool's runtime members; ResolveError naming the pool and member."""
    answers = []
    for i, m in enumerate(pool.members):
        try:
            addrs = cache[m.address] if cache is not None and m.address in cache \
                else resolve_addresses(m.address)
        except ResolveError as exc:
            raise ResolveError(f"pool {name}, member {m.name}: {exc}") from exc
        if cache is not None:
            cache[m.address] = addrs
        answers += [(i, a) for a in addrs]
    return _expand(name, pool, answers)


def _expand(name: str, pool, answers: list[tuple[int, str]]) -> tuple[Resolved, ...]:
    """[(config index, address)] -> runtime members; a name that stands for
    several addresses labels each as name/address."""
    count: dict[int, int] = {}
    for i, _ in answers:
        count[i] = count.get(i, 0) + 1
    out = []
    for i, a in answers:
        m = pool.members[i]
        several = not is_literal(m.address) and count[i] > 1
        out.append(Resolved(name, i, f"{m.name}/{a}" if several else m.name, m.name, a,
                            m.port, m.weight))
    return tuple(out)


MemberKey = tuple[str, int, str]        # (pool, config index, address)


def from_sets(cfg, sets: Mapping[str, list[tuple]]
              ) -> tuple[dict[str, tuple[Resolved, ...]], dict[MemberKey, int],
                         dict[MemberKey, list[int]]]:
    """The master's shared member sets -> (resolution, slot of each member,
    its member blocks per listener)."""
    resolution = {name: _expand(name, pool, [(e[0], e[1]) for e in sets.get(name, ())])
                  for name, pool in cfg.pools.items()}
    slots = {(name, e[0], e[1]): e[2] for name, entries in sets.items() for e in entries}
    blocks = {(name, e[0], e[1]): list(e[3]) if len(e) > 3 else []
              for name, entries in sets.items() for e in entries}
    return resolution, slots, blocks


def resolve_config(cfg) -> dict[str, tuple[Resolved, ...]]:
    """Every pool's members (each name looked up once)."""
    cache: dict[str, list[str]] = {}
    return {name: resolve_pool(name, pool, cache) for name, pool in cfg.pools.items()}


def has_names(pool) -> bool:
    return any(not is_literal(m.address) for m in pool.members)


def capacity(cfg) -> int:
    """Runtime members the config can ever have: the shared state's size."""
    return sum(1 if is_literal(m.address) else MAX_ADDRESSES
               for pool in cfg.pools.values() for m in pool.members)
