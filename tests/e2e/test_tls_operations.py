"""TLS under the master: handshake failures counted by reason, session
resumption across workers and reloads, certificate and policy changes on
reload, HTTP/2 GOAWAY on shutdown, and h2load against the listener."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import warnings

import httpx
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from tests.e2e.test_metrics import scrape
from tests.support.lbproc import free_port

pytestmark = pytest.mark.timeout(120)


def write_cert(leaf, tmp_path, name: str) -> tuple:
    crt, key = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    crt.write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    return crt, key


def https_config(admin: int, port: int, backend: int, crt, key, extra: str = "",
                 certificates: str = "", listeners: str = "") -> str:
    return f"""\
load_balancer:
  workers: 2
  admin: {{address: 127.0.0.1, port: {admin}}}
  access_log: {{path: "off"}}
certificates:
  site: {{type: server, certificate: "{crt}", private_key: "{key}"}}
{certificates}
listeners:
  - name: tls
    protocol: HTTPS
    address: 127.0.0.1
    port: {port}
    server_certificate: site
    http2: true
    default_pool: p
{extra}
{listeners}
pools:
  p:
    health_check: {{enabled: false}}
    members: [{{name: a, address: 127.0.0.1, port: {backend}}}]
"""


@pytest.fixture
def server_cert(ca, tmp_path):
    return write_cert(ca.issue_cert("localhost", "127.0.0.1"), tmp_path, "site")


def trust(ca) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


def handshake(port: int, ctx: ssl.SSLContext, server_hostname: str = "localhost",
              session=None) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    return ctx.wrap_socket(raw, server_hostname=server_hostname, session=session)


def test_handshake_failures_are_counted_by_reason(running, slow_backends, ca, server_cert,
                                                  tmp_path):
    (b,) = slow_backends(1)
    admin, port, sni_port = free_port(), free_port(), free_port()
    client_ca = trustme.CA()
    (tmp_path / "clients.pem").write_bytes(client_ca.cert_pem.bytes())
    now = dt.datetime.now(dt.timezone.utc)
    good = client_ca.issue_cert("alice.test")
    revoked = client_ca.issue_cert("mallory.test")
    expired = client_ca.issue_cert("old.test", not_before=now - dt.timedelta(days=30),
                                   not_after=now - dt.timedelta(days=1))
    stranger = trustme.CA().issue_cert("eve.test")
    key = serialization.load_pem_private_key(client_ca.private_key_pem.bytes(), None)
    issuer = x509.load_pem_x509_certificate(client_ca.cert_pem.bytes()).subject
    serial = x509.load_pem_x509_certificate(revoked.cert_chain_pems[0].bytes()).serial_number
    crl = (x509.CertificateRevocationListBuilder().issuer_name(issuer).last_update(now)
           .next_update(now + dt.timedelta(days=1))
           .add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(serial)
                                    .revocation_date(now).build())
           .sign(key, hashes.SHA256()))
    (tmp_path / "clients.crl").write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    other_crt, other_key = write_cert(ca.issue_cert("other.test"), tmp_path, "other")
    text = https_config(
        admin, port, b, *server_cert,
        extra="    security_policy: tls-1-2\n    ssl_authentication: mutual\n"
              "    ca_certificate: clients\n",
        certificates=f'  clients: {{type: ca, certificate: "{tmp_path}/clients.pem", '
                     f'crl: "{tmp_path}/clients.crl"}}\n'
                     f'  other: {{type: server, certificate: "{other_crt}", '
                     f'private_key: "{other_key}"}}',
        listeners=f"""\
  - name: sni
    protocol: HTTPS
    address: 127.0.0.1
    port: {sni_port}
    server_certificate: site
    sni: {{enabled: true, certificates: [site, other]}}
    default_pool: p
