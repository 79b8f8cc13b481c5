"""SNI selection rules (spec 3.3) and the handshake actually serving the chosen
certificate, through real TLS on loopback."""

import socket
import ssl
import threading

import pytest
import trustme

from lbcore.tls.sni import SniSelector


def sel(match="wildcard"):
    return SniSelector([(["www.example.com", "example.com"], "www"),
                        (["*.example.com"], "wild"),
                        (["*.b.example.com"], "deep"),
                        (["API.Example.org."], "api")], "default", match)


@pytest.mark.parametrize("name,expected", [
    ("www.example.com", "www"),
    ("WWW.EXAMPLE.COM.", "www"),          # case and trailing dot ignored
    ("example.com", "www"),               # exact, not the wildcard
    ("a.example.com", "wild"),            # one label
    ("x.a.example.com", "default"),       # wildcard is one label only
    ("c.b.example.com", "deep"),
    ("api.example.org", "api"),
    ("other.test", "default"),
    (None, "default"),
    ("", "default"),
])
def test_wildcard_mode(name, expected):
    assert sel().select(name) == expected


@pytest.mark.parametrize("name,expected", [
    ("x.a.example.com", "wild"),          # deeper names match the longest suffix
    ("x.c.b.example.com", "deep"),
    ("www.example.com", "www"),
    ("example.com", "www"),
    ("nothing.test", "default"),
])
def test_longest_suffix_mode(name, expected):
    assert sel("longest_suffix").select(name) == expected


def test_unmatched_is_counted():
    s = sel()
    s.select("nope.test")
    s.select("www.example.com")
    assert s.unmatched == 1


def served_cn(ctx: ssl.SSLContext, ca: trustme.CA, server_name: str | None, ecdsa: bool = True):
    """Handshake with `ctx` as server; return the served certificate's SAN list."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def serve():
        conn, _ = srv.accept()
        try:
            with ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except (ssl.SSLError, OSError):
            pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    client = ssl.create_default_context()
    ca.configure_trust(client)
    client.check_hostname = False
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    client.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256" if ecdsa else "ECDHE-RSA-AES128-GCM-SHA256")
    with socket.create_connection(srv.getsockname()) as raw, \
            client.wrap_socket(raw, server_hostname=server_name) as tls:
        cert = tls.getpeercert()
        algo = tls.cipher()[0]
    t.join(5)
    srv.close()
    return sorted(v for k, v in cert["subjectAltName"]), algo


def test_handshake_serves_selected_certificate_and_key_type():
    ca = trustme.CA()
    default = ca.issue_cert("default.test")
    api_ec = ca.issue_cert("api.test", key_type=trustme.KeyType.ECDSA)
    api_rsa = ca.issue_cert("api.test", key_type=trustme.KeyType.RSA)

    def ctx_for(*certs):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        for c in certs:            # one context may hold an ECDSA and an RSA certificate
            c.configure_cert(ctx)
        return ctx

    default_ctx = ctx_for(default)
    api_ctx = ctx_for(api_rsa, api_ec)
    selector = SniSelector([(["api.test"], api_ctx)], default_ctx)
    selector.install(default_ctx)
    assert served_cn(default_ctx, ca, "api.test")[0] == ["api.test"]
    assert "ECDSA" in served_cn(default_ctx, ca, "api.test", ecdsa=True)[1]
    assert "RSA" in served_cn(default_ctx, ca, "api.test", ecdsa=False)[1]
    assert served_cn(default_ctx, ca, "unknown.test")[0] == ["default.test"]
    assert selector.unmatched == 1
