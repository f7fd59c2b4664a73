"""SIGINT and SIGTERM stop our processes, whatever the process that started them ignored.

A POSIX shell starts the background jobs of a non-interactive script with SIGINT and SIGQUIT
ignored, and Python keeps an ignored SIGINT. Our robot processes install their own handlers
(``fleetloop_ros.runner``) only once their start-up reaches ``run_nodes``; a SIGINT that came
earlier was discarded by the kernel and the process ran on for good (seen: cameras signalled 1.5 s
after their start, by a test run launched in the background, never stopped; py-spy showed them
spinning normally and the signal never seen). :func:`restore` is called first thing in every entry
point: from then on SIGINT interrupts as Python's default does, and SIGTERM ends the process.

A parent that starts our processes in their own sessions (so a terminal's Ctrl-C reaches only the
parent, which stops them in order) loses them when it is itself killed -9: they run on as orphans
(seen: two demo robots running 23 minutes after a test's timeout killed the demo). A parent that
sets ``FLEETLOOP_END_WITH_PARENT=<its pid>`` in the child's environment gets, on Linux, a child that
receives SIGTERM (a clean stop) the moment the parent dies (``prctl(PR_SET_PDEATHSIG)``), and that
exits at once if the parent is already gone. The kernel ties this to the parent *thread* that
started the child: start such children from a thread that outlives them (the main thread).

Programs that are not ours (mosquitto, PostgreSQL) get the same guard from util-linux's ``setpriv
--pdeathsig`` (:func:`end_with_parent_command`), which sets it between fork and exec; Python's own
``preexec_fn`` could do it too, but it is not safe in a process with threads (the child may deadlock
before exec), and ours have threads.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import sys
import threading
from typing import Sequence

END_WITH_PARENT = "FLEETLOOP_END_WITH_PARENT"
_PR_SET_PDEATHSIG = 1


def restore() -> None:
    """Undo an inherited SIG_IGN for SIGINT and SIGTERM (main thread only; a no-op otherwise)."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _end_with_parent()


def end_with_parent_env(env: dict[str, str]) -> dict[str, str]:
    """Return ``env`` asking a child started from this process to end when this process dies (Linux)."""
    env[END_WITH_PARENT] = str(os.getpid())
    return env


def end_with_parent_command(
    command: Sequence[str], stop: signal.Signals = signal.SIGTERM, setpriv_options: Sequence[str] = ()
) -> list[str]:
    """Return ``command`` run under ``setpriv [setpriv_options] --pdeathsig <stop>``: the kernel sends the
    program ``stop`` when the thread that starts it dies (its owner killed -9 included).

    Where setpriv is missing (not Linux, no util-linux) the command runs unguarded, as it is: its owner's
    own stop still ends it. ``setpriv_options`` (e.g. ``--reuid``) are something the command needs, not a
    guard, so without setpriv they raise :class:`RuntimeError` naming what is missing.
    """
    setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    if setpriv is None:
        if setpriv_options:
            raise RuntimeError(f"util-linux's setpriv is needed to run {command[0]} with {' '.join(setpriv_options)}")
        return list(command)
    return [setpriv, *setpriv_options, "--pdeathsig", stop.name.removeprefix("SIG"), *command]


def _end_with_parent() -> None:
    """Honour FLEETLOOP_END_WITH_PARENT (see the module docstring); grandchildren do not inherit it."""
    wanted = os.environ.pop(END_WITH_PARENT, None)
    if wanted is None or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        return  # no guard, but nothing else changes
    if str(os.getppid()) != wanted:  # the parent died before the guard was set
        os.kill(os.getpid(), signal.SIGTERM)
