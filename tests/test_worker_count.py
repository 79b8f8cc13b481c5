"""`workers: auto` follows the cores and the container's CPU quota."""

import os

from lbcore.supervisor import worker_count


def test_explicit_count():
    assert worker_count(3) == 3


def test_auto_is_cores_without_quota(tmp_path):
    f = tmp_path / "cpu.max"
    f.write_text("max 100000\n")
    assert worker_count("auto", str(f)) == len(os.sched_getaffinity(0))
    assert worker_count("auto", str(tmp_path / "missing")) == len(os.sched_getaffinity(0))


def test_auto_respects_quota(tmp_path):
    f = tmp_path / "cpu.max"
    f.write_text("50000 100000\n")          # half a CPU: still one worker
    assert worker_count("auto", str(f)) == 1
    f.write_text(f"{100000 * 64} 100000\n")   # more quota than cores: the cores
    assert worker_count("auto", str(f)) == len(os.sched_getaffinity(0))
