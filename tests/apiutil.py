"""Test organizations for the API and page tests: an org with an owner, an admin and a member,
each with a password and an API key (owners' and admins' with `usage:write`, members' read only),
created through the real services."""

from __future__ import annotations

import uuid
from decimal import Decimal

from orcapulse_billing.accounts import ROLE_SCOPES, account_id_for, add_user, create_api_key, create_organization
from orcapulse_billing.ledger import Ledger, Posting, get_account
from orcapulse_billing.metering import SessionInfo, record_usage

PASSWORD = "a-long-test-password"


class Org:
    password = PASSWORD

    def __init__(self, engine, ledger: Ledger, *, roles=("owner", "admin", "member"), welcome=Decimal(0)):
        self.engine, self.ledger = engine, ledger
        tag = uuid.uuid4().hex[:10]
        self.org = create_organization(engine, ledger, f"Org {tag}", welcome_credit=welcome)
        self.id = self.org.id
        self.account_id = account_id_for(engine, self.id)
        self.emails, self.user_ids, self.keys = {}, {}, {}
        for role in roles:
            email = f"{role}-{tag}@example.test"
            user, _ = add_user(engine, self.org, email, role, PASSWORD)
            self.emails[role], self.user_ids[role] = email, user.id
            # the key a role's services would use: owners' and admins' report usage, members' read only
            self.keys[role] = create_api_key(engine, email, ROLE_SCOPES[role]).key

    def auth(self, role: str) -> dict:
        return {"Authorization": f"Bearer {self.keys[role]}"}

    def post(self, type: str, amount: str, *, category=None, description=None, created_at=None):
        return self.ledger.post(
            Posting(
                self.account_id,
                type,
                Decimal(amount),
                description or f"{type} {amount}",
                category=category,
                created_at=created_at,
            )
        )

    def session(self, session_id: str, minutes: str = "1"):
        return record_usage(
            self.ledger,
            self.id,
            operation="voice_pipeline",
            quantity=Decimal(minutes),
            status="completed",
            idempotency_key=f"session-{session_id}",
            markup_percent=Decimal(20),
            session=SessionInfo(id=session_id, agent_id="agent_test", agent_name="Test agent"),
        )

    def account(self):
        with self.engine.connect() as conn:
            return get_account(conn, account_id=self.account_id)
