"""Alembic environment: the models' metadata, and the URL from DATABASE_URL unless one was set."""

from sqlmodel import SQLModel

from alembic import context
from orcapulse_billing import models  # noqa: F401  (registers the tables)
from orcapulse_billing.config import get_settings
from orcapulse_billing.db import make_engine, normalize_url

config = context.config
target_metadata = SQLModel.metadata


def _url() -> str:
    return config.get_main_option("sqlalchemy.url") or normalize_url(get_settings().database_url)


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = make_engine(_url())
    try:
        with engine.connect() as connection:
            if connection.dialect.name == "sqlite":
                # batch migrations rebuild tables that others reference; SQLite would check foreign
                # keys on each DROP. The pragma only works outside a transaction: on the raw connection.
                connection.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                render_as_batch=connection.dialect.name == "sqlite",
                compare_type=True,
            )
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
