"""A throw-away PostgreSQL for tests and benchmarks: Debian's ``postgresql`` server binaries, a cluster in a
temporary directory on a free loopback port (trust authentication on 127.0.0.1 only).

The server refuses to run as root, so under root the cluster belongs to the ``postgres`` system user
that Debian's package creates and the commands run through ``runuser``. :meth:`PostgresServer.stop`
(and leaving its ``with`` block) stops the server and removes its directory, on every path.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

USER = "fleetloop"


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


class PostgresServer:
    """A PostgreSQL cluster in a temporary directory, serving 127.0.0.1:``port``.

    ``durable=False`` (tests) runs it with ``fsync=off``: a crash of the machine may lose committed
    transactions, which a throw-away test cluster does not mind and which saves the disk flushes;
    ``durable=True`` keeps PostgreSQL's own defaults (``fsync``, ``synchronous_commit``, ``full_page_writes``
    on): what a production pool runs, and what the pool benchmark measures beside it.
    """

    def __init__(self, durable: bool = False) -> None:
        self.durable = durable
        self.root = Path(tempfile.mkdtemp(prefix="fleetloop-pg-"))
        self.root.chmod(0o755)
        self.data, self.log = self.root / "data", self.root / "server.log"
        self.port = free_port()
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as:
            shutil.chown(self.root, "postgres")

    def _run(self, *command: str) -> None:
        done = subprocess.run([*self._as, *command], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()} {log[-2000:]}")

    def start(self) -> None:
        self._run(_binary("initdb"), "-D", str(self.data), "-A", "trust", "-U", USER, "--no-sync")
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        if not self.durable:
            options += " -c fsync=off"
        self._run(_binary("pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.log), "-w", "start")

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
        try:
            if (self.data / "postmaster.pid").exists():
                self._run(_binary("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

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
