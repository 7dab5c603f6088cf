"""Receipts and credit notes: issued in the transaction that credits a top-up (or takes a refund back),
numbered without gaps per deployment, immutable, rendered as a real PDF (opened here with pypdf),
downloaded by owners and admins, attached to the purchase email; the billing profile they are made out
to; the CLI. Through real parts: the REST API over ASGI, the Stripe sandbox, signed webhooks, SQLite and
PostgreSQL."""

from __future__ import annotations

import io
import time
import uuid

import pytest
import sqlalchemy as sa
from pypdf import PdfReader

from orcapulse_billing import receipts
from orcapulse_billing.ledger import check_invariants

from .apiutil import Org
from .test_notifications import smtp_server  # noqa: F401 (a fixture)
from .test_payments import _attach_test_card, _checkout, _event, _post_event, _session_object


def pdf_text(data: bytes) -> str:
    reader = PdfReader(io.BytesIO(data))
    return "\n".join(page.extract_text() for page in reader.pages)


def _buy_through_checkout(client, org: Org, package_id: str = "pkg_200", intent: str | None = None) -> str:
    session = _checkout(client, org, package_id=package_id)
    intent = intent or f"pi_{uuid.uuid4().hex[:16]}"
    obj = _session_object(client, org, session["session_id"], payment_status="paid", payment_intent=intent)
    assert _post_event(client, _event("checkout.session.completed", obj)).json()["outcome"] == "processed"
    return intent


def _documents(client, org: Org, role: str = "owner"):
    r = client.get("/api/credits/receipts", headers=org.auth(role))
    assert r.status_code == 200, r.text
    return r.json()["receipts"]


def _numbers(engine, kind: str = "receipt") -> list[int]:
    with engine.connect() as conn:
        return sorted(conn.execute(sa.text("SELECT number FROM receipt WHERE kind = :k"), {"k": kind}).scalars())


# -- a checkout's receipt, end to end ------------------------------------------------------------


def test_a_checkout_gets_one_receipt_downloadable_as_the_same_pdf_and_emailed(client, org, other):
    intent = _buy_through_checkout(client, org, "pkg_200")
    (doc,) = _documents(client, org)
    assert doc["kind"] == "receipt" and doc["number"].startswith("R-")
    assert (doc["amount"], doc["bonus"], doc["credits"], doc["currency"]) == ("200.0000", "4.0000", "204.0000", "USD")
    assert doc["provider_reference"] == intent and doc["payment_method"] == "Card via Stripe Checkout"
    assert doc["billing_name"] == org.org.name
    items = client.get("/api/credits/history", headers=org.auth("owner")).json()["items"]
    purchase = next(e for e in items if e["type"] == "purchase")
    assert doc["ledger_entry_id"] == purchase["id"]

    first = client.get(doc["pdf_url"], headers=org.auth("owner"))
    time.sleep(1.1)  # nothing of the clock gets in: a later second renders the same bytes
    again = client.get(doc["pdf_url"], headers=org.auth("admin"))
    assert first.status_code == again.status_code == 200
    assert first.headers["content-type"] == "application/pdf"
    assert f'filename="orcapulse-receipt-{doc["number"]}.pdf"' in first.headers["content-disposition"]
    assert first.content == again.content  # byte for byte
    text = pdf_text(first.content)
    for expected in (
        "Receipt\n",
        f"No. {doc['number']}",
        org.org.name,
        "Prepaid credits - $200 package",
        "Total paid $200.00 USD",
        "Card via Stripe Checkout",
        intent,
    ):
        assert expected in text, (expected, text)
    meta = PdfReader(io.BytesIO(first.content)).metadata
    assert meta.title == f"Receipt {doc['number']}"

    # members may not; another organization's receipt does not exist for them
    member = client.get(doc["pdf_url"], headers=org.auth("member"))
    assert member.status_code == 403 and member.json()["error"]["code"] == "forbidden"
    assert client.get("/api/credits/receipts", headers=org.auth("member")).status_code == 403
    assert client.get(doc["pdf_url"], headers=other.auth("owner")).status_code == 404
    assert client.get(doc["pdf_url"]).status_code == 401

    # the purchase email to the owners carries the very bytes of the download
    with org.engine.connect() as conn:
        mails = conn.execute(
            sa.text(
                "SELECT o.kind, o.to_address, o.subject, o.body, a.filename, a.content_type, a.content "
                "FROM email_outbox o JOIN email_attachment a ON a.email_id = o.id WHERE o.organization_id = :o"
            ),
            {"o": org.id},
        ).all()
    assert [(m.kind, m.to_address) for m in mails] == [("receipt", org.emails["owner"])]
    assert doc["number"] in mails[0].subject and "$200.00" in mails[0].body
    assert mails[0].content_type == "application/pdf" and mails[0].filename.endswith(f"{doc['number']}.pdf")
    assert bytes(mails[0].content) == first.content


