"""Lists the Cython extensions; everything else is in pyproject.toml."""
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("LBCORE_DEBUG") == "1"
MODULES = ["runtime", "balancer", "headers", "upstream", "http1", "iptrie", "acceptor", "phases"]

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
        compiler_directives={"boundscheck": False, "wraparound": False,
                             "cdivision": True, "embedsignature": True},
    )
)
