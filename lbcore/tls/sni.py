"""Choosing the certificate by the name the client sends (spec 3.3)."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

T = TypeVar("T")


def normalise(name: str) -> str:
    """Names compare case-insensitively and without a trailing dot."""
    return name.strip().rstrip(".").lower()


class SniSelector(Generic[T]):
    """exact name -> wildcard -> default. `wildcard` mode: `*.example.com`
    matches exactly one label; `longest_suffix` mode: the most specific
    wildcard suffix wins and may match deeper names."""

    def __init__(self, entries: Iterable[tuple[Iterable[str], T]], default: T,
                 match: str = "wildcard") -> None:
        if match not in ("wildcard", "longest_suffix"):
            raise ValueError(f"unknown SNI match mode {match!r}")
        self.default = default
        self.match = match
        self.exact: dict[str, T] = {}
        self.wild: dict[str, T] = {}          # "example.com" for "*.example.com"
        for names, item in entries:
            for name in names:
                n = normalise(name)
                if n.startswith("*."):
                    self.wild.setdefault(n[2:], item)
                else:
                    self.exact.setdefault(n, item)
        self.unmatched = 0
        # Set by the worker: counts into the shared metrics (per handshake, not request).
        self.on_unmatched: Callable[[], object] | None = None

    def select(self, server_name: str | None) -> T:
        hit = self.lookup(server_name)
        if hit is not None:
            return hit
        if server_name:
            self.unmatched += 1
            if self.on_unmatched is not None:
                self.on_unmatched()
        return self.default

    def misdirected(self, sni: str | None, host: bytes | None) -> bool:
        """Spec 3.4: on a mutual listener, Host naming another certificate's
        domain than the one the handshake's SNI chose is answered 421."""
        if not host:
            return False
        name = host.decode("latin-1")
        name = name.rsplit(":", 1)[0] if not name.endswith("]") else name
        wanted = self.lookup(name)
        return wanted is not None and wanted is not (self.lookup(sni) or self.default)

    def lookup(self, server_name: str | None) -> T | None:
        """The certificate entry for a name, or None when nothing but the
        default would match."""
        if not server_name:
            return None
        name = normalise(server_name)
        hit = self.exact.get(name)
        if hit is not None:
            return hit
        labels = name.split(".")
        if self.match == "wildcard":
            if len(labels) > 2 or (len(labels) == 2 and labels[0]):
                hit = self.wild.get(".".join(labels[1:]))
        else:
            for i in range(1, len(labels)):
                hit = self.wild.get(".".join(labels[i:]))
                if hit is not None:
                    break
        return hit

    def install_native(self, default_ctx: ssl.SSLContext) -> None:
        """Choose the context during handshakes of lbcore's TLS transport (a C
        callback on the SSL_CTX that calls `select`)."""
        from lbcore_ext.transport import install_sni

        install_sni(default_ctx, self.select)
        self.installed_on = default_ctx

    def install(self, default_ctx: ssl.SSLContext) -> None:
        """Make `default_ctx` switch to the selected context during the handshake
        of Python's own ssl sockets (SSLSocket, SSLObject)."""

        def callback(sslobj: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext):
            # Kept on the connection's SSLObject for X-Forwarded-Tls-Sni and the
            # 421 check; uvloop hands the same object out as 'ssl_object'.
            sslobj.lbcore_sni = server_name
            chosen = self.select(server_name)
            if chosen is not _ctx:
                sslobj.context = chosen
            return None

        default_ctx.sni_callback = callback
        self.installed_on = default_ctx