def test_a_replayed_or_duplicated_completion_issues_no_second_receipt(client, org):
    session = _checkout(client, org, package_id="pkg_50")
    obj = _session_object(client, org, session["session_id"], payment_status="paid", payment_intent="pi_dup")
    event = _event("checkout.session.completed", obj)
    assert _post_event(client, event).json()["outcome"] == "processed"
    assert _post_event(client, event).json()["outcome"] == "replay"
    later = _event("checkout.session.async_payment_succeeded", obj)  # another event for the same payment
    assert _post_event(client, later).json()["outcome"] == "duplicate"
    assert len(_documents(client, org)) == 1


def test_a_quick_purchase_receipt_names_the_card_and_the_bonus(client, org):
    card = _attach_test_card(org, "4242424242424242")
    r = client.post(
        "/api/credits/quick-purchase",
        json={"package_id": "pkg_500", "payment_method_id": card},
        headers={**org.auth("owner"), "Idempotency-Key": uuid.uuid4().hex},
    )
    assert r.status_code == 200, r.text
    (doc,) = _documents(client, org)
    assert doc["payment_method"] == "Visa ending in 4242"
    assert (doc["amount"], doc["bonus"], doc["credits"]) == ("500.0000", "25.0000", "525.0000")
    assert doc["provider_reference"] == r.json()["entries"][0]["metadata"]["stripePaymentIntentId"]
    text = pdf_text(client.get(doc["pdf_url"], headers=org.auth("owner")).content)
    assert "Visa ending in 4242" in text and "Volume bonus: 25.00 credits" in text
    assert "Credits added to the balance 525.00 credits" in text
    with org.engine.connect() as conn:  # only brand and last four were kept
        row = conn.execute(sa.text("SELECT * FROM receipt WHERE id = :i"), {"i": doc["id"]}).one()._mapping
    assert row["payment_brand"] == "visa" and row["payment_last4"] == "4242"
    assert not any("4242424242424242" in str(v) for v in row.values())


def test_an_auto_recharge_charge_gets_its_receipt(client, org):
    """Auto-recharge charges the saved card through the same flow (mode `auto`)."""
    from orcapulse_billing.auth import Principal
    from orcapulse_billing.payments.flow import choose
    from orcapulse_billing.services import get_stripe_purchases

    _attach_test_card(org, "5555555555554444")
    purchases = get_stripe_purchases(org.engine)
    principal = Principal(org.user_ids["owner"], org.emails["owner"], org.id, "owner", "session")
    card = purchases.cards(org.id)[0]  # (localstripe calls every test card a Visa)
    assert card["last4"] == "4444"
    purchases.quick_purchase(
        principal,
        choose(purchases.settings, amount="20"),
        payment_method_id=card["provider_id"],
        request_key=uuid.uuid4().hex,
        ip=None,
        auto_recharge=True,
    )
    (doc,) = _documents(client, org)
    assert doc["description"] == "Prepaid credits - auto-recharge"
    assert doc["payment_method"] == receipts.card_text(card["brand"], "4444")
    assert doc["amount"] == "20.0000"


