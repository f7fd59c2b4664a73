"""Fast DDS segments and ports of ended processes are removed (the rule of ``fastdds shm clean``); a live
owner's, a lock-less port and others' files stay."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from fleetloop_core.dds_shm import remove_orphaned_segments

HOLD = (  # a live owner: holds the segment's lock file as Fast DDS does
    "import fcntl, sys, time; f = open(sys.argv[1], 'ab'); fcntl.flock(f, fcntl.LOCK_EX); "
    "print('held', flush=True); time.sleep(60)"
)


def _segment(directory, name: str, size: int = 4096, age_s: float = 60.0) -> None:
    (directory / name).write_bytes(b"\0" * size)
    lock = directory / f"{name}_el"
    lock.write_bytes(b"")
    made = time.time() - age_s
    os.utime(lock, (made, made))


def test_only_segments_whose_lock_nobody_holds_are_removed(tmp_path, spawn):
    _segment(tmp_path, "fastdds_0123456789abcdef", 9000)  # its owner is gone: nobody holds the lock
    _segment(tmp_path, "fastdds_fedcba9876543210")  # a live participant's
    _segment(tmp_path, "fastdds_00000000aaaaaaaa", age_s=1.0)  # just made: its owner may not have locked it yet
    _segment(tmp_path, "fastdds_port7001", 64)  # a port whose listener is gone
    (tmp_path / "sem.fastdds_port7001_mutex").write_bytes(b"\0" * 32)
    _segment(tmp_path, "fastdds_port7003", 64)  # a live listener's port
    (tmp_path / "fastdds_port7005").write_bytes(b"\0" * 64)  # no lock: Fast DDS checks and reuses it
    (tmp_path / "lttng-ust-wait-8").write_bytes(b"")  # not Fast DDS's
    owner = spawn(
        [sys.executable, "-c", HOLD, str(tmp_path / "fastdds_fedcba9876543210_el")], stdout=subprocess.PIPE, text=True
    )
    listener = spawn(
        [sys.executable, "-c", HOLD, str(tmp_path / "fastdds_port7003_el")], stdout=subprocess.PIPE, text=True
    )
    assert owner.stdout.readline().strip() == "held" and listener.stdout.readline().strip() == "held"

    assert remove_orphaned_segments(tmp_path) == [("fastdds_0123456789abcdef", 9000), ("fastdds_port7001", 64)]
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == [
        "fastdds_00000000aaaaaaaa",
        "fastdds_00000000aaaaaaaa_el",
        "fastdds_fedcba9876543210",
        "fastdds_fedcba9876543210_el",
        "fastdds_port7003",
        "fastdds_port7003_el",
        "fastdds_port7005",
        "lttng-ust-wait-8",
    ]
    owner.kill()
    owner.wait()
    assert remove_orphaned_segments(tmp_path) == [("fastdds_fedcba9876543210", 4096)]  # its owner ended
    assert remove_orphaned_segments(tmp_path, min_age_s=0.5) == [("fastdds_00000000aaaaaaaa", 4096)]
    assert remove_orphaned_segments(tmp_path / "missing") == []  # no /dev/shm (not Linux): nothing to do
