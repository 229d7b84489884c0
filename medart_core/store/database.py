"""Opening the store's database: a URL or a file path -> a SQLAlchemy engine, migrated to the latest schema.

SQLite (the default) runs in WAL mode, so readers never wait for the writer, with a busy timeout
so concurrent writers queue instead of failing; write transactions start with BEGIN IMMEDIATE,
taking the write lock up front (a deferred transaction that reads first can fail to upgrade its
lock). PostgreSQL needs nothing special: a save's guarded UPDATE locks the row it changes.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, OperationalError

from medart_core.errors import MedArtError

logger = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
WRITE = {"medart_write": True}  # execution option: this connection's transactions write
_MIGRATION_LOCK_ID = 0x6D656461  # PostgreSQL advisory lock held while a schema upgrade runs


def database_url(db: str | Path) -> str:
    """`--db` as a SQLAlchemy URL: a URL is kept (postgresql:// means psycopg 3), anything else is
    a SQLite file path."""
    text = str(db)
    if "://" not in text:
        path = Path(text).expanduser().resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path}"
    if text.startswith(("postgresql://", "postgres://")):
        text = "postgresql+psycopg://" + text.split("://", 1)[1]
    return text


def create_store_engine(db: str | Path) -> Engine:
    url = database_url(db)
    try:
        parsed = make_url(url)
    except ArgumentError as err:
        raise MedArtError(f"--db {db!r} is neither a file path nor a database URL ({err})") from err
    if parsed.get_backend_name() == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise MedArtError("the review store needs a file (or a server) to persist edits; give --db a file path")
        engine = create_engine(url, connect_args={"timeout": 60}, pool_size=16, max_overflow=16)
        _configure_sqlite(engine)
    elif parsed.get_backend_name() == "postgresql":
        engine = create_engine(url, pool_size=16, max_overflow=16, pool_pre_ping=True)
    else:
        raise MedArtError(f"unsupported database {parsed.get_backend_name()!r}: use a SQLite file path or a "
                          "postgresql+psycopg:// URL")
    return engine


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # the driver's implicit BEGIN is replaced by _begin below
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes; WAL keeps it consistent
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE" if connection.get_execution_options().get("medart_write") else "BEGIN")


def migrate(engine: Engine) -> None:
    """Upgrade the schema to the newest migration, under a lock, so that two processes opening a
    new database at once do not both create it."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    try:
        with engine.connect().execution_options(**WRITE) as connection, connection.begin():
            if connection.dialect.name == "postgresql":
                connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK_ID})")
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    except OperationalError as err:
        reason = str(err.orig).strip().splitlines()[0] if err.orig else str(err)
        raise MedArtError(f"cannot open the review store at {engine.url.render_as_string(hide_password=True)}: "
                          f"{reason}") from err