def test_a_lemon_squeezy_order_gets_its_receipt_and_its_refund_a_credit_note(client, org, lemon_sandbox):
    from .test_lemonsqueezy import _checkout as lemon_checkout
    from .test_lemonsqueezy import _order_event, _post

    created = lemon_checkout(client, org)
    order = str(uuid.uuid4().int % 10**9)
    paid = _order_event(lemon_sandbox, created["session_id"], org, order_id=order)
    assert _post(client, lemon_sandbox, paid).json()["outcome"] == "processed"
    assert _post(client, lemon_sandbox, paid).json()["outcome"] == "replay"
    (receipt,) = _documents(client, org)
    assert receipt["provider"] == "lemonsqueezy" and receipt["provider_reference"] == order
    assert receipt["payment_method"] == "Paid via Lemon Squeezy Checkout" and receipt["amount"] == "50.0000"
    refund = _order_event(
        lemon_sandbox, created["session_id"], org, order_id=order, event="order_refunded", refunded=5000
    )
    assert _post(client, lemon_sandbox, refund).json()["outcome"] == "processed"
    note, _ = _documents(client, org)
    assert note["kind"] == "credit_note" and note["refers_to"] == receipt["number"] and note["amount"] == "50.0000"
    text = pdf_text(client.get(note["pdf_url"], headers=org.auth("admin")).content)
    assert "Lemon Squeezy" in text and f"Refers to receipt {receipt['number']}" in text


# -- refunds: credit notes --------------------------------------------------------------------------


def test_a_refund_gets_a_credit_note_that_refers_to_the_receipt(client, org):
    intent = _buy_through_checkout(client, org, "pkg_500")  # 500 credits + 25 bonus
    refund = _event("charge.refunded", {"id": "ch_cn", "payment_intent": intent, "amount_refunded": 20000})
    assert _post_event(client, refund).json()["outcome"] == "processed"
    assert _post_event(client, refund).json()["outcome"] == "replay"
    note, receipt = _documents(client, org)
    assert note["kind"] == "credit_note" and note["number"].startswith("CN-")
    pages = [client.get("/api/credits/receipts?limit=1", headers=org.auth("owner")).json()["receipts"]]
    for _ in range(2):  # page by page, newest first
        last = pages[-1][-1]["id"]
        pages.append(
            client.get(f"/api/credits/receipts?limit=1&before={last}", headers=org.auth("owner")).json()["receipts"]
        )
    assert pages == [[note], [receipt], []]
    only = client.get("/api/credits/receipts?kind=receipt", headers=org.auth("owner")).json()["receipts"]
    assert only == [receipt]
    assert note["refers_to"] == receipt["number"]
    assert (note["amount"], note["bonus"], note["credits"]) == ("200.0000", "10.0000", "210.0000")
    items = client.get("/api/credits/history?type=refund", headers=org.auth("owner")).json()["items"]
    assert note["ledger_entry_id"] == next(
        e["id"] for e in items if e["source"] is None and "bonus" not in e["metadata"]
    )
    text = pdf_text(client.get(note["pdf_url"], headers=org.auth("owner")).content)
    assert "Credit note" in text and f"Refers to receipt {receipt['number']}" in text
    assert "Total refunded $200.00 USD" in text and "Volume bonus taken back: 10.00 credits" in text
    with org.engine.connect() as conn:
        kinds = conn.execute(
            sa.text("SELECT kind FROM email_outbox WHERE organization_id = :o ORDER BY id"), {"o": org.id}
        ).scalars()
        assert list(kinds) == ["receipt", "credit_note"]
    # a dispute issues no document
    dispute = _event(
        "charge.dispute.created",
        {"id": "dp_cn", "payment_intent": intent, "amount": 10000, "status": "needs_response", "charge": "ch_cn"},
    )
    assert _post_event(client, dispute).json()["outcome"] == "processed"
    assert len(_documents(client, org)) == 2


