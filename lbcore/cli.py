"""`lbcore run | check | reload | stop | policies | demo | version`: the command
line, like nginx -t / nginx -s reload / haproxy -c."""

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
    from lbcore.check import effective_yaml, summarize

    if args.dump:
        # Like nginx -T: the configuration on stdout, the verdict on stderr,
        # so that `lbcore check --dump -c lb.yaml > effective.yaml` works.
        print(effective_yaml(cfg), end="")
        print(f"lbcore: configuration file {args.config} test is successful", file=sys.stderr)
        return 0
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

    from lbcore import pidfile
    from lbcore.supervisor import Master

    pid_path = Path(args.pidfile).absolute() if args.pidfile else None
    if pid_path is not None:
        try:                        # refuse before binding anything
            print(f"lbcore: {pid_path}: lbcore (pid {pidfile.read_pid(pid_path)}) is "
                  "already running", file=sys.stderr)
            return 1
        except pidfile.PidfileError:
            pass                    # absent or stale: ours to write once ready
    text = Path(args.config).read_text(encoding="utf-8")
    return Master(args.config, cfg, text, phases=args.phases, verbose=args.verbose,
                  pidfile=pid_path).run()


def _signal(args: argparse.Namespace, sig, what: str) -> tuple[int, int | None]:
    from pathlib import Path

    from lbcore import pidfile

    try:
        pid = pidfile.signal_master(Path(args.pidfile), sig)
    except pidfile.PidfileError as exc:
        print(f"lbcore: {exc}", file=sys.stderr)
        return 1, None
    print(f"lbcore: sent {sig.name} to the master (pid {pid}): {what}", file=sys.stderr)
    return 0, pid


def cmd_reload(args: argparse.Namespace) -> int:
    import signal

    if args.config and _load(args.config) is None:
        return 1                    # the master would refuse it too: don't ask
    rc, _ = _signal(args, signal.SIGHUP, "it validates its file again and, if good, "
                    "starts new workers and drains the old; a bad file is logged and the "
                    "old configuration keeps serving")
    return rc


def cmd_stop(args: argparse.Namespace) -> int:
    import signal

    from lbcore import pidfile

    sig = signal.SIGINT if args.now else signal.SIGTERM
    rc, pid = _signal(args, sig, "stopping now" if args.now else "draining")
    if rc or args.no_wait:
        return rc
    if pidfile.wait_exit(pid, args.timeout):
        print(f"lbcore: master {pid} has exited", file=sys.stderr)
        return 0
    print(f"lbcore: master {pid} still running after {args.timeout:g}s", file=sys.stderr)
    return 1


def cmd_policies(args: argparse.Namespace) -> int:
    from lbcore.tls.policies import describe, policy_table

    custom = None
    if args.config:
        cfg = _load(args.config)
        if cfg is None:
            return 1
        custom = cfg
    if args.name:
        text = describe(args.name, custom)
        if text is None:
            print(f"lbcore: no security policy named {args.name!r} "
                  "(`lbcore policies` lists them)", file=sys.stderr)
            return 1
        print(text)
        return 0
    print(policy_table(custom))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    _setup_logging(bool(os.environ.get("LBCORE_VERBOSE")))
    from lbcore.supervisor import worker_main

    return worker_main()