""")
    lb = running(text, admin, port)

    def attempt(cert=None, version=None) -> None:
        ctx = trust(ca)
        if cert is not None:
            cert.configure_cert(ctx)
        if version is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                ctx.minimum_version = ctx.maximum_version = version
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        try:
            with handshake(port, ctx) as s:
                # TLS 1.3 reports a refused client certificate after the handshake.
                s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
                assert s.recv(100) == b""
        except (ssl.SSLError, ConnectionResetError):
            pass

    with handshake(port, (lambda c: (good.configure_cert(c), c)[1])(trust(ca))) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 200")
    attempt(None)                                     # no client certificate
    attempt(expired)
    attempt(revoked)
    attempt(stranger)                                 # signed by an unknown CA
    attempt(good, ssl.TLSVersion.TLSv1_1)             # the policy is TLS 1.2 only
    with socket.create_connection(("127.0.0.1", port), 5) as raw:     # plain HTTP
        raw.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        raw.settimeout(5)
        with contextlib.suppress(ConnectionResetError):
            raw.recv(100)
    loose = trust(ca)
    loose.check_hostname = False
    with handshake(sni_port, loose, server_hostname="nomatch.test") as s:
        leaf = x509.load_der_x509_certificate(s.getpeercert(binary_form=True))
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert "localhost" in names.get_values_for_type(x509.DNSName)       # the default
    time.sleep(0.3)
    m = scrape(admin)

    def failures(reason: str) -> float:
        return m[("lbcore_tls_handshake_failures_total", (("listener", "tls"),
                                                          ("reason", reason)))]

    assert failures("no_client_certificate") == 1
    assert failures("client_certificate_expired") == 1
    assert failures("client_certificate_revoked") == 1
    assert failures("client_certificate_invalid") == 1
    assert failures("protocol_version") == 1
    assert failures("plain_http") == 1
    assert m[("lbcore_tls_handshakes_total", (("listener", "tls"), ("version", "TLSv1.2")))] == 1
    assert m[("lbcore_sni_unmatched_total", (("listener", "sni"),))] == 1
    assert lb.status()["ready"]


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_session_resumes_on_another_worker_and_after_reload(running, slow_backends, ca,
                                                            server_cert, version):
    (b,) = slow_backends(1)
    admin, port = free_port(), free_port()
    text = https_config(admin, port, b, *server_cert,
                        extra="    security_policy: tls-1-2-fs-with-1-3\n")
    lb = running(text, admin, port)
    pids = [w["pid"] for w in lb.status()["workers"]]
    ctx = trust(ca)
    ctx.minimum_version = ctx.maximum_version = version

    def connect(session=None):
        with handshake(port, ctx, session=session) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            while s.recv(65536):
                pass                      # TLS 1.3 tickets arrive after the handshake
            return s.session, s.session_reused

    def only(pid_running: int):
        """Stop every worker but one, so that one takes the next connection."""
        for pid in pids:
            os.kill(pid, signal.SIGCONT if pid == pid_running else signal.SIGSTOP)

    try:
        only(pids[0])
        session, reused = connect()
        assert not reused
        only(pids[1])
        _, reused = connect(session)
        assert reused, "a ticket from one worker must resume on the other"
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    lb.reload(text.replace("http2: true", "http2: false"))
    lb.wait(lambda s: s["config"]["generation"] == 2
            and all(w["generation"] == 2 for w in s["workers"]))
    _, reused = connect(session)
    assert reused, "ticket keys outlive a reload"


def test_certificate_and_policy_change_on_reload(running, slow_backends, ca, server_cert,
                                                 tmp_path):
    (b,) = slow_backends(1)
    admin, port = free_port(), free_port()
    text = https_config(admin, port, b, *server_cert,
                        extra="    security_policy: tls-1-2-fs-with-1-3\n")
    lb = running(text, admin, port)

    def served_serial() -> tuple[int, str]:
        with handshake(port, trust(ca)) as s:
            der = s.getpeercert(binary_form=True)
            return x509.load_der_x509_certificate(der).serial_number, s.version()

    first, version = served_serial()
    assert version == "TLSv1.3"
    # A client mid-way through a slow request on an established connection.
    with httpx.Client(verify=trust(ca)) as client:
        assert client.get(f"https://localhost:{port}/ok").status_code == 200
        result: list = []
        t = threading.Thread(target=lambda: result.append(
            client.get(f"https://localhost:{port}/slow/1.5")))
        t.start()
        time.sleep(0.3)
        new = ca.issue_cert("localhost", "127.0.0.1")
        write_cert(new, tmp_path, "site")             # the same files, a new certificate
        lb.reload(text.replace("tls-1-2-fs-with-1-3", "tls-1-2-fs"))
        lb.wait(lambda s: s["config"]["generation"] == 2)
        second, version = served_serial()
        assert second != first and version == "TLSv1.2"
        t.join(10)
        assert result and result[0].status_code == 200     # not dropped by the reload
        assert client.get(f"https://localhost:{port}/after").status_code == 200


def test_http2_goaway_on_shutdown_lets_streams_finish(running, slow_backends, ca,
                                                      server_cert, tmp_path):
    nghttp = shutil.which("nghttp")
    if nghttp is None:
        pytest.skip("nghttp (Debian package nghttp2-client) not installed")
    (b,) = slow_backends(1)
    admin, port = free_port(), free_port()
    lb = running(https_config(admin, port, b, *server_cert), admin, port)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    proc = subprocess.Popen([nghttp, "-v", f"https://localhost:{port}/slow/1.5"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(0.6)
    os.kill(lb.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=15)
    goaway = re.search(r"recv GOAWAY frame.*\n.*last_stream_id=(\d+), error_code=(\w+)", out)
    assert goaway, out
    assert goaway.group(2) == "NO_ERROR"
    # The GOAWAY lets the request's stream through, and its response follows it.
    assert re.search(rf"recv HEADERS frame <[^>]*stream_id={goaway.group(1)}>", out), out
    assert out.index(":status: 200") > goaway.start()
    assert '"path": "/slow/1.5"' in out
    assert lb.lb.proc.wait(10) == 0


def test_h2load_many_streams(running, slow_backends, ca, server_cert):
    h2load = shutil.which("h2load")
    if h2load is None:
        pytest.skip("h2load (Debian package nghttp2-client) not installed")
    (b,) = slow_backends(1)
    admin, port = free_port(), free_port()
    running(https_config(admin, port, b, *server_cert), admin, port)
    run = subprocess.run([h2load, "-n", "3000", "-c", "10", "-m", "100",
                          f"https://127.0.0.1:{port}/h2load"],
                         capture_output=True, text=True, timeout=60)
    assert "3000 succeeded, 0 failed, 0 errored" in run.stdout, run.stdout + run.stderr
    assert "status codes: 3000 2xx" in run.stdout
    assert "Application protocol: h2" in run.stdout


def test_ticket_key_rotation_keeps_one_previous_key(running, slow_backends, ca,
                                                    server_cert):
    (b,) = slow_backends(1)
    admin, port = free_port(), free_port()
    text = https_config(admin, port, b, *server_cert).replace(
        "  workers: 2\n", "  workers: 2\n  session_ticket_rotation: 2\n")
    lb = running(text, admin, port)
    ctx = trust(ca)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2

    def connect(session=None):
        with handshake(port, ctx, session=session) as s:
            return s.session, s.session_reused

    for _attempt in range(5):
        while True:      # a ticket sealed under a known key (no rotation in between)
            rotations = lb.status()["tls"]["ticket_key_rotations"]
            session, _ = connect()
            if lb.status()["tls"]["ticket_key_rotations"] == rotations:
                break
        lb.wait(lambda s, r=rotations: s["tls"]["ticket_key_rotations"] == r + 1, timeout=5)
        time.sleep(0.3)                       # workers pick the keys up within 0.1 s
        resumed = connect(session)[1]
        # On a loaded machine a second rotation may come first: that try says nothing.
        if lb.status()["tls"]["ticket_key_rotations"] == rotations + 1:
            break
    assert resumed, "the previous key still opens the ticket"
    lb.wait(lambda s: s["tls"]["ticket_key_rotations"] == rotations + 2, timeout=5)
    time.sleep(0.3)
    assert not connect(session)[1], "two rotations later the ticket is refused"


MALFORMED_H2 = {
    "upper-case name": [(b"X-Upper", b"1")],
    "CR LF in a value": [(b"x-smuggle", b"a\r\nx-injected: 1")],
    "NUL in a value": [(b"x-nul", b"a\x00b")],
    "leading space in a value": [(b"x-space", b" a")],
    "connection header": [(b"connection", b"keep-alive")],
    "transfer-encoding": [(b"transfer-encoding", b"chunked")],
    "te other than trailers": [(b"te", b"gzip")],
    "pseudo after regular": [(b"x-a", b"1"), (b":scheme", b"https")],
    "unknown pseudo": [(b":protocol", b"x")],
    "duplicate :path": [(b":path", b"/again")],
}


def test_http2_malformed_requests_are_reset_not_forwarded(running, slow_backends, ca,
                                                          server_cert):
    import h2.config
    import h2.connection
    import h2.events

    (b,) = slow_backends(1)
    admin, port = free_port(), free_port()
    running(https_config(admin, port, b, *server_cert), admin, port)
    ctx = trust(ca)
    ctx.set_alpn_protocols(["h2"])
    with handshake(port, ctx) as s:
        assert s.selected_alpn_protocol() == "h2"
        conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=False,
            normalize_outbound_headers=False))
        conn.initiate_connection()
        base = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"localhost"),
                (b":path", b"/ok")]
        sids = {}
        for what, extra in MALFORMED_H2.items():
            sid = conn.get_next_available_stream_id()
            headers = base + extra if extra[0][0] != b":protocol" else base[:1] + extra + base[1:]
            conn.send_headers(sid, headers, end_stream=True)
            sids[sid] = what
        good = conn.get_next_available_stream_id()
        conn.send_headers(good, base, end_stream=True)
        s.sendall(conn.data_to_send())
        reset, status = {}, None
        s.settimeout(5)
        while status is None or len(reset) < len(sids):
            data = s.recv(65536)
            assert data, f"closed; reset so far {reset}"
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.StreamReset):
                    reset[ev.stream_id] = ev.error_code
                elif isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == good:
                    status = dict(ev.headers)[b":status"]
            s.sendall(conn.data_to_send())
    assert {sids[sid]: code for sid, code in reset.items()} == {
        what: h2.errors.ErrorCodes.PROTOCOL_ERROR for what in MALFORMED_H2}
    assert status == b"200"           # the connection survives its malformed streams
