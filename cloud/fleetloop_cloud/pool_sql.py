"""Where the pool lives: a URI, and one connection API over SQLite and PostgreSQL.

* ``sqlite:///path/pool.sqlite`` or a plain path (the embedded default): Python's ``sqlite3`` in WAL
  mode, as before.
* ``postgresql://user@host:port/db`` (production, several workers at once): ``psycopg`` 3, the
  PostgreSQL adapter its authors keep for Python 3 (server-side parameters, bytea as bytes).

The pool's modules write SQLite's dialect; :class:`PostgresConnection` offers the sqlite3
connection's methods and translates what differs: ``?`` placeholders, ``INSERT OR IGNORE`` / ``OR
REPLACE`` (as ``ON CONFLICT`` on the table's primary key, learnt from its ``CREATE TABLE``), column
types (``BLOB`` -> ``BYTEA``, integers 64-bit, ``id INTEGER PRIMARY KEY`` -> ``BIGSERIAL``, its new
id read back with ``RETURNING``), and ``BEGIN IMMEDIATE``: a transaction that first takes the
pool's transaction-scoped advisory lock, so writers are serialised exactly as SQLite serialises
them (one writer at a time, across processes) while readers never wait. A transaction opened with
``row_locks`` (``PoolTables.transaction(row_locks=True)``: the review page's box leases) takes no
pool-wide lock on PostgreSQL: its SELECTs end in :data:`ROW_LOCK`, a comment SQLite ignores and
PostgreSQL runs as ``FOR UPDATE SKIP LOCKED``, so two reviewers lease two different rows at once,
and a row another transaction holds is passed over, never handed out twice; a SELECT that must wait for
the rows it changes instead (an answer to a task) ends in :data:`ROW_WAIT` (``FOR UPDATE``). On SQLite
the same block is one ``BEGIN IMMEDIATE`` writer as before.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence
from urllib.parse import urlsplit, urlunsplit

from fleetloop_core.errors import FleetLoopError

SCHEMES = ("sqlite", "postgresql", "postgres")
_LOCK_KEY = 0x466C6565744C6F6F  # "FleetLoo": the pool's advisory lock (one pool per database)
ROW_LOCK = " /* FOR UPDATE SKIP LOCKED */"  # end a SELECT of a row_locks transaction with this
ROW_WAIT = " /* FOR UPDATE */"  # ... or with this, to wait for the rows another transaction holds
# TCP keepalives on every PostgreSQL connection of the pool, both ends: without them a worker whose host
# died without closing its sockets (power, network) keeps its sessions, and the runner lock with them,
# until the operating system's default gives up (two hours and more); with them the server ends such a
# session within about idle + interval x count seconds, and the client notices a dead server as soon.
# The server's side goes as session settings (tcp_keepalives_*, settable by any user), the client's as
# libpq's keepalives parameters; both are ignored on a Unix-domain socket. AWS on why and how:
# https://docs.aws.amazon.com/AmazonRDS/latest/AuroraUserGuide/Appendix.PostgreSQL.CommonDBATasks.DeadConnectionHandling.html
KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT = 15, 5, 3


def connect_postgres(uri: str, **extra: Any) -> Any:
    """Return a psycopg connection (autocommit) with the pool's keepalives on both ends; psycopg.Error as it fails.

    What the URI sets itself wins: its own keepalive parameters, and its ``options`` (the server-side
    settings are added to them, a ``-c tcp_keepalives_*`` of its own kept).
    """
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    given = conninfo_to_dict(uri)
    client = {
        "keepalives": 1,
        "keepalives_idle": KEEPALIVE_IDLE_S,
        "keepalives_interval": KEEPALIVE_INTERVAL_S,
        "keepalives_count": KEEPALIVE_COUNT,
    }
    server = {
        "tcp_keepalives_idle": KEEPALIVE_IDLE_S,
        "tcp_keepalives_interval": KEEPALIVE_INTERVAL_S,
        "tcp_keepalives_count": KEEPALIVE_COUNT,
    }
    options = str(given.get("options") or "")
    options = " ".join([f"-c {name}={value}" for name, value in server.items() if name not in options] + [options])
    defaults = {name: value for name, value in client.items() if name not in given}
    return psycopg.connect(uri, autocommit=True, connect_timeout=10, options=options.strip(), **defaults, **extra)


class DatabaseError(FleetLoopError):
    """The pool's database refused or failed an operation (the message names it and why)."""


