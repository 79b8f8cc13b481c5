"""The data plane never imports the control plane (DESIGN.md, Boundaries)."""

import subprocess
import sys


def test_data_plane_does_not_import_control_plane():
    code = (
        "import sys\n"
        "import lbcore_ext.http1, lbcore_ext.upstream, lbcore_ext.balancer\n"
        "import lbcore_ext.headers, lbcore_ext.runtime\n"
        "bad = [m for m in sys.modules if m == 'lbcore' or m.startswith('lbcore.')\n"
        "       or m in ('yaml', 'pydantic', 'prometheus_client')]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=30, check=True)
    assert out.stdout.strip() == ""
