"""`alembic upgrade head` on an empty database builds exactly the models' schema (both dialects)."""

from __future__ import annotations

import subprocess
import sys

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

from alembic import command
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
            cwd=PROJECT_ROOT,
            check=True,
            env={**__import__("os").environ, "DATABASE_URL": url},
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


def test_upgrading_a_ledger_with_data_backfills_it(tmp_path, pg_database_factory):
    """An account with history at revision 0002 comes through the later migrations with its
    per-kind sequences, counters and usage rollup filled in, and the notice sweep's watermark at its
    last entry, on both databases."""
    from orcapulse_billing.ledger import check_invariants

    for url in (f"sqlite:///{tmp_path / 'old.db'}", pg_database_factory()):
        cfg = alembic_config(url)
        command.upgrade(cfg, "0002")
        engine = make_engine(url)
        with engine.begin() as conn:
            conn.execute(
                sa.text("INSERT INTO organization (id, name, created_at) VALUES (1, 'Old', CURRENT_TIMESTAMP)")
            )
            conn.execute(
                sa.text(
                    "INSERT INTO credit_account (id, organization_id, balance, lifetime_added, "
                    "lifetime_consumed, transaction_count, version, created_at, updated_at) "
                    "VALUES (1, 1, 48500, 50000, 1500, 3, 3, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                )
            )
            for seq, type_, source, amount, before, category in (
                (1, "bonus", "welcome", 50000, 0, None),
                (2, "usage", None, -1000, 50000, "sms"),
                (3, "usage", None, -500, 49000, None),
            ):
                conn.execute(
                    sa.text(
                        "INSERT INTO ledger_entry (account_id, seq, type, source, amount, balance_before, balance_after, "
                        "description, category, metadata, created_at) VALUES (1, :seq, :t, :s, :a, :b, :b + :a, 'old', "
                        ":c, '{}', CURRENT_TIMESTAMP)"
                    ),
                    {"seq": seq, "t": type_, "s": source, "a": amount, "b": before, "c": category},
                )
            conn.execute(
                sa.text(
                    "INSERT INTO billing_session (account_id, external_id, ledger_entry_id, operation, "
                    "cost_base, cost_llm, cost_stt, cost_tts, cost_total, created_at) "
                    "VALUES (1, 's1', 2, 'sms_twilio', 0, 0, 0, 0, 1000, CURRENT_TIMESTAMP)"
                )
            )
        engine.dispose()
        command.upgrade(cfg, "head")
        engine = make_engine(url)
        with engine.connect() as conn:
            assert check_invariants(conn, 1) == []
            assert conn.execute(sa.text("SELECT usage_count, topup_count FROM credit_account")).one() == (2, 1)
            # the notice sweep starts after the history the account had (0020)
            assert conn.execute(sa.text("SELECT account_id, judged_seq FROM notice_watermark")).all() == [(1, 3)]
        engine.dispose()
        assert _diff(url) == []
