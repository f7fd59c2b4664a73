"""A process whose node start-up is stuck inside a C call that signals do not interrupt.

    python stuck_startup.py

The factory locks a default pthread mutex twice from the same thread (glibc: waits for ever; a
signal does not end the wait, it resumes after the handler) through ctypes, which releases the GIL:
the shape of a DDS call that waits on a lock or condition while the machine is overloaded. Python's
signal handlers run only when the main thread returns to Python, which it never does here; the
runner must still end the process within its shutdown deadline.
"""

import ctypes
import sys

from fleetloop_ros.runner import run_nodes


def stuck():
    libc = ctypes.CDLL(None)  # CDLL: the GIL is released during the call
    mutex = ctypes.create_string_buffer(64)  # zeroed = PTHREAD_MUTEX_INITIALIZER (glibc)
    libc.pthread_mutex_lock(mutex)
    print("stuck in start-up", flush=True)
    libc.pthread_mutex_lock(mutex)  # never returns
    return []


if __name__ == "__main__":
    run_nodes(stuck, [])
    sys.exit(0)
