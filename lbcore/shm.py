"""State the master shares with its workers through memory, not messages:
member health from the master's health checks and the TLS session-ticket keys
every worker must hold for resumption to work across processes.

One block per config generation, in a memfd the master creates and passes to
the workers it execs. The master writes a value, then bumps a version; each
worker polls the versions a few times a second and applies what changed.
Counters live elsewhere (lbcore_ext.counters): they are written per request.
"""

from __future__ import annotations

import mmap
import os
import struct

from lbcore_ext.tlsctl import TICKET_KEYS_LEN

# Layout: ticket version, ticket keys (current, then previous), health
# version, then one (state, up_since in microseconds of CLOCK_MONOTONIC) pair
# per member.
_I64 = struct.Struct("<q")
_MEMBER = struct.Struct("<qq")
_TICKET_VERSION = 0
_TICKET_KEYS = 8
_HEALTH_VERSION = _TICKET_KEYS + ((2 * TICKET_KEYS_LEN + 7) // 8) * 8
_MEMBERS = _HEALTH_VERSION + 8

UNKNOWN, DOWN, UP = -1, 0, 1


def member_order(cfg) -> list[tuple[str, int]]:
    """(pool, index) of every member, in the order master and workers agree on."""
    return [(pool_name, i) for pool_name, pool in cfg.pools.items()
            for i in range(len(pool.members))]


class SharedState:
    def __init__(self, members: int, fd: int | None = None) -> None:
        """A new block (master) when `fd` is None, else the master's (worker)."""
        self.members = members
        size = _MEMBERS + _MEMBER.size * max(members, 1)
        if fd is None:
            fd = os.memfd_create("lbcore-state", 0)
            os.ftruncate(fd, size)
            self.mem = mmap.mmap(fd, size)
            for i in range(members):
                _MEMBER.pack_into(self.mem, _MEMBERS + i * _MEMBER.size, UNKNOWN, 0)
        else:
            self.mem = mmap.mmap(fd, size)
        self.fd = fd

    def close(self) -> None:
        self.mem.close()
        os.close(self.fd)

    def _get(self, offset: int) -> int:
        return _I64.unpack_from(self.mem, offset)[0]

    def _bump(self, offset: int) -> None:
        _I64.pack_into(self.mem, offset, self._get(offset) + 1)

    # ---- session-ticket keys ---------------------------------------------------------

    @property
    def ticket_version(self) -> int:
        return self._get(_TICKET_VERSION)

    def set_ticket_keys(self, current: bytes, previous: bytes | None) -> None:
        """`previous` (the key before the last rotation) still opens tickets."""
        previous = previous or bytes(TICKET_KEYS_LEN)
        if len(current) != TICKET_KEYS_LEN or len(previous) != TICKET_KEYS_LEN:
            raise ValueError(f"ticket keys are {TICKET_KEYS_LEN} bytes")
        self.mem[_TICKET_KEYS:_TICKET_KEYS + 2 * TICKET_KEYS_LEN] = current + previous
        self._bump(_TICKET_VERSION)

    def ticket_keys(self) -> tuple[bytes, bytes | None]:
        keys = bytes(self.mem[_TICKET_KEYS:_TICKET_KEYS + 2 * TICKET_KEYS_LEN])
        current, previous = keys[:TICKET_KEYS_LEN], keys[TICKET_KEYS_LEN:]
        return current, (previous if any(previous) else None)

    # ---- member health ---------------------------------------------------------------

    @property
    def health_version(self) -> int:
        return self._get(_HEALTH_VERSION)

    def set_member(self, i: int, state: int, up_since: float) -> None:
        _MEMBER.pack_into(self.mem, _MEMBERS + i * _MEMBER.size, state, int(up_since * 1e6))
        self._bump(_HEALTH_VERSION)

    def member(self, i: int) -> tuple[int, float]:
        """(UNKNOWN/DOWN/UP, monotonic time it came up)."""
        state, up_us = _MEMBER.unpack_from(self.mem, _MEMBERS + i * _MEMBER.size)
        return state, up_us / 1e6
