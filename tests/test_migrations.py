"""`alembic upgrade head` on an empty database builds exactly the models' schema (both dialects)."""

from __future__ import annotations

import subprocess
import sys

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

from orcapulse_billing import models  # noqa: F401
from orcapulse_billing.config import PROJECT_ROOT
from orcapulse_billing.db import alembic_config, make_engine


def _fresh_url(kind, tmp_path, pg_database_factory):
    return f"sqlite:///{tmp_path / 'fresh.db'}" if kind == "sqlite" else pg_database_factory()


def _diff(url):
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), SQLModel.metadata)
    finally:
        engine.dispose()


def test_models_and_migrations_agree(tmp_path, pg_database_factory):
    for kind in ("sqlite", "postgres"):
        url = _fresh_url(kind, tmp_path, pg_database_factory)
        # the plain `alembic` command, as an operator would run it, reading DATABASE_URL
        subprocess.run(
            [sys.executable, "-m", "alembic", "upgrade", "head"],
            cwd=PROJECT_ROOT, check=True, env={**__import__("os").environ, "DATABASE_URL": url},
        )
        assert _diff(url) == [], f"models and migrations disagree on {kind}"
        engine = make_engine(url)
        with engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
        engine.dispose()
        assert {"organization", "app_user", "membership", "api_key", "credit_account", "ledger_entry"} <= tables


def test_downgrade_to_base_and_back(tmp_path):
    url = f"sqlite:///{tmp_path / 'roundtrip.db'}"
    cfg = alembic_config(url)
    command.upgrade(cfg, "head")
    command.downgrade(cfg, "base")
    engine = make_engine(url)
    with engine.connect() as conn:
        assert set(sa.inspect(conn).get_table_names()) == {"alembic_version"}
    engine.dispose()
    command.upgrade(cfg, "head")
    assert _diff(url) == []
