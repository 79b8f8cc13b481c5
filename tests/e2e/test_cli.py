"""`lbcore check | run | version | demo` as a user runs them."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

from tests.support.lbproc import LbProcess, free_port, wait_port

EXAMPLE = Path(__file__).resolve().parents[3] / "shared" / "spec" / "lb.example.yaml"


def lbcore(*args, timeout=30):
    return subprocess.run([sys.executable, "-m", "lbcore", *args], capture_output=True,
                          text=True, timeout=timeout)


GOOD = """\
listeners:
  - {name: web, protocol: HTTP, address: 127.0.0.1, port: PORT, default_pool: p}
pools:
  p:
    members: [{address: 127.0.0.1, port: 9}]
"""


def test_check_good_prints_summary(tmp_path):
    f = tmp_path / "lb.yaml"
    f.write_text(GOOD.replace("PORT", "18081"))
    out = lbcore("check", "-c", str(f))
    assert out.returncode == 0, out.stderr
    assert "listener web: HTTP 127.0.0.1:18081 -> pool p" in out.stdout
    assert "test is successful" in out.stdout


def test_check_bad_reports_file_line_path(tmp_path):
    f = tmp_path / "lb.yaml"
    f.write_text(GOOD.replace("PORT", "18081").replace("default_pool: p}",
                                                        "default_pool: p, idle_timeout: 5000}"))
    out = lbcore("check", "-c", str(f))
    assert out.returncode == 1
    assert f"{f}:2: listeners[0].idle_timeout: 5000 is outside 0-4000" in out.stderr


def test_run_bad_config_exits_and_never_listens(tmp_path):
    port = free_port()
    f = tmp_path / "lb.yaml"
    f.write_text(GOOD.replace("PORT", str(port)).replace("default_pool: p}",
                                                         "default_pool: nope}"))
    t0 = time.monotonic()
    out = lbcore("run", "-c", str(f))
    assert out.returncode == 1 and time.monotonic() - t0 < 10
    assert "no pool named 'nope'" in out.stderr
    with __import__("socket").socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_version():
    out = lbcore("version", "-v")
    assert out.returncode == 0 and out.stdout.startswith("lbcore ")
    assert "uvloop" in out.stdout and "openssl" in out.stdout


def test_example_config_is_accepted(tmp_path):
    if not EXAMPLE.exists():
        import pytest
        pytest.skip(f"{EXAMPLE} not found")
    import datetime as dt

    import trustme
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    certs = tmp_path / "certs"
    certs.mkdir()
    ca = trustme.CA()
    for name, kt in (("www", trustme.KeyType.RSA), ("api-ecdsa", trustme.KeyType.ECDSA)):
        c = ca.issue_cert(f"{name}.example.com", key_type=kt)
        (certs / f"{name}.crt").write_bytes(b"".join(p.bytes() for p in c.cert_chain_pems))
        (certs / f"{name}.key").write_bytes(c.private_key_pem.bytes())
    clients = trustme.CA()
    (certs / "clients-ca.crt").write_bytes(clients.cert_pem.bytes())
    key = serialization.load_pem_private_key(clients.private_key_pem.bytes(), None)
    issuer = x509.load_pem_x509_certificate(clients.cert_pem.bytes()).subject
    now = dt.datetime.now(dt.timezone.utc)
    crl = (x509.CertificateRevocationListBuilder().issuer_name(issuer).last_update(now)
           .next_update(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
    (certs / "clients-ca.crl").write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    shutil.copy(EXAMPLE, tmp_path / "lb.yaml")
    out = lbcore("check", "-c", str(tmp_path / "lb.yaml"))
    assert out.returncode == 0, out.stderr


def test_demo_answers_from_both_backends(tmp_path):
    https_port, http_port = free_port(), free_port()
    demo = LbProcess(["demo", "--https-port", str(https_port), "--http-port", str(http_port)],
                     env={"LBCORE_STATE_DIR": str(tmp_path)})
    try:
        wait_port(https_port, demo.proc)
        names = Counter(httpx.get(f"https://localhost:{https_port}/", verify=False).text
                        for _ in range(4))
        assert names == {"hello from demo-a\n": 2, "hello from demo-b\n": 2}
        assert httpx.get(f"http://127.0.0.1:{http_port}/").status_code == 200
        assert (tmp_path / "demo.crt").exists() and (tmp_path / "demo.key").stat().st_mode \
            & 0o077 == 0
    finally:
        demo.stop()
