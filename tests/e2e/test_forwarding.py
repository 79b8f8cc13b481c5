"""The real `lbcore run` process on loopback: TLS with certificates made by the
test, real clients (httpx, curl, openssl s_client), echo backends."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import time
from collections import Counter

import httpx
import pytest

from tests.support.lbproc import free_port, run_config


def config(certs, port, members, extra_listener="", http_port=None, pool_extra=""):
    member_lines = "\n".join(f"      - {{address: 127.0.0.1, port: {p}, weight: {w}}}"
                             for p, w in members)
    http = f"""
  - name: plain
    protocol: HTTP
    address: 127.0.0.1
    port: {http_port}
    default_pool: web
""" if http_port else ""
    return f"""\
load_balancer: {{name: t, id: lb-123, eip: 203.0.113.10, admin: {{port: {free_port()}}}}}
certificates:
  site: {{type: server, certificate: "{certs['crt']}", private_key: "{certs['key']}"}}
listeners:
  - name: tls
    protocol: HTTPS
    address: 127.0.0.1
    port: {port}
    server_certificate: site
    http2: true
    transfer_eip: true
    default_pool: web
{extra_listener}{http}
pools:
  web:
    health_check: {{enabled: false}}
{pool_extra}    members:
{member_lines}
"""


@pytest.fixture
def lb(tmp_path):
    started = []

    def start(text, ports):
        proc = run_config(tmp_path, text, ports)
        started.append(proc)
        return proc

    yield start
    for p in started:
        p.stop()


def trust(certs) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certs["ca"]))


def headers_of(resp) -> dict:
    return {n.lower(): v for n, v in resp.json()["headers"]}


def test_https_headers_toward_backend(lb, backends, certs):
    port, http_port = free_port(), free_port()
    (b,) = backends(1)
    lb(config(certs, port, [(b, 1)], http_port=http_port), [port, http_port])
    with httpx.Client(verify=trust(certs)) as c:
        r = c.get(f"https://localhost:{port}/path?q=1", headers={
            "X-Forwarded-For": "1.2.3.4", "X-Real-IP": "6.6.6.6", "Connection": "X-Secret",
            "X-Secret": "hop", "Keep-Alive": "timeout=5", "X-Forwarded-ELB-IP": "evil",
            "X-Custom": "kept"})
        # The same connection again: the forwarded lines made once for it
        # (ForwardedLines) still take each request's own X-Forwarded-For.
        again = [headers_of(c.get(f"https://localhost:{port}/", headers=extra))
                 for extra in ({}, {"X-Forwarded-For": "5.6.7.8"}, {})]
    assert [g["x-forwarded-for"] for g in again] == [
        "127.0.0.1", "5.6.7.8, 127.0.0.1", "127.0.0.1"]
    assert {(g["x-real-ip"], g["x-forwarded-proto"]) for g in again} == {("127.0.0.1", "https")}
    assert r.status_code == 200
    h = headers_of(r)
    assert r.json()["path"] == "/path?q=1"
    assert h["x-forwarded-for"] == "1.2.3.4, 127.0.0.1"
    assert h["x-real-ip"] == "127.0.0.1"
    assert h["x-forwarded-proto"] == "https"
    assert h["host"] == f"localhost:{port}" and h["x-forwarded-host"] == f"localhost:{port}"
    assert h["x-forwarded-elb-ip"] == "203.0.113.10"
    assert h["x-custom"] == "kept"
    assert "x-secret" not in h and "keep-alive" not in h
    r = httpx.get(f"http://127.0.0.1:{http_port}/")
    assert headers_of(r)["x-forwarded-proto"] == "http"


@pytest.mark.parametrize("mode,expected", [("remove", "127.0.0.1"), ("preserve", "1.2.3.4")])
def test_xff_modes_and_aliases(lb, backends, certs, mode, expected):
    port = free_port()
    (b,) = backends(1)
    text = config(certs, port, [(b, 1)]).replace(
        "    default_pool: web\n",
        f"    default_pool: web\n    insert_headers:\n      x_forwarded_for: {mode}\n"
        "      x_forwarded_port: true\n      x_forwarded_for_port: true\n"
        "      aliases: {x_forwarded_port: x-lb-port}\n", 1)
    lb(text, [port])
    r = httpx.get(f"https://localhost:{port}/", verify=trust(certs),
                  headers={"X-Forwarded-For": "1.2.3.4", "X-LB-Port": "spoofed"})
    h = headers_of(r)
    assert h["x-forwarded-for"] == expected
    assert h["x-lb-port"] == str(port)
    # The client's own port (made once per connection with the lines above).
    assert 0 < int(h["x-forwarded-for-port"]) < 65536 and h["x-forwarded-for-port"] != str(port)


def test_weighted_round_robin_and_weight_zero(lb, backends, certs):
    port = free_port()
    a, b, c = backends(3)
    lb(config(certs, port, [(a, 3), (b, 1), (c, 0)]), [port])
    with httpx.Client(verify=trust(certs)) as client:
        names = Counter(client.get(f"https://localhost:{port}/").json()["name"]
                        for _ in range(40))
    assert names == {"a": 30, "b": 10}


def test_keep_alive_both_sides(lb, backends, certs):
    port = free_port()
    (b,) = backends(1)
    lb(config(certs, port, [(b, 1)]), [port])
    ctx = ssl.create_default_context(cafile=str(certs["ca"]))
    with socket.create_connection(("127.0.0.1", port)) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(b"GET /1 HTTP/1.1\r\nHost: localhost\r\n\r\n" * 3)
        data = b""
        deadline = time.monotonic() + 5
        while data.count(b"HTTP/1.1 200") < 3 and time.monotonic() < deadline:
            data += s.recv(65536)
    assert data.count(b"HTTP/1.1 200") == 3


def test_request_bodies_content_length_and_chunked(lb, backends, certs):
    port = free_port()
    (b,) = backends(1)
    lb(config(certs, port, [(b, 1)]), [port])
    with httpx.Client(verify=trust(certs)) as c:
        assert c.post(f"https://localhost:{port}/", content=b"x" * 100_000).json()["body_len"] \
            == 100_000
        gen = (b"y" * 1000 for _ in range(50))
        assert c.post(f"https://localhost:{port}/", content=gen).json()["body_len"] == 50_000


def test_http2_client(lb, backends, certs):
    port = free_port()
    (b,) = backends(1)
    lb(config(certs, port, [(b, 1)]), [port])
    with httpx.Client(http2=True, verify=trust(certs)) as c:
        r = c.post(f"https://localhost:{port}/h2", content=b"z" * 70_000)
        assert r.http_version == "HTTP/2" and r.json()["body_len"] == 70_000


def test_dead_member_502_quickly(lb, certs):
    port = free_port()
    lb(config(certs, port, [(free_port(), 1)]), [port])
    t0 = time.monotonic()
    r = httpx.get(f"https://localhost:{port}/", verify=trust(certs), timeout=10)
    assert r.status_code == 502 and time.monotonic() - t0 < 3


def test_plain_http_to_https_port_then_still_serving(lb, backends, certs):
    port = free_port()
    (b,) = backends(1)
    lb(config(certs, port, [(b, 1)]), [port])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            answer = s.recv(4096)
        except ConnectionResetError:
            answer = b""
    assert answer == b"" or answer.startswith(b"HTTP/1.1 400") or answer[:1] == b"\x15"
    assert httpx.get(f"https://localhost:{port}/", verify=trust(certs)).status_code == 200


@pytest.mark.skipif(not shutil.which("curl"), reason="curl not installed")
def test_curl(lb, backends, certs):
    port = free_port()
    (b,) = backends(1)
    lb(config(certs, port, [(b, 1)]), [port])
    out = subprocess.run(["curl", "-sS", "--cacert", str(certs["ca"]),
                          f"https://localhost:{port}/curl"], capture_output=True, text=True,
                         timeout=20)
    assert json.loads(out.stdout)["path"] == "/curl"


@pytest.mark.skipif(not shutil.which("openssl"), reason="openssl not installed")
def test_openssl_s_client(lb, backends, certs):
    port = free_port()
    (b,) = backends(1)
    lb(config(certs, port, [(b, 1)]), [port])
    out = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
         "-CAfile", str(certs["ca"]), "-verify_return_error", "-quiet"],
        input=b"GET /ossl HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        capture_output=True, timeout=20)
    assert out.stdout.startswith(b"HTTP/1.1 200") and b'"/ossl"' in out.stdout


def test_access_control_whitelist_refuses_before_tls(lb, backends, certs):
    port = free_port()
    (b,) = backends(1)
    text = config(certs, port, [(b, 1)]).replace(
        "    default_pool: web\n",
        "    default_pool: web\n    access_control: {mode: whitelist, ip_group: local}\n", 1)
    text = text.replace("listeners:", "ip_groups:\n  local: {addresses: [127.0.0.1]}\nlisteners:")
    lb(text, [port])
    ok = httpx.get(f"https://localhost:{port}/", verify=trust(certs))
    assert ok.status_code == 200
    with socket.socket() as s:
        s.bind(("127.0.0.2", 0))
        s.settimeout(5)
        s.connect(("127.0.0.1", port))
        s.sendall(b"\x16\x03\x01\x00\x05hello")      # the start of a ClientHello
        try:
            got = s.recv(100)
        except ConnectionResetError:
            got = b""
    assert got == b""                                   # closed, not a single TLS byte


def test_tls_policy_versions_and_tls13_suites(lb, backends, certs):
    port, port13, port12 = free_port(), free_port(), free_port()
    (b,) = backends(1)
    second = f"""  - name: tls13
    protocol: HTTPS
    address: 127.0.0.1
    port: {port13}
    server_certificate: site
    security_policy: only-aes128
    default_pool: web
  - name: tls12
    protocol: HTTPS
    address: 127.0.0.1
    port: {port12}
    server_certificate: site
    security_policy: tls-1-2
    default_pool: web
