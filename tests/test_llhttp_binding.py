"""The llhttp lbcore drives from C is httptools' own (lbcore_ext/llhttp.pyx):
its version and struct layout are checked at import, and a mismatch is a
clear ImportError naming both versions, never a parser reading the wrong
offsets."""

from __future__ import annotations

import subprocess
import sys

import httptools
import pytest

from lbcore_ext import llhttp


def test_the_loaded_httptools_is_verified():
    assert llhttp.VERIFIED[httptools.__version__] == llhttp.DECLARED
    llhttp.check_version(httptools.__version__)


def test_an_unverified_httptools_is_refused_by_name():
    with pytest.raises(ImportError) as e:
        llhttp.check_version("0.6.1")
    msg = str(e.value)
    assert "llhttp 9.4.3" in msg and "httptools 0.6.1" in msg and "0.9.0" in msg


@pytest.mark.parametrize("parser_size, settings_size", [(88, 200), (104, 200), (96, 192),
                                                        (96, 208)])
def test_a_layout_other_than_the_library_is_refused(parser_size, settings_size):
    llhttp.check_layout(96, 200)                 # what llhttp.pxd declares: passes
    with pytest.raises(ImportError) as e:
        llhttp.check_layout(parser_size, settings_size)
    assert "lbcore declares llhttp 9.4.3" in str(e.value)
    assert f"httptools {httptools.__version__} vendors llhttp" in str(e.value)


def test_import_fails_cleanly_when_httptools_is_another_version(tmp_path):
    """A process whose httptools says another version can't import the
    framing: the error names both, before any parser runs."""
    code = ("import httptools; httptools.__version__ = '0.7.0'\n"
            "import lbcore_ext.http1\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode != 0
    assert "ImportError" in out.stderr
    assert "httptools 0.7.0 vendors llhttp" in out.stderr and "9.4.3" in out.stderr
