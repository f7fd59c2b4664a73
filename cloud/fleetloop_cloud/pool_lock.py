"""The pool's runner lock: one worker runs the loop's steps at a time, across processes and hosts.

``WorkerLock`` (used by ``CloudLoop.run_step``): a PostgreSQL session advisory lock on a connection of
its own, or ``flock`` on a file beside a SQLite pool; either is released when its holder ends.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path
from typing import Any

from fleetloop_core.durable import process_alive

from fleetloop_cloud.pool_sql import DatabaseError, connect_postgres, is_postgres, redact, sqlite_path

_RUNNER_KEY = 0x466C5275_6E6E6572  # "FlRunner": the loop runner's session lock (an advisory lock key)


class WorkerLock:
    """One holder at a time across processes and hosts, released when its holder ends, however it ends.

    What the cloud loop's steps need (``CloudLoop.run_step``): one worker runs the open round's steps
    at a time, and a worker killed in the middle of a step must not leave the step claimed. A status
    row or a lease with an expiry would need renewing and a guess at how long a step may take; these
    locks belong to the holder's connection or open file, so the operating system or the database
    server drops them when the holder dies:

    * PostgreSQL: a session-level advisory lock (``pg_try_advisory_lock``) on a connection of its own,
      whose ``application_name`` names the holder (``holder()`` reads it from ``pg_stat_activity``);
      the server releases it when that connection ends, a killed client's included.
    * SQLite: ``flock`` on a file beside the pool's (``<pool>.runner``), holding the holder's host and
      pid; the kernel releases it when the file's last descriptor closes. ``flock`` (not ``lockf``):
      two holders in one process exclude each other too.

    ``acquire()`` never waits: it returns whether this holder has the lock now.
    """

    def __init__(self, target: str | Path):
        self.target = target
        self.me = f"{socket.gethostname()}:{os.getpid()}"
        self._held: Any = None  # the psycopg connection or the open file

    def acquire(self) -> bool:
        """Take the lock if no other holder has it; return whether this holder has it."""
        if self._held is not None:
            return True
        if is_postgres(self.target):
            import psycopg

            uri = str(self.target)
            try:
                db = connect_postgres(uri, application_name=f"fleetloop runner {self.me}")
                got = db.execute("SELECT pg_try_advisory_lock(%s)", (_RUNNER_KEY,)).fetchone()[0]
            except psycopg.Error as exc:
                raise DatabaseError(f"pool {redact(uri)}: cannot take the runner lock ({str(exc).strip()})") from exc
            if not got:
                db.close()
                return False
            self._held = db
            return True
        path = self.path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(path, "a+")
        except OSError as exc:
            raise DatabaseError(f"pool {self.target}: cannot open the runner lock {path} ({exc})") from exc
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        handle.truncate(0)
        handle.write(self.me + "\n")
        handle.flush()
        self._held = handle
        return True

    def release(self) -> None:
        """Let the lock go (a holder that ended without calling this has let it go too)."""
        held, self._held = self._held, None
        if held is None:
            return
        if not is_postgres(self.target):
            held.truncate(0)  # nobody named while nobody holds it
            fcntl.flock(held, fcntl.LOCK_UN)
        held.close()  # PostgreSQL: the session ends, and its advisory locks with it

    @property
    def path(self) -> Path:
        """The SQLite pool's lock file."""
        pool = sqlite_path(self.target)
        return pool.with_name(pool.name + ".runner")

    def holder(self) -> str:
        """Return who holds the lock now (host:pid), or "" when nobody does (best effort: for messages)."""
        if is_postgres(self.target):
            import psycopg

            sql = (
                "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.granted AND l.objid = %s AND l.classid = %s"
            )
            key = _RUNNER_KEY
            try:
                with connect_postgres(str(self.target)) as db:
                    row = db.execute(sql, (key & 0xFFFFFFFF, key >> 32)).fetchone()
            except psycopg.Error:
                return ""  # only for a message: the caller says "another worker"
            return row[0].removeprefix("fleetloop runner ") if row else ""
        try:
            named = self.path.read_text().strip()
        except OSError:
            return ""
        host, _, pid = named.rpartition(":")
        if host == socket.gethostname() and pid.isdigit() and not process_alive(int(pid)):
            return ""  # a holder killed here left its name behind (and the kernel released its lock)
        return named
