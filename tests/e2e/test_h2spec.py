"""h2spec, the HTTP/2 conformance suite (HAProxy and nginx are measured with it),
against a real `lbcore run`: one worker, an HTTPS listener with `http2: true`
in front of an echo backend. Every test case of the default run (146) and of
the strict run (`-S`, 147) must pass. h2spec is built offline from the source
in ../shared/h2spec (build.sh caches the binary in ~/.cache/lbcore-h2spec)."""

from __future__ import annotations

import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.e2e.conftest import Echo
from tests.support.inproc import start_backend
from tests.support.lbproc import LbProcess, free_port, wait_port

H2SPEC_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "h2spec"
BUILD_TIMEOUT = 1800          # a first build fetches Go packages with apt-get
RUN_TIMEOUT = 900             # 147 cases x the 3 s per-case time-out is the worst case

pytestmark = pytest.mark.skipif(not (H2SPEC_DIR / "build.sh").is_file(),
                                reason=f"h2spec sources not found at {H2SPEC_DIR}")


@pytest.fixture(scope="module")
def h2spec_bin() -> str:
    out = subprocess.run(["bash", str(H2SPEC_DIR / "build.sh")], capture_output=True,
                         text=True, timeout=BUILD_TIMEOUT)
    assert out.returncode == 0, f"h2spec build failed:\n{out.stdout}\n{out.stderr}"
    path = out.stdout.strip().splitlines()[-1]
    assert Path(path).is_file(), f"build.sh printed {path!r}, not a file"
    return path


@pytest.fixture(scope="module")
def h2_listener(tmp_path_factory, loop_thread, ca):
    """`lbcore run` with one worker and an h2 listener; yields its port."""
    tmp = tmp_path_factory.mktemp("h2spec")
    cert = ca.issue_cert("localhost", "127.0.0.1")
    (tmp / "server.crt").write_bytes(b"".join(p.bytes() for p in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(tmp / "server.key"))
    server, backend = loop_thread.call(start_backend(Echo))
    port = free_port()
    (tmp / "lb.yaml").write_text(f"""\
load_balancer: {{workers: 1, admin: {{port: {free_port()}}}, access_log: {{path: "off"}}}}
certificates:
  site: {{type: server, certificate: "{tmp}/server.crt", private_key: "{tmp}/server.key"}}
listeners:
  - name: h2
    protocol: HTTPS
    address: 127.0.0.1
    port: {port}
    server_certificate: site
    http2: true
    default_pool: web
pools:
  web:
    health_check: {{enabled: false}}
    members: [{{address: 127.0.0.1, port: {backend}}}]
""")
    lb = LbProcess(["run", "-c", str(tmp / "lb.yaml")])
    try:
        wait_port(port, lb.proc)
        yield port
    finally:
        lb.stop()
        loop_thread.loop.call_soon_threadsafe(server.close)


def junit_cases(path: Path) -> list[tuple[str, str | None]]:
    """[(name, None if passed else 'failure: message' / 'error: ...' / 'skipped')]."""
    cases = []
    for tc in ET.parse(path).getroot().iter("testcase"):
        name = " / ".join(x for x in (tc.get("package"), tc.get("classname"),
                                      tc.get("name")) if x)
        verdict = None
        for child in tc:
            if child.tag in ("failure", "error", "skipped"):
                text = (child.get("message") or "") + "\n" + (child.text or "").strip()
                verdict = f"{child.tag}: {text.strip()}"
                break
        cases.append((name, verdict))
    return cases


@pytest.mark.timeout(BUILD_TIMEOUT + RUN_TIMEOUT + 60)
@pytest.mark.parametrize("mode,expected", [("default", 146), ("strict", 147)])
def test_h2spec(h2spec_bin, h2_listener, tmp_path, capsys, record_property, mode, expected):
    report = tmp_path / "out.xml"
    cmd = [h2spec_bin, "-t", "-k", "-h", "127.0.0.1", "-p", str(h2_listener), "-o", "3",
           "-j", str(report)]
    if mode == "strict":
        cmd.append("-S")
    t0 = time.monotonic()
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    wall = time.monotonic() - t0
    record_property("wall_time_s", round(wall, 1))
    assert report.is_file(), (f"h2spec wrote no report (exit {run.returncode}):\n"
                              f"{run.stdout[-4000:]}\n{run.stderr[-4000:]}")
    cases = junit_cases(report)
    bad = [(n, v) for n, v in cases if v is not None]
    with capsys.disabled():
        print(f"\nh2spec {mode}: {len(cases) - len(bad)}/{len(cases)} passed "
              f"in {wall:.1f} s (exit {run.returncode})")
    if bad or len(cases) != expected:
        detail = "\n".join(f"- {n}\n    " + v.replace("\n", "\n    ") for n, v in bad)
        pytest.fail(f"h2spec {mode}: {len(bad)} of {len(cases)} cases did not pass (expected "
                    f"{expected} cases, all passing; wall time {wall:.1f} s):\n{detail}",
                    pytrace=False)