"""
    text = config(certs, port, [(b, 1)], extra_listener=second).replace(
        "listeners:", "security_policies:\n  only-aes128:\n    protocols: [TLSv1.2, TLSv1.3]\n"
        "    ciphers: [ECDHE-ECDSA-AES128-GCM-SHA256, TLS_AES_128_GCM_SHA256]\nlisteners:")
    lb(text, [port, port13, port12])

    def handshake(p, min_version, max_version=ssl.TLSVersion.TLSv1_3):
        ctx = ssl.create_default_context(cafile=str(certs["ca"]))
        ctx.minimum_version, ctx.maximum_version = min_version, max_version
        with socket.create_connection(("127.0.0.1", p), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost") as s:
            return s.version(), s.cipher()[0]

    # The default, tls-1-2-fs-with-1-3: TLS 1.3, and TLS 1.2 with forward secrecy only.
    assert handshake(port, ssl.TLSVersion.TLSv1_2)[0] == "TLSv1.3"
    assert handshake(port, ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2)[1].startswith("ECDHE-")
    assert handshake(port12, ssl.TLSVersion.TLSv1_2)[0] == "TLSv1.2"   # tls-1-2: no 1.3
    with pytest.raises(ssl.SSLError):
        handshake(port12, ssl.TLSVersion.TLSv1_3)
    assert handshake(port13, ssl.TLSVersion.TLSv1_3) == ("TLSv1.3", "TLS_AES_128_GCM_SHA256")
    if shutil.which("openssl"):
        out = subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{port13}", "-tls1_3",
             "-ciphersuites", "TLS_AES_256_GCM_SHA384", "-brief"],
            input=b"", capture_output=True, timeout=20)
        assert out.returncode != 0                      # a suite outside the policy


@pytest.mark.skipif(not shutil.which("openssl"), reason="openssl not installed")
def test_sni_selects_certificate(lb, backends, ca, certs, tmp_path):
    port = free_port()
    (b,) = backends(1)
    for name, hosts in (("api", ("api.other.test",)), ("wild", ("*.wild.test",))):
        c = ca.issue_cert(*hosts)
        (tmp_path / f"{name}.crt").write_bytes(b"".join(p.bytes() for p in c.cert_chain_pems))
        (tmp_path / f"{name}.key").write_bytes(c.private_key_pem.bytes())
    text = config(certs, port, [(b, 1)]).replace(
        "    default_pool: web\n",
        "    default_pool: web\n    sni: {enabled: true, certificates: [api, wild]}\n", 1)
    extra = "".join(f'  {n}: {{type: server, certificate: "{tmp_path}/{n}.crt", '
                    f'private_key: "{tmp_path}/{n}.key"}}\n' for n in ("api", "wild"))
    text = text.replace("listeners:", extra + "listeners:")
    lb(text, [port])

    def served(name):
        out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}",
                              "-servername", name], input=b"", capture_output=True, timeout=20)
        subject = [line for line in out.stdout.split(b"\n") if line.startswith(b"subject=")]
        cert = subprocess.run(["openssl", "x509", "-noout", "-ext", "subjectAltName"],
                              input=out.stdout, capture_output=True, timeout=20).stdout
        return subject, cert

    assert b"api.other.test" in served("API.other.test.")[1]
    assert b"*.wild.test" in served("x.wild.test")[1]
    assert b"localhost" in served("x.y.wild.test")[1]          # one label only: default
    assert b"localhost" in served("unknown.test")[1]


def test_mutual_tls_accept_refuse_and_headers(lb, backends, certs, tmp_path):
    import datetime as dt

    import trustme
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    port = free_port()
    (b,) = backends(1)
    client_ca, stranger_ca = trustme.CA(), trustme.CA()
    good, revoked = client_ca.issue_cert("alice.test"), client_ca.issue_cert("mallory.test")
    foreign = stranger_ca.issue_cert("eve.test")
    (tmp_path / "clients.pem").write_bytes(client_ca.cert_pem.bytes())
    key = serialization.load_pem_private_key(client_ca.private_key_pem.bytes(), None)
    issuer = x509.load_pem_x509_certificate(client_ca.cert_pem.bytes()).subject
    serial = x509.load_pem_x509_certificate(revoked.cert_chain_pems[0].bytes()).serial_number
    now = dt.datetime.now(dt.timezone.utc)
    crl = (x509.CertificateRevocationListBuilder().issuer_name(issuer).last_update(now)
           .next_update(now + dt.timedelta(days=1))
           .add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(serial)
                                    .revocation_date(now).build())
           .sign(key, hashes.SHA256()))
    (tmp_path / "clients.crl").write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    text = config(certs, port, [(b, 1)]).replace(
        "    default_pool: web\n",
        "    default_pool: web\n    ssl_authentication: mutual\n    ca_certificate: clients\n"
        "    insert_headers: {x_forwarded_clientcert: [subjectdn, fingerprint, clientverify]}\n",
        1).replace("listeners:", f'  clients: {{type: ca, certificate: "{tmp_path}/clients.pem",'
                                 f' crl: "{tmp_path}/clients.crl"}}\nlisteners:')
    lb(text, [port])

    def client(cert):
        ctx = trust(certs)
        if cert is not None:
            cert.configure_cert(ctx)
        return httpx.Client(verify=ctx)

    with client(good) as c:
        r = c.get(f"https://localhost:{port}/",
                  headers={"X-Forwarded-Clientcert-subjectdn": "x"})
    h = headers_of(r)
    assert r.status_code == 200 and h["x-forwarded-clientcert-clientverify"] == "SUCCESS"
    leaf = x509.load_pem_x509_certificate(good.cert_chain_pems[0].bytes())
    assert h["x-forwarded-clientcert-subjectdn"] == leaf.subject.rfc4514_string()  # not "x"
    assert h["x-forwarded-clientcert-fingerprint"] == leaf.fingerprint(hashes.SHA256()).hex()
    for cert in (None, foreign, revoked):
        with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)), \
                client(cert) as c:
            c.get(f"https://localhost:{port}/")


def test_mutual_with_sni_421_on_host_mismatch(lb, backends, ca, certs, tmp_path):
    import trustme

    port = free_port()
    (b,) = backends(1)
    other = ca.issue_cert("other.test")
    (tmp_path / "other.crt").write_bytes(b"".join(p.bytes() for p in other.cert_chain_pems))
    (tmp_path / "other.key").write_bytes(other.private_key_pem.bytes())
    client_ca = trustme.CA()
    (tmp_path / "clients.pem").write_bytes(client_ca.cert_pem.bytes())
    alice = client_ca.issue_cert("alice.test")
    text = config(certs, port, [(b, 1)]).replace(
        "    default_pool: web\n",
        "    default_pool: web\n    ssl_authentication: mutual\n    ca_certificate: clients\n"
        "    sni: {enabled: true, certificates: [site, other]}\n"
        "    insert_headers: {x_forwarded_tls_sni: true}\n", 1).replace(
        "listeners:", f'  clients: {{type: ca, certificate: "{tmp_path}/clients.pem"}}\n'
                      f'  other: {{type: server, certificate: "{tmp_path}/other.crt", '
                      f'private_key: "{tmp_path}/other.key"}}\nlisteners:')
    lb(text, [port])
    ctx = trust(certs)
    alice.configure_cert(ctx)
    with httpx.Client(verify=ctx) as c:
        ok = c.get(f"https://localhost:{port}/")
        assert ok.status_code == 200 and headers_of(ok)["x-forwarded-tls-sni"] == "localhost"
        wrong = c.get(f"https://localhost:{port}/", headers={"Host": "other.test"})
        assert wrong.status_code == 421


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_tls_session_resumption(lb, backends, certs, version):
    port = free_port()
    (b,) = backends(1)
    text = config(certs, port, [(b, 1)]).replace(
        "    default_pool: web\n",
        "    default_pool: web\n    security_policy: tls-1-2-fs-with-1-3\n", 1)
    lb(text, [port])
    ctx = trust(certs)
    ctx.minimum_version = ctx.maximum_version = version
    session = None
    reused = []
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost", session=session) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            while s.recv(65536):
                pass                      # TLS 1.3 tickets arrive after the handshake
            reused.append(s.session_reused)
            session = s.session
    assert reused == [False, True, True]
