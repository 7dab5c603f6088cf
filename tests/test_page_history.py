"""The history, finished against document 003: its order and date range (in history.py, on both
databases), and in Chromium the row detail (who and where), the date range and order in the URL and
the CSV export, one toast per purchase and per burst of usage, and the 30 s catch-up."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from orcapulse_billing.history import HistoryQuery, history_page, iter_history
from orcapulse_billing.ledger import Posting

# -- history.py: order and date range, against a plain reading of every entry ------------------


def test_history_pages_in_either_order_by_type_and_date_range(engine, ledger, new_account):
    account_id = new_account()
    day0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
    kinds = ["usage", "usage", "purchase", "usage", "refund", "bonus", "usage", "adjustment"]
    for n in range(41):
        kind = kinds[n % len(kinds)]
        amount = "-0.25" if kind in ("usage", "adjustment") else "1"
        # posting order and timestamps disagree now and then (a back-dated entry): seq is the order
        at = day0 + timedelta(hours=7 * n) - (timedelta(days=3) if n % 11 == 5 else timedelta(0))
        ledger.post(Posting(account_id, kind, Decimal(amount), f"entry {n}", created_at=at))
    with engine.connect() as conn:
        everything = list(iter_history(conn, account_id, HistoryQuery()))
        assert [i.seq for i in everything] == list(range(41, 0, -1))
        types = {"all": None, "topup": {"purchase", "bonus"}, "usage": {"usage"}, "refund": {"refund"}}
        ranges = [(None, None), (day0 + timedelta(days=2), day0 + timedelta(days=7)), (day0 + timedelta(days=20), None)]
        for type_, kinds_in in types.items():
            for start, end in ranges:
                for order in ("newest", "oldest"):
                    query = HistoryQuery(type_, start, end, order)
                    expected = [
                        i
                        for i in everything
                        if (kinds_in is None or i.type in kinds_in)
                        and (start is None or i.created_at >= start)
                        and (end is None or i.created_at < end)
                    ]
                    if order == "oldest":
                        expected.reverse()
                    assert [i.seq for i in iter_history(conn, account_id, query, batch=4)] == [i.seq for i in expected]
                    for size in (10, 25):
                        pages = -(-len(expected) // size) or 1
                        for n in range(1, pages + 2):  # one page past the end: empty
                            got = history_page(conn, account_id, query, page=n, page_size=size)
                            assert got.total == len(expected)
                            assert [i.seq for i in got.items] == [i.seq for i in expected[(n - 1) * size : n * size]], (
                                type_,
                                start,
                                order,
                                size,
                                n,
                            )


def test_history_query_refuses_an_unknown_order():
    with pytest.raises(ValueError, match="order"):
        HistoryQuery("all", order="sideways")
