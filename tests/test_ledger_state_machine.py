"""A hypothesis state machine over random postings, replays, conflicts and refusals, grants (promotional
with expiry, bonus, purchased through the payment flow), debits, refunds of a purchase and expiries.

A plain-Python model of the account and its grants runs beside the real ledger; after every step the
database must agree with the model (the balance, each grant's remainder, what each debit consumed)
and with itself (`check_invariants`: balance == sum(amounts) == last balance_after, balance == sum
of grant remainders - debt, every consumption adds up to its debit). Expiry advances a fake clock by
passing explicit instants to the expiry job.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from orcapulse_billing.accounts import account_id_for, add_user, create_organization
from orcapulse_billing.db import writer
from orcapulse_billing.grants import expire_credits
from orcapulse_billing.ledger import (
    IdempotencyConflict,
    InsufficientCredits,
    Posting,
    check_invariants,
    get_account,
    grant_priority,
)
from orcapulse_billing.models import CheckoutSession, CreditGrant, GrantConsumption
from orcapulse_billing.money import to_units
from orcapulse_billing.payments import takebacks
from orcapulse_billing.payments.flow import bonus_share, credit_checkout

from .conftest import GRACE

amounts = st.decimals(min_value=Decimal("0.00001"), max_value=Decimal("80"), places=5)


def test_ledger_state_machine(engine, ledger):
    floor = to_units(-GRACE)

    class LedgerMachine(RuleBasedStateMachine):
        @initialize()
        def open_account(self):
            org = create_organization(engine, ledger, f"sm-{uuid.uuid4().hex[:10]}", welcome_credit=Decimal(0))
            self.org_id = org.id
            self.user_id = add_user(engine, org, f"sm-{uuid.uuid4().hex[:10]}@example.test", "owner", "x" * 12)[0].id
            self.account_id = account_id_for(engine, org.id)
            self.balance = 0
            self.count = 0
            self.keyed: dict[str, Posting] = {}
            self.next_key = 0
            self.now = datetime.now(UTC).replace(microsecond=0)  # the fake clock of the expiry job
            self.grants: list[dict] = []  # the model's grants, in creation order
            self.purchases: list[dict] = []  # {"id", "amount", "bonus", "refunded"}

        # -- the model of grants --------------------------------------------------------------

        def _credited(self, entry, units: int, source: str, expires_at=None, cs=None):
            """A credit of `units` was posted (balance already moved): its grant pays debt first."""
            grant_id = self._grant_id(entry.id)
            self.grants.append(
                {
                    "id": grant_id,
                    "priority": grant_priority(source),
                    "expires_at": expires_at,
                    "cs": cs,
                    "remaining": max(0, min(units, self.balance)),
                    "expired": False,
                }
            )

        def _debited(self, entry, units: int, *, cs=None, only=None):
            """A debit of -units was posted: the model's burn order, checked against what it consumed."""
            order = sorted(
                (g for g in self.grants if g["remaining"] > 0 and (only is None or g["id"] == only)),
                key=lambda g: (
                    0 if cs is not None and g["cs"] == cs else 1,
                    g["priority"],
                    g["expires_at"] is None,
                    g["expires_at"] or self.now,
                    g["id"],
                ),
            )
            expected, need = [], -units
            for g in order:
                take = min(g["remaining"], need)
                if take <= 0:
                    break
                expected.append((g["id"], take))
                g["remaining"] -= take
                need -= take
            with engine.connect() as conn:
                got = conn.execute(
                    sa.select(GrantConsumption.grant_id, GrantConsumption.amount).where(
                        GrantConsumption.entry_id == entry.id
                    )
                ).all()
            assert sorted(tuple(r) for r in got) == sorted(expected)

        @staticmethod
        def _grant_id(entry_id: int) -> int:
            with engine.connect() as conn:
                return conn.execute(sa.select(CreditGrant.id).where(CreditGrant.entry_id == entry_id)).scalar_one()

        def _key(self, keyed: bool) -> str | None:
            # deterministic keys (hypothesis replays must draw the same data)
            self.next_key += 1
            return f"k{self.next_key}" if keyed else None

        def _post(self, posting: Posting):
            units = to_units(posting.amount)
            if units == 0:
                return
            if units < 0 and self.balance + units < floor:
                try:
                    ledger.post(posting)
                except InsufficientCredits:
                    return
                raise AssertionError("a debit past the floor was accepted")
            entry = ledger.post(posting)
            assert not entry.replayed
            assert entry.amount_units == units and entry.balance_before_units == self.balance
            self.balance += units
            self.count += 1
            if posting.idempotency_key:
                self.keyed[posting.idempotency_key] = posting
            if units > 0:
                self._credited(entry, units, entry.source, posting.expires_at)
            else:
                self._debited(entry, units)

        @rule(amount=amounts, keyed=st.booleans(), kind=st.sampled_from(["purchase", "bonus", "adjustment"]))
        def credit(self, amount, keyed, kind):
            self._post(Posting(self.account_id, kind, amount, f"{kind} {amount}", idempotency_key=self._key(keyed)))

        @rule(amount=amounts, days=st.integers(min_value=1, max_value=30), expiring=st.booleans())
        def promotional(self, amount, days, expiring):
            expires = self.now + timedelta(days=days) if expiring else None
            self._post(
                Posting(
                    self.account_id,
                    "adjustment",
                    amount,
                    f"promotional {amount}",
                    source="promotional",
                    expires_at=expires,
                    idempotency_key=self._key(True),
                )
            )

        @rule(credits=st.integers(min_value=1, max_value=500_000), bonus=st.integers(min_value=0, max_value=50_000))
        def purchase(self, credits, bonus):
            """A purchase through the payment flow: its credit and bonus grants remember it."""
            with writer(engine).begin() as conn:
                row_id = conn.execute(
                    sa.insert(CheckoutSession)
                    .values(
                        organization_id=self.org_id,
                        user_id=self.user_id,
                        provider="stripe",
                        provider_id=f"cs_{uuid.uuid4().hex}",
                        mode="payment",
                        amount=credits,
                        bonus=bonus,
                        status="open",
                        created_at=self.now,
                    )
                    .returning(CheckoutSession.id)
                ).scalar()
            with ledger.transaction() as conn:
                entries = credit_checkout(
                    ledger, conn, takebacks.lock_purchase(conn, row_id), provider_reference=None, metadata={}
                )
            assert entries is not None and [e.amount_units for e in entries] == [u for u in (credits, bonus) if u]
            for entry in entries:
                self.balance += entry.amount_units
                self.count += 1
                self._credited(entry, entry.amount_units, entry.source, cs=row_id)
            self.purchases.append({"id": row_id, "amount": credits, "bonus": bonus, "refunded": 0})

        @precondition(lambda self: self.purchases)
        @rule(data=st.data())
        def refund(self, data):
            """A refund up to a new running total (in cents): its credits and bonus share go back, taken
            from the purchase's own grants first."""
            purchase = data.draw(st.sampled_from(self.purchases))
            cents = data.draw(st.integers(min_value=purchase["refunded"] // 100, max_value=purchase["amount"] // 100))
            with engine.connect() as conn:
                row = conn.execute(sa.select(CheckoutSession).where(CheckoutSession.id == purchase["id"])).one()
            target = min(cents * 100, purchase["amount"])
            delta = target - purchase["refunded"]
            bonus = bonus_share(row, target) - bonus_share(row, purchase["refunded"])
            with ledger.transaction() as conn:
                row = takebacks.lock_purchase(conn, purchase["id"])
                takebacks.refund_to(ledger, conn, row, cents, key=f"re-{purchase['id']}", metadata={})
                posted = conn.info.get("ledger_posted", [])
            if delta <= 0:
                return
            purchase["refunded"] = target
            assert [e.amount_units for e in posted] == [-u for u in (delta, bonus) if u]
            for entry in posted:
                self.balance += entry.amount_units
                self.count += 1
                self._debited(entry, entry.amount_units, cs=purchase["id"])

        @rule(days=st.integers(min_value=1, max_value=20))
        def time_passes(self, days):
            """The expiry job runs `days` later: every expired grant's remainder is posted, once."""
            self.now += timedelta(days=days)
            expire_credits(engine, ledger, now=self.now)
            expire_credits(engine, ledger, now=self.now)  # a rerun posts nothing
            for g in self.grants:
                if g["expires_at"] is not None and g["expires_at"] <= self.now and not g["expired"]:
                    g["expired"] = True
                    if g["remaining"]:
                        self.balance -= g["remaining"]
                        self.count += 1
                        g["remaining"] = 0

        @rule(amount=amounts, keyed=st.booleans())
        def debit(self, amount, keyed):
            self._post(
                Posting(
                    self.account_id,
                    "usage",
                    -amount,
                    f"usage {amount}",
                    category="sms",
                    idempotency_key=self._key(keyed),
                )
            )

        @precondition(lambda self: self.keyed)
        @rule(data=st.data())
        def replay(self, data):
            key = data.draw(st.sampled_from(sorted(self.keyed)))
            entry = ledger.post(self.keyed[key])
            assert entry.replayed and entry.idempotency_key == key

        @precondition(lambda self: self.keyed)
        @rule(data=st.data())
        def conflicting_replay(self, data):
            key = data.draw(st.sampled_from(sorted(self.keyed)))
            original = self.keyed[key]
            bigger = Decimal(original.amount) + Decimal("0.0001").copy_sign(Decimal(original.amount))
            changed = Posting(
                original.account_id,
                original.type,
                bigger,
                original.description,
                category=original.category,
                idempotency_key=key,
            )
            try:
                ledger.post(changed)
            except IdempotencyConflict:
                return
            raise AssertionError("a reused key with other parameters was accepted")

        @invariant()
        def database_agrees_with_model(self):
            with engine.connect() as conn:
                acct = get_account(conn, account_id=self.account_id)
                assert (acct.balance_units, acct.transaction_count) == (self.balance, self.count)
                assert check_invariants(conn, self.account_id) == []
                remainders = dict(
                    conn.execute(
                        sa.select(CreditGrant.id, CreditGrant.remaining).where(
                            CreditGrant.account_id == self.account_id
                        )
                    ).all()
                )
                assert remainders == {g["id"]: g["remaining"] for g in self.grants}

    LedgerMachine.TestCase.settings = settings(
        max_examples=40, stateful_step_count=30, deadline=None, suppress_health_check=list(HealthCheck)
    )
    LedgerMachine.TestCase().runTest()
