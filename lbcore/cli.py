"""`lbcore run | check | demo | version`: the command line, like nginx -t / haproxy -c."""

from __future__ import annotations

import argparse
import logging
import os
import platform
import ssl
import sys


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format=f"%(asctime)s lbcore[{os.getpid()}] %(levelname)s %(message)s",
        stream=sys.stderr,
    )


def _load(path: str):
    """Load and validate, printing every error with file:line; None on failure."""
    from lbcore.config import ConfigError, load_config

    try:
        cfg = load_config(path)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        n = len(getattr(exc, "issues", ())) or 1
        print(f"lbcore: configuration file {path} test failed ({n} error(s))", file=sys.stderr)
        return None
    for warning in getattr(cfg, "warnings", ()):
        print(f"warning: {warning}", file=sys.stderr)
    return cfg


def cmd_check(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    if cfg is None:
        return 1
    from lbcore.check import summarize

    print(summarize(cfg))
    print(f"lbcore: configuration file {args.config} test is successful")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    _setup_logging(args.verbose)
    cfg = _load(args.config)
    if cfg is None:
        return 1
    if args.phases:
        from lbcore.phases import load_phases

        try:
            load_phases(args.phases)        # fail here, not in every worker
        except (ImportError, AttributeError, ValueError, TypeError) as exc:
            print(f"lbcore: --phases: {exc}", file=sys.stderr)
            return 1
    from pathlib import Path

    from lbcore.supervisor import Master

    text = Path(args.config).read_text(encoding="utf-8")
    return Master(args.config, cfg, text, phases=args.phases, verbose=args.verbose).run()


def cmd_worker(args: argparse.Namespace) -> int:
    _setup_logging(bool(os.environ.get("LBCORE_VERBOSE")))
    from lbcore.supervisor import worker_main

    return worker_main()


def cmd_demo(args: argparse.Namespace) -> int:
    _setup_logging(args.verbose)
    from lbcore.demo import run_demo

    return run_demo(https_port=args.https_port, http_port=args.http_port)


def cmd_version(args: argparse.Namespace) -> int:
    from lbcore import __version__

    print(f"lbcore {__version__}")
    if args.verbose:
        import httptools
        import uvloop

        nghttp2 = "not loaded"
        try:
            import lbcore_ext.http1 as ext
            import lbcore_ext.http2 as h2

            ext_desc = ext.__file__
            nghttp2 = h2.NGHTTP2_VERSION
        except ImportError as exc:
            ext_desc = f"not built ({exc})"
        print(f"python {platform.python_version()} ({platform.python_implementation()})")
        print(f"uvloop {uvloop.__version__}, httptools {httptools.__version__}")
        print(f"openssl {ssl.OPENSSL_VERSION}, libnghttp2 {nghttp2}")
        print(f"extension {ext_desc}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lbcore", description="HTTPS load balancer")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="serve a configuration")
    run.add_argument("-c", "--config", required=True)
    run.add_argument("-v", "--verbose", action="store_true")
    run.add_argument("--phases", metavar="MODULE:CLASS",
                     help="a lbcore.phases.Phases subclass whose hooks extend the proxy")
    run.set_defaults(func=cmd_run)
    check = sub.add_parser("check", help="validate a configuration and exit (0 ok, 1 errors)")
    check.add_argument("-c", "--config", required=True)
    check.set_defaults(func=cmd_check)
    demo = sub.add_parser("demo", help="the embedded default: self-signed HTTPS + demo backends")
    demo.add_argument("--https-port", type=int, default=8443)
    demo.add_argument("--http-port", type=int, default=8080)
    demo.add_argument("-v", "--verbose", action="store_true")
    demo.set_defaults(func=cmd_demo)
    worker = sub.add_parser("_worker", help="(internal) a worker process started by `run`")
    worker.set_defaults(func=cmd_worker)
    version = sub.add_parser("version", help="print versions")
    version.add_argument("-v", "--verbose", action="store_true")
    version.set_defaults(func=cmd_version)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
