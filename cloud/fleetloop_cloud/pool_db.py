"""The pool's database (a SQLite file, or PostgreSQL: ``pool_sql``): one connection, the schema it needs,
transactions and queries.

Both the frame pool (``pool.Pool``) and a task's own tables (``box_pool.BoxPool``) stand on
:class:`PoolTables`; a second holder may share the first one's connection, so one
``transaction()`` covers both sets of tables.
"""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from fleetloop_core.errors import FleetLoopError

from fleetloop_cloud.pool_sql import (
    CREATE_TABLE,
    DatabaseError,
    added_columns,
    connect,
    is_postgres,
    redact,
    sqlite_path,
)


class PoolError(FleetLoopError):
    """The pool refused an operation (message names the pool file, the frame or task and why)."""


def where_clause(equal: dict[str, object], one_of: dict[str, Optional[Sequence]]) -> tuple[str, list]:
    """Return (`` WHERE ...`` or "", parameters) for columns equal to a value or in a list (None: no filter)."""
    where, params = [], []
    for column, value in equal.items():
        if value is not None:
            where.append(f"{column}=?")
            params.append(value)
    for column, values in one_of.items():
        if values is not None:
            where.append(f"{column} IN ({','.join('?' * len(values))})")
            params += list(values)
    return (" WHERE " + " AND ".join(where) if where else ""), params


def as_list(value: str | Sequence[str] | None) -> Optional[list[str]]:
    """Return one value or several as a list (None stays None)."""
    return None if value is None else ([value] if isinstance(value, str) else list(value))


class PoolTables:
    """Tables in the pool's database, on their own connection or on another holder's."""

    path: Path | str  # the SQLite file, or the PostgreSQL URI without its password (for messages)
    uri: str  # what the pool was opened from (pool_sql: a path, sqlite:///..., postgresql://...)
    _db: Any  # sqlite3.Connection or pool_sql.PostgresConnection
    _owns: bool

    def _open(self, target: "PoolTables | str | Path", schema: str, what: str, check_same_thread: bool) -> None:
        """Open (or share) the connection and create ``schema``; PoolError naming the database and ``what``."""
        self._owns = not isinstance(target, PoolTables)
        if isinstance(target, PoolTables):
            self.path, self.uri = target.path, target.uri
        else:
            self.uri = str(target)
            try:
                self.path = redact(self.uri) if is_postgres(target) else sqlite_path(target)
            except DatabaseError as exc:  # a URI of another scheme
                raise PoolError(str(exc)) from exc
        try:
            self._db = target._db if isinstance(target, PoolTables) else connect(target, check_same_thread)
            self._db.executescript(schema)
            if isinstance(self._db, sqlite3.Connection):  # (PostgreSQL: in its executescript)
                self._add_columns(schema)
        except (sqlite3.DatabaseError, DatabaseError) as exc:
            raise PoolError(f"{self.path}: cannot open {what} ({exc})") from exc

    def _add_columns(self, schema: str) -> None:
        """Give the tables of ``schema`` an older version created the columns added since (``added_columns``)."""
        for statement in schema.split(";"):
            found = CREATE_TABLE.match(statement.strip())
            if found is None:
                continue
            table, body = found.group(1), found.group(2)
            have = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            for definition in added_columns(body, have):
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {definition}")

    def close(self) -> None:
        """Close the connection if this holder opened it (a shared one is closed by its owner)."""
        if self._owns:
            self._db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def transaction(self, row_locks: bool = False) -> Iterator[sqlite3.Connection]:
        """Run a block atomically (BEGIN IMMEDIATE ... COMMIT, ROLLBACK on error).

        ``row_locks``: on PostgreSQL the block takes no pool-wide lock and locks the rows it selects with
        ``pool_sql.ROW_LOCK`` itself (writers of other rows go on meanwhile); on SQLite it is the same.
        """
        begin = getattr(self._db, "begin_row_locked", None) if row_locks else None
        if begin is not None:
            begin()
        else:
            self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _query(self, sql: str, params: Sequence = ()) -> list[sqlite3.Row]:
        return self._db.execute(sql, params).fetchall()

    def _stored_for(self, table: str, columns: str, tier: str, version: str, frame_ids: Sequence[str], noun: str):
        """Return {frame id: row of ``columns``} of one tier version's predictions; PoolError if any frame has none."""
        found = {
            row[0]: row
            for row in self._query(
                f"SELECT frame_id, {columns} FROM {table} WHERE tier=? AND version=?", (tier, version)
            )
        }
        missing = [f for f in frame_ids if f not in found]
        if missing:
            raise PoolError(
                f"{self.path}: no {tier} {version} {noun} for {len(missing)} frame(s), "
                f"e.g. {missing[0]}; run autolabel first"
            )
        return found

    def _missing_in(self, table: str, tier: str, version: str, frame_ids: Sequence[str]) -> list[str]:
        """Return the frames with no row of this tier version in ``table``."""
        have = {r[0] for r in self._query(f"SELECT frame_id FROM {table} WHERE tier=? AND version=?", (tier, version))}
        return [f for f in frame_ids if f not in have]
