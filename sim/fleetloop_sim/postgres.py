"""A throw-away PostgreSQL for tests and benchmarks: Debian's ``postgresql`` server binaries, a cluster in a
temporary directory on a free loopback port (trust authentication on 127.0.0.1 only).

The server refuses to run as root, so under root the cluster belongs to the ``postgres`` system user
that Debian's package creates and the commands run through ``runuser`` (the server itself through
util-linux's ``setpriv``). :meth:`PostgresServer.stop` (and leaving its ``with`` block) stops the server
and removes its directory, on every path. The server runs in the foreground as this process's child
under ``setpriv --pdeathsig``, so it also ends when the process that started it dies without its
clean-up (SIGTERM to pytest, kill -9): ``pg_ctl start`` daemonized it, and a stopped test run left it
running. Start it from a thread that outlives it (the kernel ties the signal to that thread). A process
killed that way cannot remove the cluster's directory, so each new server first removes the directories
whose owner died (its lock on ``owner.lock`` released) and whose server has ended.
"""

from __future__ import annotations

import fcntl
import glob
import io
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from fleetloop_core.stop_signals import end_with_parent_command

USER = "fleetloop"
_OWNER_LOCK = "owner.lock"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _binary(name: str) -> str:
    """Return a PostgreSQL server binary: Debian keeps them in /usr/lib/postgresql/<version>/bin."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    path = found[-1] if found else shutil.which(name)
    if not path:
        raise RuntimeError(f"PostgreSQL's {name} not found (/usr/lib/postgresql/*/bin): run scripts/setup.sh")
    return path


def _server_running(data: Path) -> bool:
    """Whether the postmaster named in ``data/postmaster.pid`` (removed at its clean shutdown) still runs."""
    try:
        pid = int((data / "postmaster.pid").read_text().split("\n", 1)[0])
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return False
    except PermissionError:  # it runs, as another user
        return True
    return True


def remove_abandoned_clusters(tmp: Path) -> list[Path]:
    """Remove the clusters under ``tmp`` whose owner died without its clean-up and whose server has ended.

    The owner holds an exclusive ``flock`` on ``owner.lock`` for its life (the kernel releases it when the
    process dies, kill -9 included); a directory without that file is left alone (another owner's, mid-way
    through its start). Returns the directories removed.
    """
    removed = []
    for root in sorted(tmp.glob("fleetloop-pg-*")):
        try:
            with open(root / _OWNER_LOCK, "rb") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if _server_running(root / "data"):
                    continue
                shutil.rmtree(root, ignore_errors=True)
                removed.append(root)
        except (FileNotFoundError, NotADirectoryError, BlockingIOError, PermissionError):
            continue
    return removed


def _hold_owner_lock(root: Path) -> io.BufferedWriter:
    """Create ``root/owner.lock`` already locked (written locked, then renamed into place): no sweeper sees it free."""
    pending = root / f".{_OWNER_LOCK}.{os.getpid()}"
    lock = open(pending, "wb")  # noqa: SIM115 - held for the server's life, closed by stop()
    fcntl.flock(lock, fcntl.LOCK_EX)
    pending.rename(root / _OWNER_LOCK)
    return lock


class PostgresServer:
    """A PostgreSQL cluster in a temporary directory, serving 127.0.0.1:``port``.

    ``durable=False`` (tests) runs it with ``fsync=off``: a crash of the machine may lose committed
    transactions, which a throw-away test cluster does not mind and which saves the disk flushes;
    ``durable=True`` keeps PostgreSQL's own defaults (``fsync``, ``synchronous_commit``, ``full_page_writes``
    on): what a production pool runs, and what the pool benchmark measures beside it.
    """

    def __init__(self, durable: bool = False) -> None:
        self.durable = durable
        remove_abandoned_clusters(Path(tempfile.gettempdir()))
        self.root = Path(tempfile.mkdtemp(prefix="fleetloop-pg-"))
        self._owner_lock = _hold_owner_lock(self.root)
        self.root.chmod(0o755)
        self.data, self.log = self.root / "data", self.root / "server.log"
        self.port = free_port()
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self._server: subprocess.Popen[bytes] | None = None
        if self._as:
            shutil.chown(self.root, "postgres")

    def _run(self, *command: str) -> None:
        done = subprocess.run([*self._as, *command], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()} {log[-2000:]}")

    def start(self, timeout_s: float = 120.0) -> None:
        self._run(_binary("initdb"), "-D", str(self.data), "-A", "trust", "-U", USER, "--no-sync")
        options = ["-p", str(self.port), "-k", str(self.root), "-c", "listen_addresses=127.0.0.1"]
        if not self.durable:
            options += ["-c", "fsync=off"]
        user = ["--reuid=postgres", "--regid=postgres", "--init-groups"] if self._as else []
        # fast shutdown (SIGINT) when this process dies
        command = end_with_parent_command([_binary("postgres"), "-D", str(self.data), *options], signal.SIGINT, user)
        with open(self.log, "ab") as log:
            self._server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        ready = [_binary("pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port), "-U", USER]
        deadline = time.monotonic() + timeout_s
        while subprocess.run(ready, capture_output=True).returncode != 0:
            if self._server.poll() is not None or time.monotonic() > deadline:
                log_text = self.log.read_text() if self.log.exists() else ""
                raise RuntimeError(f"PostgreSQL did not start on 127.0.0.1:{self.port}: {log_text[-2000:]}")
            time.sleep(0.05)

    def __enter__(self) -> "PostgresServer":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        server, self._server = self._server, None
        try:
            if server is not None and server.poll() is None:
                server.send_signal(signal.SIGQUIT)  # immediate shutdown: the cluster is thrown away
                try:
                    server.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    server.kill()
                    server.wait(timeout=30)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            self._owner_lock.close()

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs (None before start and after stop)."""
        return self._server.pid if self._server is not None else None

    def uri(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def settings(self, names: tuple[str, ...] = ("fsync", "synchronous_commit", "full_page_writes")) -> dict[str, str]:
        """Return the running server's values of the settings ``names`` (what it really runs with)."""
        import psycopg

        values = {}
        with psycopg.connect(self.uri(), autocommit=True) as db:
            for name in names:
                row = db.execute(f"SHOW {name}").fetchone()
                values[name] = "" if row is None else str(row[0])
        return values

    def create_database(self) -> str:
        """Create an empty database; return its URI."""
        import psycopg

        name = f"pool_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.uri(), autocommit=True) as db:
            db.execute(f"CREATE DATABASE {name}")
        return self.uri(name)