def is_postgres(target: str | Path) -> bool:
    """Return whether ``target`` is a PostgreSQL URI."""
    return isinstance(target, str) and target.split(":", 1)[0] in ("postgresql", "postgres")


def sqlite_path(target: str | Path) -> Path:
    """Return the file of a ``sqlite:///`` URI or a plain path; DatabaseError for another scheme."""
    if isinstance(target, Path):
        return target
    scheme = target.split("://", 1)[0] if "://" in target else ""
    if not scheme:
        return Path(target)
    if scheme != "sqlite":
        raise DatabaseError(f"pool {redact(target)}: unknown scheme {scheme!r} (known: {', '.join(SCHEMES)})")
    path = target[len("sqlite://") :]
    if not path.startswith("/"):
        raise DatabaseError(f"pool {target}: a sqlite URI names an absolute path (sqlite:///path/pool.sqlite)")
    return Path(path)


def redact(uri: str) -> str:
    """Return ``uri`` without its password (for messages and reports)."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class Row(tuple):
    """A result row read by position or by column name (as ``sqlite3.Row``)."""

    _names: tuple[str, ...] = ()

    def __getitem__(self, key):  # type: ignore[override]
        if isinstance(key, str):
            try:
                return tuple.__getitem__(self, self._names.index(key))
            except ValueError:
                raise IndexError(f"no column {key!r}") from None
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._names)


def _row_factory(cursor):
    names = tuple(d.name for d in cursor.description or ())
    kind = type("Row", (Row,), {"_names": names})
    return lambda values: kind(values)


class _Result:
    """What ``execute`` returns: rows, the affected row count and an inserted row's id."""

    def __init__(self, rows: list, rowcount: int, lastrowid: Optional[int]):
        self._rows, self.rowcount, self.lastrowid = rows, rowcount, lastrowid

    def fetchall(self) -> list:
        return self._rows

    def fetchone(self):
        return self._rows[0] if self._rows else None


_TYPES = [
    (re.compile(r"\bid INTEGER PRIMARY KEY\b"), "id BIGSERIAL PRIMARY KEY"),
    (re.compile(r"\bINTEGER\b"), "BIGINT"),
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
    (re.compile(r"\bBLOB\b"), "BYTEA"),
]
CREATE_TABLE = re.compile(r"CREATE TABLE IF NOT EXISTS (\w+)\s*\((.*)\)\s*$", re.S)
_CONSTRAINT = {"PRIMARY", "UNIQUE", "FOREIGN", "CHECK", "CONSTRAINT"}


def added_columns(body: str, have: set[str]) -> list[str]:
    """Return the column definitions of a ``CREATE TABLE`` body that a table with columns ``have`` lacks and
    ``ALTER TABLE ... ADD COLUMN`` can give an existing table: nullable or with a default (a column a later
    version added to the schema; an older pool gains it on open, its rows holding NULL or the default)."""
    parts, depth, start = [], 0, 0
    for index, char in enumerate(body):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(body[start:index])
            start = index + 1
    parts.append(body[start:])
    out = []
    for part in (" ".join(p.split()) for p in parts):
        name = part.split(" ", 1)[0] if part else ""
        upper = part.upper()
        if not name or name.upper() in _CONSTRAINT or name in have or "PRIMARY KEY" in upper:
            continue
        if "NOT NULL" not in upper or " DEFAULT " in upper:
            out.append(part)
    return out


_INSERT = re.compile(r"^\s*INSERT OR (IGNORE|REPLACE) INTO (\w+)\s*\(([^)]*)\)", re.S | re.I)
_PLAIN_INSERT = re.compile(r"^\s*INSERT INTO (\w+)\s", re.I)