def test_a_failed_refund_gets_a_credit_note_that_cancels_it(client, org, app_ledger):
    from orcapulse_billing.payments.takebacks import refund_to

    _buy_through_checkout(client, org, "pkg_50")
    with org.engine.connect() as conn:
        row = conn.execute(sa.text("SELECT * FROM checkout_session WHERE organization_id = :o"), {"o": org.id}).one()
    for cents in (2000, 0):  # refunded $20, then the provider says the refund failed
        with app_ledger.transaction() as conn:
            refund_to(app_ledger, conn, row, cents, key="test-refund", metadata={}, authoritative=True)
    cancelled, refunded, receipt = _documents(client, org)
    assert refunded["amount"] == "20.0000" and cancelled["amount"] == "-20.0000"
    assert cancelled["refers_to"] == refunded["refers_to"] == receipt["number"]
    text = pdf_text(client.get(cancelled["pdf_url"], headers=org.auth("owner")).content)
    assert "Refund failed" in text and "Credits returned to the balance 20.00 credits" in text
    with org.engine.connect() as conn:
        check_invariants(conn, org.account_id)


# -- the billing profile -------------------------------------------------------------------------


PROFILE = {
    "name": "\u3000 Łódź Voice Sp. z o.o.  ",  # trimmed, also of an ideographic space
    "address_line1": "ul. Piotrkowska 1",
    "city": "Łódź",
    "postal_code": "90-001",
    "country": "Poland",
    "tax_id": "PL1234567890",
}


def test_owners_edit_the_billing_profile_and_old_receipts_keep_theirs(client, org):
    url = "/api/organization/billing-profile"
    default = client.get(url, headers=org.auth("admin")).json()
    assert default["name"] == org.org.name and default["updated_at"] is None and default["city"] == ""
    _buy_through_checkout(client, org, "pkg_50")
    (old,) = _documents(client, org)
    before = client.get(old["pdf_url"], headers=org.auth("owner")).content

    for role in ("admin", "member"):
        r = client.put(url, json=PROFILE, headers=org.auth(role))
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert client.get(url, headers=org.auth("member")).status_code == 403
    saved = client.put(url, json=PROFILE, headers=org.auth("owner"))
    assert saved.status_code == 200, saved.text
    assert saved.json()["name"] == "Łódź Voice Sp. z o.o." and saved.json()["updated_at"]
    assert client.get(url, headers=org.auth("owner")).json() == saved.json()

    # the receipt issued before keeps what it said, to the byte
    assert client.get(old["pdf_url"], headers=org.auth("owner")).content == before
    _buy_through_checkout(client, org, "pkg_50")
    new = _documents(client, org)[0]
    text = pdf_text(client.get(new["pdf_url"], headers=org.auth("owner")).content)
    for expected in ("Łódź Voice Sp. z o.o.", "ul. Piotrkowska 1", "90-001 Łódź", "Poland", "Tax ID: PL1234567890"):
        assert expected in text, (expected, text)
    assert org.org.name not in pdf_text(client.get(new["pdf_url"], headers=org.auth("owner")).content)
    with org.engine.connect() as conn:
        audit = conn.execute(
            sa.text("SELECT user_id FROM audit_log WHERE organization_id = :o AND action = 'billing_profile_updated'"),
            {"o": org.id},
        ).scalars()
        assert list(audit) == [org.user_ids["owner"]]


@pytest.mark.parametrize(
    "body",
    [
        {"name": "   "},
        {"name": "\u3000\ufeff\u00a0"},  # spaces of other scripts are spaces too
        {"address_line1": "no name"},
        {"name": "x" * 201},
        {"name": "Acme", "city": "two\nlines"},
        {"name": "Acme", "postal_code": "1" * 33},
        {"name": "Acme", "fax": "123"},
        {"name": 42},
        ["Acme"],
    ],
)
def test_a_bad_billing_profile_is_refused_and_writes_nothing(client, org, body):
    url = "/api/organization/billing-profile"
    assert client.put(url, json={"name": "Kept Ltd"}, headers=org.auth("owner")).status_code == 200
    r = client.put(url, json=body, headers=org.auth("owner"))
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request", r.text
    assert client.get(url, headers=org.auth("owner")).json()["name"] == "Kept Ltd"


