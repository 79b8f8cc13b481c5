"""Lists the Cython extensions; everything else is in pyproject.toml."""
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("LBCORE_DEBUG") == "1"
MODULES = ["counters", "runtime", "balancer", "headers", "upstream", "http2", "http1", "iptrie", "acceptor", "phases", "tlsctl", "logfmt"]

extensions = [
    Extension(f"lbcore_ext.{name}", [f"lbcore_ext/{name}.pyx"],
              extra_compile_args=["-O2"] if not DEBUG else ["-O0", "-g"])
    for name in MODULES
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compile_time_env={"DEBUG": DEBUG},
        # No global boundscheck/wraparound=False: a stray [-1] would silently read
        # garbage. Hot functions opt in locally where a profile justifies it.
        compiler_directives={"embedsignature": True},
    )
)
