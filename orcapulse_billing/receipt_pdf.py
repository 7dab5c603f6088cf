"""A receipt or credit note as a PDF (fpdf2), the same bytes every time it is rendered.

Everything printed comes from the document's own row (receipts.Document), which never changes after it
is issued. What fpdf2 would otherwise take from the clock or the output is fixed: the creation date is
the document's issue time, and the file identifier is derived from its kind and number. The font is
DejaVu Sans, shipped in orcapulse_billing/fonts/ (so names and addresses in any Latin, Greek or Cyrillic
script print, and the output does not depend on the machine's fonts), embedded as a subset.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from fpdf import FPDF
from fpdf.enums import XPos, YPos

from .receipts import CREDIT_NOTE, PROVIDER_NAMES, Document
from .receipts import fmt_credits as credits
from .receipts import fmt_price as money

FONTS = Path(__file__).parent / "fonts"
ISSUER = "OrcaPulse"
ISSUER_LINE = "Prepaid credits for AI voice and messaging"
FONT = "DejaVu"
INK, MUTED, RULE = (17, 24, 39), (100, 106, 120), (210, 214, 222)


def day(document: Document) -> str:
    v = document.issued_at
    return f"{v:%B} {v.day}, {v:%Y}"


class _Pdf(FPDF):
    def __init__(self, file_key: str):
        super().__init__(orientation="portrait", unit="mm", format="A4")
        self._file_id = hashlib.sha256(file_key.encode()).hexdigest()[:32].upper()

    def file_id(self) -> str:
        return f"<{self._file_id}><{self._file_id}>"

    def footer(self) -> None:
        self.set_y(-18)
        self.set_font(FONT, "", 8)
        self.set_text_color(*MUTED)
        self.cell(0, 5, "1 credit = 1 USD. Credits are prepaid and spent on calls, messages and AI usage.", align="C")


def render(document: Document) -> bytes:
    """The document's PDF."""
    pdf = _Pdf(f"orcapulse:{document.kind}:{document.number}")
    pdf.set_creation_date(document.issued_at)
    pdf.set_title(f"{document.title} {document.display_number}")
    pdf.set_author(ISSUER)
    pdf.set_creator("OrcaPulse Billing")
    pdf.set_subject(f"{document.title} {document.display_number} for {document.billing.name}")
    pdf.add_font(FONT, "", str(FONTS / "DejaVuSans.ttf"))
    pdf.add_font(FONT, "B", str(FONTS / "DejaVuSans-Bold.ttf"))
    pdf.set_auto_page_break(auto=True, margin=22)
    pdf.set_margins(20, 20, 20)
    pdf.add_page()
    _heading(pdf, document)
    _parties(pdf, document)
    if document.kind == CREDIT_NOTE:
        _credit_note_lines(pdf, document)
    else:
        _receipt_lines(pdf, document)
    _payment(pdf, document)
    return bytes(pdf.output())


