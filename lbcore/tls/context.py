"""One ssl.SSLContext per listener, built in the control plane from the
certificate and the security policy. The data plane runs OpenSSL on the
socket with this context's SSL_CTX (lbcore_ext/transport.pyx): no SSLObject is
ever made from it for client connections."""

from __future__ import annotations

import ssl

from lbcore_ext.tlsctl import set_ciphersuites, set_dh_auto

VERSIONS = {
    "TLSv1": ssl.TLSVersion.TLSv1,
    "TLSv1.1": ssl.TLSVersion.TLSv1_1,
    "TLSv1.2": ssl.TLSVersion.TLSv1_2,
    "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}
_ORDER = list(VERSIONS)


class TLSConfigError(Exception):
    """The local OpenSSL cannot do what the policy asks."""


def server_context(cert_path, key_path, versions, ciphers, tls13_suites=(), *,
                   alpn=("http/1.1",), client_ca=None, crl=None) -> ssl.SSLContext:
    """A server context with exactly the policy's versions, TLS<=1.2 suites and
    TLS 1.3 suites, in the policy's order with server preference (spec 3.2)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ordered = sorted(versions, key=_ORDER.index)
    ctx.minimum_version = VERSIONS[ordered[0]]
    ctx.maximum_version = VERSIONS[ordered[-1]]
    legacy = ordered[0] in ("TLSv1", "TLSv1.1")
    if ciphers:
        # OpenSSL 3 refuses TLS 1.0/1.1 (and SHA-1 suites) above security level 0.
        spec = ":".join(ciphers) + (":@SECLEVEL=0" if legacy else "")
        try:
            ctx.set_ciphers(spec)
        except ssl.SSLError as exc:
            raise TLSConfigError(f"cipher list not usable by this OpenSSL: {spec}") from exc
    if any(c.startswith("DHE-") for c in ciphers):
        set_dh_auto(ctx)
    if "TLSv1.3" in versions:
        try:
            set_ciphersuites(ctx, ":".join(tls13_suites))
        except ValueError as exc:
            raise TLSConfigError(str(exc)) from exc
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_COMPRESSION
    ctx.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    ctx.load_cert_chain(str(cert_path), str(key_path))
    if client_ca is not None:
        # Mutual authentication (spec 3.4): no valid client certificate, no
        # handshake; the TLS alert is the only answer.
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=str(client_ca))
        if crl is not None:
            ctx.load_verify_locations(cafile=str(crl))
            ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx
