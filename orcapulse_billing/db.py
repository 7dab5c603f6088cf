"""Engines for the embedded default (SQLite file) and PostgreSQL, and migrations.

SQLite is opened in WAL mode with a busy timeout, and pysqlite's own transaction handling is
switched off so that SQLAlchemy's BEGIN is the real one: the ledger asks for `BEGIN IMMEDIATE`
(execution option `sqlite_immediate`) to take the write lock up front instead of failing on upgrade.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from pydantic_core import to_json
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from .config import PROJECT_ROOT, get_settings

_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def normalize_url(url: str) -> str:
    """`postgresql://` and `postgres://` mean the psycopg 3 driver here."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def make_engine(url: str) -> Engine:
    url = normalize_url(url)
    if url.startswith("sqlite"):
        db_path = sa.engine.make_url(url).database
        if db_path and db_path != ":memory:":
            Path(db_path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn, _record):  # pragma: no cover - exercised by every SQLite test
            dbapi_conn.isolation_level = None  # SQLAlchemy emits BEGIN itself (below)
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn):
            immediate = conn.get_execution_options().get("sqlite_immediate")
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    return sa.create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)


def writer(engine: Engine) -> Engine:
    """The same engine for a transaction that writes: `BEGIN IMMEDIATE` on SQLite, so it takes the write
    lock up front and waits its turn (busy timeout), instead of reading under a shared lock and then
    failing at once with "database is locked" when another writer holds the lock. Nothing on PostgreSQL."""
    if engine.dialect.name != "sqlite":
        return engine
    return engine.execution_options(sqlite_immediate=True)


def get_engine(url: str | None = None) -> Engine:
    """One engine per URL per process (the app's, the CLI's, or a test's)."""
    url = normalize_url(url or get_settings().database_url)
    with _engines_lock:
        if url not in _engines:
            _engines[url] = make_engine(url)
        return _engines[url]


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def dialect_insert(conn: Connection, table: sa.FromClause) -> postgresql.Insert | sqlite.Insert:
    """INSERT with this database's ON CONFLICT clauses (PostgreSQL's and SQLite's are alike)."""
    return (sqlite.insert if conn.dialect.name == "sqlite" else postgresql.insert)(table)


def one_of(conn: Connection, column: sa.ColumnElement[Any], values: Collection[Any]) -> sa.ColumnElement[bool]:
    """`column IN values`; on PostgreSQL `column = ANY(:array)`, one parameter whatever the count (one
    statement text, so the server can prepare it once)."""
    if conn.dialect.name == "postgresql":
        return column == sa.any_(sa.literal(list(values), postgresql.ARRAY(column.type)))
    return column.in_(list(values))


def insert_many(conn: Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """Inserts `rows` (mappings with the same keys, column names of `table`). On PostgreSQL in one statement
    whatever their number: the rows go as one JSON array that `json_populate_recordset` turns into rows of
    the table's own type (each value read as its column's type reads it): one execution and one plan,
    where executemany runs the INSERT once per row (the billing sessions of a batch of 1,000 usage
    reports: 150 executions and their Python), and one JSON text encoded in Rust, where an array per
    column costs psycopg a Python call per value. Elsewhere executemany, which SQLite runs in-process."""
    if not rows:
        return
    if conn.dialect.name != "postgresql":
        conn.execute(sa.insert(table), list(rows))
        return
    names = ", ".join(rows[0])
    conn.execute(
        sa.text(
            f"INSERT INTO {table.name} ({names}) SELECT {names} "
            f"FROM json_populate_recordset(NULL::{table.name}, CAST(:rows AS json))"
        ),
        {"rows": to_json(list(rows)).decode()},
    )


def json_keys(keys: Collection[str]) -> str:
    """Texts as one JSON array, for `json_array_elements_text(CAST(:keys AS json))` on PostgreSQL."""
    return to_json(list(keys)).decode()


def as_utc(value: datetime) -> datetime:
    """SQLite hands timestamps back naive; they were written as UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def at_or_now(now: datetime | None) -> datetime:
    """A caller's moment (tests and replays pass one) in UTC, or the current time."""
    return as_utc(now) if now is not None else datetime.now(UTC)


def alembic_config(url: str | None = None):
    from alembic.config import Config

    cfg = Config(str(PROJECT_ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(PROJECT_ROOT / "alembic"))
    cfg.set_main_option("sqlalchemy.url", normalize_url(url or get_settings().database_url).replace("%", "%%"))
    return cfg


def upgrade(url: str | None = None) -> None:
    """Apply every migration (`alembic upgrade head`)."""
    from alembic import command

    command.upgrade(alembic_config(url), "head")