# -- the command line ------------------------------------------------------------------------------


def test_the_cli_lists_and_writes_receipts_and_refuses_bad_input(client, org, tmp_path, capsys):
    from orcapulse_billing.cli import main

    _buy_through_checkout(client, org, "pkg_50")
    (doc,) = _documents(client, org)
    assert main(["receipts", str(org.id)]) == 0
    listed = capsys.readouterr().out
    assert doc["number"] in listed and "$50.00 USD" in listed and "Card via Stripe Checkout" in listed

    out = tmp_path / "receipt.pdf"
    assert main(["receipt", doc["number"], "--out", str(out)]) == 0
    assert out.read_bytes() == client.get(doc["pdf_url"], headers=org.auth("owner")).content
    assert main(["receipt", doc["number"]]) == 0
    shown = capsys.readouterr().out
    assert f"Receipt {doc['number']}" in shown and org.org.name in shown
    assert main(["outbox", "--limit", "500"]) == 0  # the purchase email, with its PDF
    assert f"attached: orcapulse-receipt-{doc['number']}.pdf ({out.stat().st_size:,} bytes)" in capsys.readouterr().out

    for argv in (
        ["receipt", "R-999999", "--out", str(tmp_path / "none.pdf")],
        ["receipt", "INV-1", "--out", str(tmp_path / "none.pdf")],
        ["receipt", doc["number"], "--out", str(tmp_path / "missing-dir" / "none.pdf")],
        ["receipt", doc["number"], "--out", str(tmp_path)],
        ["receipts", "no such organization"],
    ):
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("orcapulse-billing: error: ") and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["receipt.pdf"]  # nothing else written


def test_the_receipt_goes_out_over_smtp_as_a_pdf_attachment(engine, smtp_server):  # noqa: F811 (the fixture)
    """Over real SMTP on loopback: the purchase email's attachment is the receipt's PDF, byte for byte."""
    import dataclasses
    import email
    import email.policy
    from decimal import Decimal

    from orcapulse_billing.config import load_settings
    from orcapulse_billing.ledger import Ledger
    from orcapulse_billing.notifications import Notifier
    from orcapulse_billing.receipt_pdf import render
    from orcapulse_billing.services import notification_listeners

    from .test_notifications import _wait_for
    from .test_receipt_numbers import _complete_concurrently, _open_purchases

    controller, inbox = smtp_server
    settings = dataclasses.replace(
        load_settings(), smtp_host="127.0.0.1", smtp_port=controller.port, smtp_starttls=False
    )
    ledger = Ledger(engine, grace_limit=Decimal(5))
    for listener in notification_listeners(engine, Notifier(engine, settings)):  # as the app's ledger
        ledger.add_listener(listener)
    org = Org(engine, ledger, roles=("owner", "member"))
    _complete_concurrently(ledger, _open_purchases(engine, org, 1), deliveries=1, fail=lambda pid: False)
    with engine.connect() as conn:
        (document,) = receipts.list_documents(conn, org.id)

    def mine():
        return [m for m in inbox.messages if document.display_number in m[1] and org.org.name in m[1]]

    assert _wait_for(lambda: len(mine()) == 1)
    recipients, content = mine()[0]
    assert recipients == [org.emails["owner"]]  # owners only
    message = email.message_from_string(content, policy=email.policy.default)
    (attachment,) = list(message.iter_attachments())
    assert attachment.get_content_type() == "application/pdf" and attachment.get_filename() == document.filename
    assert attachment.get_content() == render(document)
    assert "Total paid $50.00 USD" in pdf_text(attachment.get_content())