def cmd_demo(args: argparse.Namespace) -> int:
    _setup_logging(args.verbose)
    from lbcore.demo import run_demo

    return run_demo(https_port=args.https_port, http_port=args.http_port,
                    admin_port=args.admin_port)


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
    from lbcore import __version__

    p = argparse.ArgumentParser(
        prog="lbcore", description="lbcore, an HTTPS load balancer. "
        "`lbcore COMMAND --help` describes each command's options.")
    p.add_argument("-V", "--version", action="version", version=f"lbcore {__version__}",
                   help="print the version and exit (`lbcore version -v` for more)")
    # An explicit metavar keeps the internal `_worker` out of the usage line,
    # and giving it no help= keeps it out of the command list.
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                           title="commands", help="one of:")
    config_help = "the configuration file (YAML)"

    run = sub.add_parser("run", help="serve a configuration (master and workers)",
                         description="Validate the file, bind every listener, start the "
                         "workers and serve until SIGTERM (drain) or SIGINT (at once). "
                         "SIGHUP reloads, SIGUSR1 reopens access-log files.")
    run.add_argument("-c", "--config", required=True, help=config_help)
    run.add_argument("-v", "--verbose", action="store_true",
                     help="debug logging in the master and the workers")
    run.add_argument("--phases", metavar="MODULE:CLASS",
                     help="a lbcore.phases.Phases subclass whose hooks extend the proxy")
    run.add_argument("-p", "--pidfile", metavar="PATH",
                     help="write the master's pid here once it handles signals (removed "
                     "at exit), for `lbcore reload` and `lbcore stop`")
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check", help="validate a configuration and exit (0 ok, 1 errors)",
                           description="Validate like `nginx -t`: every error with its file, "
                           "line and key; exit 0 if the file is good, 1 if not.")
    check.add_argument("-c", "--config", required=True, help=config_help)
    check.add_argument("--dump", action="store_true",
                       help="print the effective configuration, every default filled in, "
                       "as YAML on stdout (like nginx -T)")
    check.set_defaults(func=cmd_check)

    for name, helptext, func in (
            ("reload", "make a running master reload its configuration (SIGHUP)", cmd_reload),
            ("stop", "make a running master drain and exit (SIGTERM)", cmd_stop)):
        cmd = sub.add_parser(name, help=helptext, description=helptext[0].upper()
                             + helptext[1:] + ", through the pidfile `run --pidfile` wrote.")
        cmd.add_argument("-p", "--pidfile", metavar="PATH", required=True,
                         help="the pidfile given to `lbcore run --pidfile`")
        cmd.set_defaults(func=func)
        if name == "reload":
            cmd.add_argument("-c", "--config", help="validate this file first and signal "
                             "nothing if it is bad (give the file the master serves)")
        else:
            cmd.add_argument("--now", action="store_true",
                             help="exit without draining (SIGINT)")
            cmd.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                             help="how long to wait for the master to exit "
                             "(default %(default)g; it drains for up to drain_timeout)")
            cmd.add_argument("--no-wait", action="store_true",
                             help="send the signal and return at once")

    policies = sub.add_parser("policies", help="list the TLS security policies, or show one",
                              description="The predefined security policies (and, with -c, "
                              "a configuration's custom ones): TLS versions, and the cipher "
                              "suites in the order the server prefers them.")
    policies.add_argument("name", nargs="?", metavar="NAME", help="show this policy in full")
    policies.add_argument("-c", "--config", help="also the custom security_policies of "
                          "this configuration file")
    policies.set_defaults(func=cmd_policies)

    demo = sub.add_parser("demo", help="the embedded default: self-signed HTTPS + demo backends",
                          description="No files needed: a self-signed certificate (kept in "
                          "$LBCORE_STATE_DIR or ~/.local/state/lbcore), two demo backends on "
                          "loopback, HTTPS and HTTP listeners balancing across them.")
    demo.add_argument("--https-port", type=int, default=8443, metavar="PORT",
                      help="the HTTPS listener's port (default %(default)s)")
    demo.add_argument("--http-port", type=int, default=8080, metavar="PORT",
                      help="the HTTP listener's port (default %(default)s)")
    demo.add_argument("--admin-port", type=int, default=9100, metavar="PORT",
                      help="the admin endpoint's port on 127.0.0.1: /metrics, /healthz, "
                      "/status (default %(default)s)")
    demo.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    demo.set_defaults(func=cmd_demo)

    version = sub.add_parser("version", help="print versions",
                             description="The lbcore version; with -v also Python, uvloop, "
                             "httptools, OpenSSL, libnghttp2 and the extension build loaded.")
    version.add_argument("-v", "--verbose", action="store_true",
                         help="also the libraries and the extension build")
    version.set_defaults(func=cmd_version)

    worker = sub.add_parser("_worker")          # started by `run`; hidden
    worker.set_defaults(func=cmd_worker)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
