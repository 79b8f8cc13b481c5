"""`lbcore check` reports every fault of a file in one run: schema errors do
not hide reference or file errors (issue 13, item 6)."""

from __future__ import annotations

import subprocess
import sys

BAD = """\
listeners:
  - name: web
    protocol: HTTPS
    port: 18443
    idle_timeout: 5000
    server_certificate: site
    default_pool: nope
certificates:
  site: {type: server, certificate: gone.crt, private_key: gone.key}
pools:
  p:
    members: [{address: 127.0.0.1, port: 9000}]
"""


def test_schema_reference_and_file_errors_in_one_run(tmp_path):
    f = tmp_path / "lb.yaml"
    f.write_text(BAD)
    out = subprocess.run([sys.executable, "-m", "lbcore", "check", "-c", str(f)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    errors = [line for line in out.stderr.splitlines() if line.startswith(f"{f}:")]
    assert errors == [
        f"{f}:5: listeners[0].idle_timeout: 5000 is outside 0-4000",
        f"{f}:7: listeners[0].default_pool: no pool named 'nope'",
        f"{f}:9: certificates.site.certificate: cannot read {tmp_path}/gone.crt: "
        "No such file or directory",
    ], out.stderr
    assert "test failed (3 error(s))" in out.stderr
