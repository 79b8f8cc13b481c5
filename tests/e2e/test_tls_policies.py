"""sslyze against a listener per security policy: exactly the versions and
suites of the spec's table (spec 3.2), with an ECDSA and an RSA certificate
served so that every suite of the policy can be negotiated."""

from __future__ import annotations

import ssl

import pytest
import trustme

from lbcore.tls.policies import LEGACY, PREDEFINED
from tests.support.lbproc import free_port, run_config

sslyze = pytest.importorskip("sslyze")

VERSIONS = {"TLSv1": "tls_1_0_cipher_suites", "TLSv1.1": "tls_1_1_cipher_suites",
            "TLSv1.2": "tls_1_2_cipher_suites", "TLSv1.3": "tls_1_3_cipher_suites"}
COMMANDS = {sslyze.ScanCommand.TLS_1_0_CIPHER_SUITES, sslyze.ScanCommand.TLS_1_1_CIPHER_SUITES,
            sslyze.ScanCommand.TLS_1_2_CIPHER_SUITES, sslyze.ScanCommand.TLS_1_3_CIPHER_SUITES,
            sslyze.ScanCommand.SSL_3_0_CIPHER_SUITES}
CUSTOM = ("TLSv1.2", "TLSv1.3"), ("ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
                                  "TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384")


def locally_available(suite: str) -> bool:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.set_ciphers(suite + ":@SECLEVEL=0")
        return True
    except ssl.SSLError:
        return False


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("policies")
    ca = trustme.CA()
    for name, kt in (("ec", trustme.KeyType.ECDSA), ("rsa", trustme.KeyType.RSA)):
        c = ca.issue_cert("localhost", key_type=kt)
        (tmp / f"{name}.crt").write_bytes(b"".join(p.bytes() for p in c.cert_chain_pems))
        (tmp / f"{name}.key").write_bytes(c.private_key_pem.bytes())
    policies = [*sorted(PREDEFINED), "custom-example"]
    ports = {p: free_port() for p in policies}
    listeners = "".join(f"""  - name: {p}
    protocol: HTTPS
    address: 127.0.0.1
    port: {port}
    server_certificate: ec
    security_policy: {p}
    sni: {{enabled: true, certificates: [ec, rsa]}}
    default_pool: p
""" for p, port in ports.items())
    # A free admin port: the default 9100 may be taken by another lbcore on the machine.
    text = f"""\
load_balancer: {{admin: {{port: {free_port()}}}}}
certificates:
  ec: {{type: server, certificate: "{tmp}/ec.crt", private_key: "{tmp}/ec.key"}}
  rsa: {{type: server, certificate: "{tmp}/rsa.crt", private_key: "{tmp}/rsa.key"}}
security_policies:
  custom-example: {{protocols: {list(CUSTOM[0])}, ciphers: {list(CUSTOM[1])}}}
listeners:
{listeners}pools:
  p:
    health_check: {{enabled: false}}
    members: [{{address: 127.0.0.1, port: {free_port()}}}]
"""
    lb = run_config(tmp, text, list(ports.values()))
    try:
        scanner = sslyze.Scanner(per_server_concurrent_connections_limit=4,
                                 concurrent_server_scans_limit=4)
        requests = [sslyze.ServerScanRequest(
            server_location=sslyze.ServerNetworkLocation("localhost", port, "127.0.0.1"),
            scan_commands=COMMANDS) for port in ports.values()]
        scanner.queue_scans(requests)
        by_port = {}
        for result in scanner.get_results():
            assert result.scan_status == sslyze.ServerScanStatusEnum.COMPLETED, result
            accepted = {}
            for version, attr in VERSIONS.items():
                attempt = getattr(result.scan_result, attr)
                assert attempt.status == sslyze.ScanCommandAttemptStatusEnum.COMPLETED
                accepted[version] = {s.cipher_suite.openssl_name
                                     for s in attempt.result.accepted_cipher_suites}
            ssl3 = result.scan_result.ssl_3_0_cipher_suites.result.accepted_cipher_suites
            accepted["SSLv3"] = {s.cipher_suite.openssl_name for s in ssl3}
            by_port[result.server_location.port] = accepted
        yield {p: by_port[port] for p, port in ports.items()}
    finally:
        lb.stop()


def expected(policy: str):
    if policy == "custom-example":
        versions, ciphers = CUSTOM
        tls12 = [c for c in ciphers if not c.startswith("TLS_")]
        return versions, tls12, [c for c in ciphers if c.startswith("TLS_")]
    p = PREDEFINED[policy]
    return p.versions, list(p.ciphers), list(p.tls13_suites)


@pytest.mark.parametrize("policy", [*sorted(PREDEFINED), "custom-example"])
def test_policy_exact(scans, policy):
    versions, ciphers, tls13 = expected(policy)
    got = scans[policy]
    assert not got["SSLv3"]
    assert {v for v in VERSIONS if got[v]} == set(versions)
    # TLS 1.2 accepts exactly the policy's suites the local OpenSSL has (only
    # the legacy extras of tls-1-0-inherit may be absent locally).
    want12 = {c for c in ciphers if locally_available(c) or c not in LEGACY}
    assert got["TLSv1.2"] == want12
    for old in ("TLSv1", "TLSv1.1"):
        assert got[old] <= set(ciphers)
    assert got["TLSv1.3"] == set(tls13)
