"""Lists the Cython extensions; everything else is in pyproject.toml."""
import os
import shlex
import subprocess

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("LBCORE_DEBUG") == "1"
MODULES = ["clock", "counters", "runtime", "balancer", "headers", "phases", "request",
           "upstream", "http2", "http1", "iptrie", "tlsctl", "llhttp", "transport", "acceptor",
           "logfmt", "regex", "policy"]


def pkg_config(package: str, debian: str) -> dict:
    """Compiler and linker flags of a C library, or a clear stop naming the
    Debian package that brings its headers."""
    try:
        cflags = subprocess.check_output(["pkg-config", "--cflags", package], text=True)
        libs = subprocess.check_output(["pkg-config", "--libs", package], text=True)
    except (OSError, subprocess.CalledProcessError):
        raise SystemExit(f"lbcore needs the {package} headers to build: "
                         f"apt-get install {debian} pkg-config") from None
    flags = {"include_dirs": [], "library_dirs": [], "libraries": []}
    for f in shlex.split(cflags):
        if f.startswith("-I"):
            flags["include_dirs"].append(f[2:])
    for f in shlex.split(libs):
        if f.startswith("-L"):
            flags["library_dirs"].append(f[2:])
        elif f.startswith("-l"):
            flags["libraries"].append(f[2:])
    return flags


# HTTP/2 framing is libnghttp2's (Debian libnghttp2-dev at build time).
# Forwarding-policy regexes are RE2's (Debian libre2-dev), matched in linear time.
C_LIBS = {"http2": pkg_config("libnghttp2", "libnghttp2-dev"),
          "regex": {**pkg_config("re2", "libre2-dev"), "language": "c++"}}

extensions = [
    Extension(f"lbcore_ext.{name}", [f"lbcore_ext/{name}.pyx"],
              extra_compile_args=["-O2"] if not DEBUG else ["-O0", "-g"],
              **C_LIBS.get(name, {}))
    for name in MODULES
]

# Every core for the first build (13 modules): Cython's translation and the C
# compiler both run in parallel.
JOBS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

setup(
    options={"build_ext": {"parallel": JOBS}},
    ext_modules=cythonize(
        extensions,
        nthreads=JOBS,
        language_level=3,
        compile_time_env={"DEBUG": DEBUG},
        # No global boundscheck/wraparound=False: a stray [-1] would silently read
        # garbage. Hot functions opt in locally where a profile justifies it.
        compiler_directives={"embedsignature": True},
    )
)