def _heading(pdf: FPDF, document: Document) -> None:
    pdf.set_text_color(*INK)
    pdf.set_font(FONT, "B", 20)
    pdf.cell(85, 10, ISSUER, new_x=XPos.RIGHT, new_y=YPos.TOP)
    pdf.cell(0, 10, document.title, align="R", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font(FONT, "", 9)
    pdf.set_text_color(*MUTED)
    pdf.cell(85, 5, ISSUER_LINE, new_x=XPos.RIGHT, new_y=YPos.TOP)
    pdf.set_text_color(*INK)
    pdf.cell(0, 5, f"No. {document.display_number}", align="R", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.cell(85, 5, "", new_x=XPos.RIGHT, new_y=YPos.TOP)
    pdf.cell(0, 5, f"Date: {day(document)}", align="R", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    if document.refers_to_number:
        pdf.cell(85, 5, "", new_x=XPos.RIGHT, new_y=YPos.TOP)
        pdf.cell(0, 5, f"Refers to receipt {document.refers_to_number}", align="R")
        pdf.ln(5)
    pdf.ln(6)
    _rule(pdf)


def _parties(pdf: FPDF, document: Document) -> None:
    billing = document.billing
    pdf.ln(4)
    _label(pdf, "Billed to")
    pdf.set_font(FONT, "B", 11)
    pdf.multi_cell(0, 6, billing.name, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font(FONT, "", 10)
    for line in billing.address_lines():
        pdf.multi_cell(0, 5, line, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    if billing.tax_id:
        pdf.multi_cell(0, 5, f"Tax ID: {billing.tax_id}", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(6)


def _receipt_lines(pdf: FPDF, document: Document) -> None:
    _table_head(pdf, "Amount")
    _line(pdf, document.description, money(document.amount, document.currency))
    _line(pdf, f"Credits: {credits(document.amount)}", "")
    if document.bonus:
        _line(pdf, f"Volume bonus: {credits(document.bonus)} (free of charge)", money(0, document.currency))
    _rule(pdf)
    _line(pdf, "Total paid", money(document.amount, document.currency), bold=True)
    _line(pdf, "Credits added to the balance", credits(document.amount + document.bonus))
    pdf.ln(4)


def _credit_note_lines(pdf: FPDF, document: Document) -> None:
    _table_head(pdf, "Amount")
    _line(pdf, document.description, money(document.amount, document.currency))
    if document.amount < 0:  # a refund that failed: it cancels what an earlier note refunded
        if document.bonus:
            _line(pdf, f"Volume bonus returned: {credits(-document.bonus)}", money(0, document.currency))
        _rule(pdf)
        _line(pdf, "Refund cancelled (the money stayed with us)", money(-document.amount, document.currency), bold=True)
        _line(pdf, "Credits returned to the balance", credits(-(document.amount + document.bonus)))
    else:
        if document.bonus:
            _line(pdf, f"Volume bonus taken back: {credits(document.bonus)}", money(0, document.currency))
        _rule(pdf)
        _line(pdf, "Total refunded", money(document.amount, document.currency), bold=True)
        _line(pdf, "Credits taken back from the balance", credits(document.amount + document.bonus))
    pdf.ln(4)


def _payment(pdf: FPDF, document: Document) -> None:
    _label(pdf, "Refund" if document.kind == CREDIT_NOTE else "Payment")
    provider = PROVIDER_NAMES.get(document.provider, document.provider)
    rows = [
        ("Payment method", document.payment_method),
        ("Processed by", provider),
        ("Provider reference", document.provider_reference or "-"),
        ("Date", f"{day(document)}, {document.issued_at:%H:%M} UTC"),
    ]
    if document.reason:
        rows.insert(0, ("Reason", document.reason))
    for label, value in rows:
        pdf.set_font(FONT, "", 10)
        pdf.set_text_color(*MUTED)
        pdf.cell(45, 6, label, new_x=XPos.RIGHT, new_y=YPos.TOP)
        pdf.set_text_color(*INK)
        pdf.multi_cell(0, 6, value, new_x=XPos.LMARGIN, new_y=YPos.NEXT)


def _label(pdf: FPDF, text: str) -> None:
    pdf.set_font(FONT, "B", 9)
    pdf.set_text_color(*MUTED)
    pdf.cell(0, 6, text.upper(), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_text_color(*INK)


def _table_head(pdf: FPDF, right: str) -> None:
    _label(pdf, "Description")
    pdf.set_y(pdf.get_y() - 6)
    pdf.set_font(FONT, "B", 9)
    pdf.set_text_color(*MUTED)
    pdf.cell(0, 6, right.upper(), align="R", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_text_color(*INK)
    _rule(pdf)


def _line(pdf: FPDF, text: str, amount: str, *, bold: bool = False) -> None:
    pdf.set_font(FONT, "B" if bold else "", 10)
    y = pdf.get_y()
    pdf.multi_cell(120, 7, text, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    bottom = pdf.get_y()
    pdf.set_xy(140, y)
    pdf.cell(0, 7, amount, align="R", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_y(max(bottom, y + 7))


def _rule(pdf: FPDF) -> None:
    pdf.set_draw_color(*RULE)
    pdf.line(pdf.l_margin, pdf.get_y(), pdf.w - pdf.r_margin, pdf.get_y())
    pdf.ln(1)