class PostgresConnection:
    """A psycopg connection with the sqlite3 methods the pool uses, in SQLite's dialect (module docstring)."""

    def __init__(self, uri: str):
        try:
            import psycopg
        except ImportError as exc:  # pragma: no cover - the requirements install it
            raise DatabaseError(f"pool {redact(uri)}: psycopg is not installed ({exc})") from exc
        self.uri = uri
        self._errors = psycopg.Error
        try:
            self._db = connect_postgres(uri)
        except psycopg.Error as exc:
            raise DatabaseError(f"pool {redact(uri)}: cannot connect ({str(exc).strip()})") from exc
        self._db.row_factory = _row_factory
        self._keys: dict[str, list[str]] = {}  # table -> primary key columns
        self._serial: set[str] = set()  # tables whose id the database assigns

    # ------------------------------------------------------------------ sqlite3's methods
    def execute(self, sql: str, params: Sequence = ()) -> _Result:
        statement = sql.strip()
        if statement.upper().startswith("PRAGMA"):
            return _Result([], 0, None)
        if statement.upper() == "BEGIN IMMEDIATE":
            self._run("BEGIN", ())
            return self._run("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY - (1 << 63),))
        if statement.upper().startswith("CREATE "):  # a module's own tables (review page), one statement at a time
            translated = self.ddl(statement)
            result = self._run(translated, params)
            found = CREATE_TABLE.match(translated)
            if found:
                self._mend_columns(found.group(1), found.group(2))
            return result
        return self._run(self.translate(statement), params)

    def begin_row_locked(self) -> None:
        """Open a transaction without the pool-wide lock: its statements lock the rows they touch."""
        self._run("BEGIN", ())

    def executemany(self, sql: str, rows: Iterable[Sequence]) -> _Result:
        count = 0
        for params in rows:
            count += self.execute(sql, params).rowcount
        return _Result([], count, None)

    def executescript(self, script: str) -> None:
        """Run a schema script as one transaction under the pool's advisory lock.

        Two workers opening a new pool at once otherwise race in PostgreSQL's own catalogue: measured,
        ``CREATE TABLE IF NOT EXISTS`` from two processes failed one of them with a unique violation on
        ``pg_type_typname_nsp_index``.
        """
        self.execute("BEGIN IMMEDIATE")
        try:
            for statement in (s.strip() for s in script.split(";")):
                if statement:
                    translated = self.ddl(statement)
                    self._run(translated, ())
                    found = CREATE_TABLE.match(translated)
                    if found:  # a pool an older version created: the columns added since
                        self._add_columns(found.group(1), found.group(2))
        except BaseException:
            self._run("ROLLBACK", ())
            raise
        self._run("COMMIT", ())

    def close(self) -> None:
        self._db.close()

    # ------------------------------------------------------------------ the dialect
    def ddl(self, statement: str) -> str:
        """Return a CREATE statement in PostgreSQL's types; remember the table's key."""
        for pattern, replacement in _TYPES:
            statement = pattern.sub(replacement, statement)
        found = CREATE_TABLE.match(statement)
        if found:
            table, body = found.group(1), found.group(2)
            composite = re.search(r"PRIMARY KEY\s*\(([^)]*)\)", body)
            if composite:
                self._keys[table] = [c.strip() for c in composite.group(1).split(",")]
            else:
                inline = re.search(r"(\w+)\s+\w+(?:\s+\w+)*?\s+PRIMARY KEY", body)
                self._keys[table] = [inline.group(1)] if inline else []
            if "BIGSERIAL PRIMARY KEY" in body:
                self._serial.add(table)
        return statement

    def translate(self, sql: str) -> str:
        """Return a pool statement in PostgreSQL's dialect."""
        sql = sql.replace("?", "%s").replace(ROW_LOCK, " FOR UPDATE SKIP LOCKED").replace(ROW_WAIT, " FOR UPDATE")
        found = _INSERT.match(sql)
        if found:
            action, table, columns = found.group(1).upper(), found.group(2), found.group(3)
            sql = "INSERT INTO" + sql[found.start(2) - 1 :]
            keys = self._primary_key(table)
            if action == "IGNORE" or not keys:
                return sql + " ON CONFLICT DO NOTHING"
            names = [c.strip() for c in columns.split(",")]
            updates = ", ".join(f"{c}=EXCLUDED.{c}" for c in names if c not in keys)
            return sql + f" ON CONFLICT ({', '.join(keys)}) DO " + (f"UPDATE SET {updates}" if updates else "NOTHING")
        plain = _PLAIN_INSERT.match(sql)
        if plain and plain.group(1) in self._serial and "RETURNING" not in sql.upper():
            return sql + " RETURNING id"
        return sql

    def _mend_columns(self, table: str, body: str) -> None:
        """Bring an existing table's columns to what its translated CREATE says, where that loses nothing.

        Before 2026-12-05 the review page's tables were created untranslated on PostgreSQL: ``REAL`` as a
        4-byte float (times rounded to ~100 s) and ``id INTEGER PRIMARY KEY`` without a default (every
        insert failed). ``CREATE TABLE IF NOT EXISTS`` leaves such a table as it is; this widens the
        floats and gives the id its identity (numbering on after the highest id), in place.
        """
        rows = self._run(
            "SELECT column_name, data_type, column_default, is_identity FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = %s",
            (table,),
        ).fetchall()
        have = {row[0]: row for row in rows}
        self._add_columns(table, body, set(have))
        for column in re.findall(r"(\w+)\s+DOUBLE PRECISION", body):
            if column in have and have[column][1] == "real":
                self._run(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE DOUBLE PRECISION", ())
        if table in self._serial and "id" in have and have["id"][2] is None and have["id"][3] != "YES":
            self._run(f"ALTER TABLE {table} ALTER COLUMN id ADD GENERATED BY DEFAULT AS IDENTITY", ())
            self._run(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), COALESCE(MAX(id), 0) + 1, false) FROM {table}",
                (),
            )

    def _add_columns(self, table: str, body: str, have: set[str] | None = None) -> None:
        """Add the columns of a translated ``CREATE`` body the existing ``table`` lacks (``added_columns``)."""
        if have is None:
            rows = self._run(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND table_name = %s",
                (table,),
            ).fetchall()
            have = {row[0] for row in rows}
        for definition in added_columns(body, have):
            self._run(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {definition}", ())

    def _primary_key(self, table: str) -> list[str]:
        """Return the table's primary key columns: learnt from its CREATE on this connection, else the catalogue.

        A connection that did not create the table (a review-page worker writing the review tables
        another process created) would otherwise turn ``INSERT OR REPLACE`` into ``DO NOTHING``.
        """
        if table not in self._keys:
            rows = self._run(
                "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
                "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = to_regclass(%s) AND i.indisprimary",
                (table,),
            ).fetchall()
            self._keys[table] = [r[0] for r in rows]
        return self._keys[table]

    def _run(self, sql: str, params: Sequence) -> _Result:
        values = tuple(int(p) if isinstance(p, bool) else p for p in params)
        try:
            cursor = self._db.execute(sql, values)  # type: ignore[arg-type]
            rows = cursor.fetchall() if cursor.description else []
        except self._errors as exc:
            raise sqlite3.DatabaseError(f"{redact(self.uri)}: {str(exc).strip()} [{sql[:120]}]") from exc
        returning = sql.endswith(" RETURNING id") and rows
        return _Result([] if returning else rows, cursor.rowcount, int(rows[0][0]) if returning else None)


def connect(target: str | Path, check_same_thread: bool = True) -> Any:
    """Return a connection to the pool at ``target`` (sqlite3.Connection or PostgresConnection)."""
    if is_postgres(target):
        return PostgresConnection(str(target))
    path = sqlite_path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(str(path), timeout=30.0, isolation_level=None, check_same_thread=check_same_thread)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.row_factory = sqlite3.Row
    return db
