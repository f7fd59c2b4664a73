"""Fast DDS shared-memory segments left behind by processes that ended: found and removed at start-up.

Every Fast DDS participant with the shared-memory transport (our ``shm`` default: 8.5 MB segments,
9.1 MB files) creates ``/dev/shm/fastdds_<16 hex digits>`` and holds an ``flock`` on its lock file
``<segment>_el`` while it lives; it removes both when the participant is destroyed. A process that
ends without destroying its participant (SIGKILL, a crash, or ``os._exit`` while rclpy still
defers a node's destruction) leaves both, and nothing removes them before a reboot: /dev/shm is
memory. Measured here: a ``fleetloop robot`` stopped by SIGINT (exit 0 within 0.1 s) left its
segment in 5 of 8 stops; one rclpy node whose executor was waiting in another thread when the
process destroyed it and ended with ``os._exit`` left it 3 of 3 times (rclpy defers destroying a
node in use, and ``os._exit`` does not wait), an idle executor's 0 of 3; a node blocked inside a
callback did not (0 of 6). The runner's teardown now lets its side executor leave its wait first
(``fleetloop_ros.runner._leave_spin``: 8 of 16 SIGINT stops left the segment before, 0 of 16 after),
but a kill, a crash or a callback still running at the stop still leave it, and a robot that
restarts its processes (``respawn``, systemd) or is killed would fill /dev/shm by 9 MB each time.

:func:`remove_orphaned_segments` applies the rule of Fast DDS's own ``fastdds shm clean``: a
segment whose lock file nobody holds belongs to a process that is gone. Run before rclpy starts
(``fleetloop_ros.runner.run_nodes``), it bounds the leak to what ended since the last start. Port
files (``fastdds_port<n>``, 212 KB: one per listening locator of a domain, shared with the
participants sending to it) follow the same tool's rule: a port whose listener lock
(``fastdds_port<n>_el`` or ``_sl``) nobody holds is a zombie, removed with its lock and its mutex
(``sem.fastdds_port<n>_mutex``). A port file without a lock file (its listener closed, but a sender
that was killed still counted on it) is left to Fast DDS, which checks and reuses it when a participant
of that domain opens the port again, as its own tool leaves it (seen: ``tests/ros/test_process_exit.py``
leaves both kinds, its frozen processes end without DDS teardown by design). Files another user owns
cannot be opened for the check and are left alone, and so are lock files younger than ``min_age_s``
(5 s): a participant starting in another process creates its lock file a moment before it locks it.
"""

from __future__ import annotations

import fcntl
import logging
import re
import time
from pathlib import Path

log = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")
SEGMENT = re.compile(r"fastdds_[0-9a-z]{16}")  # a participant's segment (not a port file)
PORT = re.compile(r"fastdds_port[0-9]{1,5}")  # a listening locator's port segment


def _held(lock: Path) -> bool:
    """Return whether a live process holds ``lock`` (or it cannot be checked: then it is left alone)."""
    try:
        with open(lock, "ab") as handle:  # append: never truncates a live owner's file
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return False  # closing the file releases the lock at once
    except OSError:
        return True


def _young(lock: Path, since: float) -> bool:
    """Return whether ``lock`` was made after ``since`` (or is gone: nothing to do)."""
    try:
        return lock.stat().st_mtime > since
    except OSError:
        return True


def _remove(lock: Path, files: list[Path]) -> int | None:
    """Remove ``files`` (the first is the segment) and ``lock``; return the segment's size, None if it failed."""
    try:
        size = files[0].stat().st_size if files[0].exists() else 0
        for path in files:
            path.unlink(missing_ok=True)
        lock.unlink(missing_ok=True)
    except OSError as exc:  # another process removed it meanwhile, or a read-only directory
        log.debug("cannot remove %s: %s", files[0], exc)
        return None
    return size


def remove_orphaned_segments(directory: Path = SHM_DIR, min_age_s: float = 5.0) -> list[tuple[str, int]]:
    """Remove the Fast DDS segments and ports in ``directory`` whose owner is gone (lock files at least
    ``min_age_s`` old that nobody holds); return (name, bytes) of each."""
    removed: list[tuple[str, int]] = []
    now = time.time()
    try:
        locks = sorted([*directory.glob("fastdds_*_el"), *directory.glob("fastdds_port*_sl")])
    except OSError:
        return removed
    for lock in locks:
        segment = lock.with_name(lock.name[: -len("_el")])
        if SEGMENT.fullmatch(segment.name):
            files = [segment]
        elif PORT.fullmatch(segment.name):
            files = [segment, directory / f"sem.{segment.name}_mutex"]
        else:
            continue
        if _young(lock, now - min_age_s) or _held(lock):
            continue
        size = _remove(lock, files)
        if size is not None:
            removed.append((segment.name, size))
    if removed:
        log.info(
            "removed %d Fast DDS shared-memory segment(s) and port(s) left by ended processes (%.1f MB in %s)",
            len(removed),
            sum(size for _, size in removed) / 1e6,
            directory,
        )
    return removed
