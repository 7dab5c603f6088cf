"""A hypothesis state machine over random postings, replays, conflicts and refusals.

A plain-Python model of the account runs beside the real ledger; after every step the database
must agree with the model and with itself (`balance == sum(amounts) == last balance_after`).
"""

from __future__ import annotations

import uuid
from decimal import Decimal

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from orcapulse_billing.accounts import account_id_for, create_organization
from orcapulse_billing.ledger import IdempotencyConflict, InsufficientCredits, Posting, check_invariants, get_account
from orcapulse_billing.money import to_units

from .conftest import GRACE

amounts = st.decimals(min_value=Decimal("0.00001"), max_value=Decimal("80"), places=5)


def test_ledger_state_machine(engine, ledger):
    floor = to_units(-GRACE)

    class LedgerMachine(RuleBasedStateMachine):
        @initialize()
        def open_account(self):
            org = create_organization(engine, ledger, f"sm-{uuid.uuid4().hex[:10]}", welcome_credit=Decimal(0))
            self.account_id = account_id_for(engine, org.id)
            self.balance = 0
            self.count = 0
            self.keyed: dict[str, Posting] = {}
            self.next_key = 0

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

        @rule(amount=amounts, keyed=st.booleans(), kind=st.sampled_from(["purchase", "bonus", "adjustment"]))
        def credit(self, amount, keyed, kind):
            self._post(Posting(self.account_id, kind, amount, f"{kind} {amount}", idempotency_key=self._key(keyed)))

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

    LedgerMachine.TestCase.settings = settings(
        max_examples=40, stateful_step_count=30, deadline=None, suppress_health_check=list(HealthCheck)
    )
    LedgerMachine.TestCase().runTest()
