"""The extension seam (Pingora-style). Subclass `Phases`, override the hooks you
need, and run `lbcore run -c lb.yaml --phases mymodule:MyPhases`. lbcore's own
behaviour is what happens when a hook is not overridden, and a hook that is not
overridden is never called: the default path pays nothing.

Order of the hooks for one request (docs/phases.md draws it):
on_accept -> request_filter -> upstream_peer -> upstream_request_filter
-> [connect: fail_to_connect | send/receive: error_while_proxy] -> response_filter
-> fail_to_proxy (only when lbcore answers with an error) -> logging
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Any

from lbcore_ext.phases import HOOK_NAMES

# An answer of the hooks' own: (status, [(name, value)], body).
Answer = tuple[int, list[tuple[str, str]], bytes]


class Phases:
    """Default hooks. Each runs on the event loop: keep them fast and never block."""

    def on_accept(self, client_ip: str, client_port: int) -> bool:
        """After accept (and TLS); return False to close the connection."""
        return True

    def request_filter(self, req: Any) -> Answer | None:
        """Return (status, headers, body) to answer without a backend."""
        return None

    def upstream_peer(self, req: Any, members: tuple) -> Any | None:
        """Return one of `members` to override the pool's algorithm, or None."""
        return None

    def upstream_request_filter(self, req: Any) -> Iterable[tuple[str, str]] | None:
        """Return extra (name, value) headers to send to the backend."""
        return None

    def response_filter(self, req: Any, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        """Edit the response headers in place (add, remove, replace)."""

    def fail_to_connect(self, req: Any, member: Any, reason: str) -> None:
        """A connection to `member` failed ('refused' or 'connect_timeout')."""

    def error_while_proxy(self, req: Any, member: Any, reason: str) -> None:
        """The exchange with `member` failed after connecting."""

    def fail_to_proxy(self, req: Any, status: int) -> Answer | None:
        """lbcore is about to answer `status` itself; return (status, headers,
        body) to send instead. Like request_filter's answer, it is written in
        the client's framing (HTTP/1.1 or HTTP/2), without a body to HEAD."""
        return None

    def logging(self, req: Any, status: int, member: Any) -> None:
        """The request is over."""


def hook_mask(phases: Phases | None) -> int:
    """Bits of the hooks `phases` overrides: only those are called."""
    if phases is None:
        return 0
    mask = 0
    for name, bit in HOOK_NAMES.items():
        if getattr(type(phases), name) is not getattr(Phases, name):
            mask |= bit
    return mask


def load_phases(spec: str) -> Phases:
    """'package.module:ClassName' -> an instance."""
    module_name, _, class_name = spec.partition(":")
    if not module_name or not class_name:
        raise ValueError(f"--phases wants 'module:Class', got {spec!r}")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, Phases)):
        raise TypeError(f"{spec} is not a subclass of lbcore.phases.Phases")
    return cls()
