"""The master's pidfile, and signalling the master through it
(`lbcore reload` / `lbcore stop`, as `nginx -s reload` and `haproxy -sf` users
expect). The file is written only once the master's signal handlers are in
place: a SIGHUP sent any earlier would kill a process that has not yet
installed its handler (SIGHUP's default action is to terminate)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path


class PidfileError(Exception):
    """Why a pidfile can't be written or names no running master."""


def read_pid(path: Path) -> int:
    """The pid in `path`, if that process is alive; PidfileError otherwise."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        raise PidfileError(f"{path}: no such pidfile (is lbcore running with "
                           f"--pidfile {path}?)") from None
    except OSError as exc:
        raise PidfileError(f"{path}: {exc.strerror}") from exc
    try:
        pid = int(text)
    except ValueError:
        raise PidfileError(f"{path}: holds {text[:40]!r}, not a process id") from None
    if pid <= 0 or not alive(pid):
        raise PidfileError(f"{path}: process {pid} is not running (a stale pidfile)")
    return pid


def alive(pid: int) -> bool:
    """The process exists and has not exited. An exited child its parent has
    not yet reaped (a zombie) still answers kill(pid, 0): it counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass                 # someone else's process, but it exists
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True          # no /proc: kill(pid, 0) is all we know
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def write(path: Path) -> None:
    """Write our pid atomically (a reader never sees an empty file). Refused
    when the file names another live process: two masters on one pidfile
    would leave `lbcore stop` signalling the wrong one."""
    with contextlib.suppress(PidfileError):
        pid = read_pid(path)
        if pid != os.getpid():
            raise PidfileError(f"{path}: lbcore (pid {pid}) is already running")
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        tmp.write_text(f"{os.getpid()}\n")
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise PidfileError(f"cannot write pidfile {path}: {exc.strerror or exc}") from exc


def remove(path: Path) -> None:
    """Remove the file if it is still ours (a successor may have replaced it)."""
    with contextlib.suppress(OSError, ValueError):
        if int(path.read_text().strip()) == os.getpid():
            path.unlink()


def signal_master(path: Path, sig: signal.Signals) -> int:
    """Send `sig` to the master named by the pidfile; its pid."""
    pid = read_pid(path)
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        raise PidfileError(f"process {pid} exited before it got {sig.name}") from None
    except PermissionError:
        raise PidfileError(f"not allowed to signal process {pid} (run as its user)") from None
    return pid


def wait_exit(pid: int, timeout: float) -> bool:
    """True once `pid` is gone, False if it still runs after `timeout` s."""
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
