"""What the benchmarks share: a throwaway PostgreSQL database, organizations in bulk, and a plain-text table."""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import sqlalchemy as sa

ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


@contextmanager
def temporary_postgres(prefix: str) -> Iterator[str]:
    """The URL of a fresh, empty database `<prefix>_<random>` (created through the admin URL from
    TEST_POSTGRES_URL), dropped WITH (FORCE) at the end, even on error."""
    admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        yield sa.engine.make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def print_table(header: list[str], body: list[list[str]]) -> None:
    """Columns padded to their widest cell; the first left-aligned, the others right-aligned."""
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def fmt(line: list[str]) -> str:
        return " | ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True))
        )

    print("\n" + fmt(header))
    print("-+-".join("-" * w for w in widths))
    for line in body:
        print(fmt(line))


@dataclass(frozen=True)
class BulkOrganizations:
    """What `bulk_organizations` made, each list in the organizations' order."""

    organization_ids: list[int]
    account_ids: list[int]
    api_keys: list[str]  # each owner's key, with usage:write
    member_ids: list[list[int]]  # each organization's member users


def bulk_organizations(
    url: str, label: str, count: int, welcome: Callable[[int], Decimal], members_per_org: int = 0
) -> BulkOrganizations:
    """`count` organizations in bulk, with the rows `accounts.create_organization`, `add_user` and
    `create_api_key` write (without their audit entries): an owner each with an API key that has
    `usage:write`, `members_per_org` members, and a welcome credit of `welcome(n)` for organization n,
    posted by the ledger (`post_batch`, with its grant). The users have no password that could sign in:
    the owners use their keys, the members whatever sessions the bench gives them."""
    from orcapulse_billing import accounts
    from orcapulse_billing.db import make_engine
    from orcapulse_billing.ledger import Ledger, PostedEntry, Posting
    from orcapulse_billing.models import (
        ApiKey,
        CreditAccount,
        CreditSource,
        EntryType,
        Membership,
        Organization,
        Role,
        User,
    )

    engine = make_engine(url)
    now = datetime.now(UTC)
    names = [f"{label} org {n}" for n in range(count)]
    owners = [f"owner-{n}@{label}.bench" for n in range(count)]
    members = [[f"member-{n}-{m}@{label}.bench" for m in range(members_per_org)] for n in range(count)]
    keys = [accounts.API_KEY_PREFIX + secrets.token_urlsafe(32) for _ in range(count)]
    try:
        with engine.begin() as conn:
            conn.execute(sa.insert(Organization), [{"name": name, "created_at": now} for name in names])
            org_of = dict(conn.execute(sa.select(Organization.name, Organization.id)).all())
            orgs = [org_of[name] for name in names]
            conn.execute(
                sa.insert(CreditAccount), [{"organization_id": o, "created_at": now, "updated_at": now} for o in orgs]
            )
            account_of = dict(conn.execute(sa.select(CreditAccount.organization_id, CreditAccount.id)).all())
            emails = owners + [email for mine in members for email in mine]
            conn.execute(sa.insert(User), [{"email": e, "password_hash": "unused", "created_at": now} for e in emails])
            user_of = dict(conn.execute(sa.select(User.email, User.id)).all())
            conn.execute(
                sa.insert(Membership),
                [
                    {"user_id": user_of[email], "organization_id": o, "role": role, "created_at": now}
                    for o, owner, mine in zip(orgs, owners, members, strict=True)
                    for email, role in [(owner, Role.owner.value), *((m, Role.member.value) for m in mine)]
                ],
            )
            conn.execute(
                sa.insert(ApiKey),
                [
                    {
                        "user_id": user_of[owner],
                        "organization_id": o,
                        "scopes": accounts.USAGE_WRITE,
                        "prefix": key[: len(accounts.API_KEY_PREFIX) + 6],
                        "key_hash": accounts.hash_api_key(key),
                        "created_at": now,
                    }
                    for o, owner, key in zip(orgs, owners, keys, strict=True)
                ],
            )
        posted = Ledger(engine, grace_limit=Decimal(5)).post_batch(
            [
                Posting(
                    account_of[o],
                    EntryType.bonus,
                    welcome(n),
                    accounts.WELCOME_DESCRIPTION,
                    source=CreditSource.welcome,
                    idempotency_key="welcome",
                )
                for n, o in enumerate(orgs)
            ]
        )
        refused = [p for p in posted if not isinstance(p, PostedEntry)]
        if refused:
            raise RuntimeError(f"welcome credits refused: {refused[0]!r}")
        return BulkOrganizations(
            orgs, [account_of[o] for o in orgs], keys, [[user_of[m] for m in mine] for mine in members]
        )
    finally:
        engine.dispose()
