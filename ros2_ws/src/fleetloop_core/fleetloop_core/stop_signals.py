"""SIGINT and SIGTERM stop our processes, whatever the process that started them ignored.

A POSIX shell starts the background jobs of a non-interactive script with SIGINT and SIGQUIT
ignored, and Python keeps an ignored SIGINT. Our robot processes install their own handlers
(``fleetloop_ros.runner``) only once their start-up reaches ``run_nodes``; a SIGINT that came
earlier was discarded by the kernel and the process ran on for good (seen: cameras signalled 1.5 s
after their start, by a test run launched in the background, never stopped; py-spy showed them
spinning normally and the signal never seen). :func:`restore` is called first thing in every entry
point: from then on SIGINT interrupts as Python's default does, and SIGTERM ends the process.
"""

from __future__ import annotations

import signal
import threading


def restore() -> None:
    """Undo an inherited SIG_IGN for SIGINT and SIGTERM (main thread only; a no-op otherwise)."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
