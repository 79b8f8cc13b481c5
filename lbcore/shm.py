"""State the master shares with its workers through memory, not messages:
member health from the master's health checks and the TLS session-ticket keys
every worker must hold for resumption to work across processes.

One block per config generation, in a memfd the master creates and passes to
the workers it execs. The master writes a value, then bumps a version; each
worker polls the versions a few times a second and applies what changed.
Counters live elsewhere (lbcore_ext.counters): they are written per request.
"""

from __future__ import annotations

import json
import mmap
import os
import struct

from lbcore_ext.tlsctl import TICKET_KEYS_LEN

# Layout: ticket version, ticket keys (current, then previous), health
# version, one (state, up_since in microseconds of CLOCK_MONOTONIC) pair per
# member slot, then the member sets: a version (odd while the master writes),
# a length and that many bytes of JSON, {pool: [[config index, address,
# slot, [member block per listener]], ...]}. A slot is one runtime member's
# health cell; it stays the same while the member's address stays in its
# pool's DNS answer. The member blocks are its counter cells (lbcore/cells.py).
_I64 = struct.Struct("<q")
_MEMBER = struct.Struct("<qq")
_TICKET_VERSION = 0
_TICKET_KEYS = 8
_HEALTH_VERSION = _TICKET_KEYS + ((2 * TICKET_KEYS_LEN + 7) // 8) * 8
_MEMBERS = _HEALTH_VERSION + 8

UNKNOWN, DOWN, UP = -1, 0, 1
# Bytes of member-set JSON per slot: an IPv6 address, two indexes, the
# punctuation; and a member block (or -1) per listener.
_TABLE_PER_SLOT = 96
_TABLE_PER_LISTENER = 10


class SharedState:
    def __init__(self, members: int, fd: int | None = None, listeners: int = 1) -> None:
        """A new block (master) when `fd` is None, else the master's (worker)."""
        self.members = members
        self.listeners = listeners
        self._table = _MEMBERS + _MEMBER.size * max(members, 1)
        self._table_cap = 4096 + (_TABLE_PER_SLOT + _TABLE_PER_LISTENER * listeners) * members
        size = self._table + 16 + self._table_cap
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

    # ---- member sets (DNS) -------------------------------------------------------------

    @property
    def members_version(self) -> int:
        return self._get(self._table)

    def set_member_sets(self, sets: dict[str, list[tuple]]) -> None:
        """{pool: [(config index, address, slot, member blocks)]}: the runtime members."""
        blob = json.dumps(sets, separators=(",", ":")).encode()
        if len(blob) > self._table_cap:
            raise ValueError(f"member sets of {len(blob)} bytes exceed {self._table_cap}")
        version = self.members_version
        _I64.pack_into(self.mem, self._table, version + 1)        # odd: being written
        _I64.pack_into(self.mem, self._table + 8, len(blob))
        self.mem[self._table + 16:self._table + 16 + len(blob)] = blob
        _I64.pack_into(self.mem, self._table, version + 2)

    def member_sets(self) -> tuple[int, dict[str, list[tuple]] | None]:
        """(version, sets), or (version, None) if the master is writing them."""
        version = self.members_version
        if version % 2:
            return version, None
        n = self._get(self._table + 8)
        blob = bytes(self.mem[self._table + 16:self._table + 16 + n])
        if self.members_version != version:
            return version, None
        sets = json.loads(blob) if blob else {}
        return version, {pool: [tuple(e) for e in entries] for pool, entries in sets.items()}
