"""Session-ticket keys of our own (lbcore_ext.tlsctl): a ticket sealed under
the current key resumes; after one rotation it still resumes (the previous
key opens it, and a fresh ticket is issued); after two it does not."""

from __future__ import annotations

import os
import ssl

import pytest
import trustme

from lbcore_ext.tlsctl import TICKET_KEYS_LEN, set_ticket_keys, use_ticket_keys


@pytest.fixture(scope="module")
def contexts():
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost")
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(client)
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    client13 = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(client13)
    client13.minimum_version = ssl.TLSVersion.TLSv1_3
    return leaf, client, client13


def server_context(leaf) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    leaf.configure_cert(ctx)
    use_ticket_keys(ctx)
    return ctx


def handshake(server_ctx, client_ctx, session=None):
    """A full TLS exchange in memory; (session, reused)."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="localhost", session=session)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = [False, False]
    for _ in range(20):
        for i, (end, out, peer_in) in enumerate(((client, c_out, s_in), (server, s_out, c_in))):
            if not done[i]:
                try:
                    end.do_handshake()
                    done[i] = True
                except ssl.SSLWantReadError:
                    pass
            data = out.read()
            if data:
                peer_in.write(data)
        if all(done):
            if c_in.pending:                # TLS 1.3: tickets come after the handshake
                with pytest.raises(ssl.SSLWantReadError):
                    client.read(1)
            return client.session, client.session_reused
    raise AssertionError("handshake did not finish")


def key() -> bytes:
    return os.urandom(TICKET_KEYS_LEN)


def test_rotation_keeps_previous_key_for_one_period(contexts):
    leaf, client, _ = contexts
    server = server_context(leaf)
    k1, k2, k3 = key(), key(), key()
    set_ticket_keys(k1)
    s1, reused = handshake(server, client)
    assert not reused and s1.has_ticket
    assert handshake(server, client, s1)[1]
    set_ticket_keys(k2, k1)                    # one rotation: k1 still opens tickets
    s2, reused = handshake(server, client, s1)
    assert reused
    set_ticket_keys(k3, k2)                    # two rotations: k1 is gone
    assert not handshake(server, client, s1)[1]
    assert handshake(server, client, s2)[1]    # the ticket renewed under k2 still works


def test_same_keys_in_another_context_resume(contexts):
    """What makes resumption work across workers: another process's context
    holding the same keys opens the ticket."""
    leaf, client, _ = contexts
    set_ticket_keys(key())
    session, _ = handshake(server_context(leaf), client)
    assert handshake(server_context(leaf), client, session)[1]


def test_tls13_resumption_issues_a_new_ticket(contexts):
    """TLS 1.3 clients use a ticket once (RFC 8446, C.4): a resumption hands
    out a fresh ticket, as OpenSSL does with its own keys (nginx's default),
    so such a client keeps resuming."""
    leaf, _, client = contexts
    server = server_context(leaf)
    set_ticket_keys(key())
    s1, reused = handshake(server, client)
    assert not reused and s1.has_ticket
    s2, reused = handshake(server, client, s1)
    assert reused and s2.has_ticket and s2.id != s1.id
    s3, reused = handshake(server, client, s2)
    assert reused and s3.id != s2.id


def test_bad_key_length_refused():
    with pytest.raises(ValueError, match="80 bytes"):
        set_ticket_keys(b"short")
