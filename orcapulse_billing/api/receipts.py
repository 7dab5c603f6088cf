"""Receipts and credit notes (`/api/credits/receipts`), and the billing profile they are made out to
(`/api/organization/billing-profile`).

Owners and admins list and download the organization's documents (members get 403; another
organization's document is 404, as if it did not exist). Owners edit the billing profile; owners and
admins read it. Documents are issued by the payment flows (receipts.py), never through this API.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from .. import billing_profile, receipts
from ..auth import Principal, audit
from ..db import get_engine, writer
from ..models import Role
from ..money import fmt4
from .deps import DecimalRoute, client_ip, current_principal, owner_principal
from .errors import ApiError, ErrorBody, responses

router = APIRouter(tags=["receipts"], route_class=DecimalRoute)
READERS = (Role.owner.value, Role.admin.value)
FORBIDDEN = {403: {"model": ErrorBody, "description": "forbidden: only owners and admins see receipts"}}
ReceiptId = Path(..., ge=1, le=2_147_483_647, description="The document's id (`id` in GET /api/credits/receipts).")

# One line of text, the name not blank: the patterns validate_profile checks (billing_profile.py).
LINE = billing_profile.LINE_PATTERN
NOT_BLANK = billing_profile.NOT_BLANK_PATTERN


def reader_principal(principal: Principal = Depends(current_principal)) -> Principal:
    if principal.role not in READERS:
        raise ApiError(403, "forbidden", "only owners and admins of the organization see its receipts")
    return principal


# -- bodies -------------------------------------------------------------------------------------


def _line(limit: int, description: str) -> Any:
    return Field(max_length=limit, pattern=LINE, description=description)


class BillingProfileIn(BaseModel):
    """What receipts are made out to. Each field is one line of text (no control characters); leading
    and trailing spaces are dropped. Absent fields are saved empty; other fields are refused."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[
        str,
        Field(
            max_length=200,
            pattern=NOT_BLANK,
            description="The name receipts are made out to (a company or a person); not blank.",
            examples=["Acme Voice Ltd"],
        ),
    ]
    address_line1: Annotated[str, _line(200, "Street and number")] = ""
    address_line2: Annotated[str, _line(200, "Apartment, suite, building")] = ""
    city: Annotated[str, _line(100, "City")] = ""
    region: Annotated[str, _line(100, "State, province or region")] = ""
    postal_code: Annotated[str, _line(32, "Postal code")] = ""
    country: Annotated[str, _line(100, "Country")] = ""
    tax_id: Annotated[str, _line(64, "Tax or VAT number, printed on receipts when given")] = ""


class BillingProfileOut(BaseModel):
    name: str
    address_line1: str
    address_line2: str
    city: str
    region: str
    postal_code: str
    country: str
    tax_id: str
    updated_at: datetime | None = Field(
        description="When an owner last saved it; null: never (the name is the organization's)"
    )


Money = Annotated[str, Field(pattern=r"^-?\d+\.\d{4}$", examples=["100.0000"])]


class DocumentOut(BaseModel):
    id: int = Field(description="For GET /api/credits/receipts/{id}.pdf")
    kind: Literal["receipt", "credit_note"]
    number: str = Field(description="Gapless per deployment and kind: R-000001..., credit notes CN-000001...")
    refers_to: str | None = Field(description="A credit note's receipt number")
    ledger_entry_id: int | None = Field(description="The history entry it belongs to (the purchase, the refund)")
    description: str
    amount: Money = Field(description="Price paid (a credit note: refunded; negative when a refund failed), USD")
    bonus: Money = Field(description="Volume bonus credits added (a credit note: taken back)")
    credits: Money = Field(description="Credits added to the balance (a credit note: taken back)")
    currency: str
    payment_method: str = Field(description="As printed: card brand and last four, or the provider's checkout")
    provider: str
    provider_reference: str | None
    billing_name: str
    issued_at: datetime
    pdf_url: str


class Documents(BaseModel):
    receipts: list[DocumentOut]


def document_json(document: receipts.Document) -> DocumentOut:
    return DocumentOut(
        id=document.id,
        kind=document.kind,  # type: ignore[arg-type]
        number=document.display_number,
        refers_to=document.refers_to_number,
        ledger_entry_id=document.ledger_entry_id,
        description=document.description,
        amount=fmt4(document.amount),
        bonus=fmt4(document.bonus),
        credits=fmt4(document.amount + document.bonus),
        currency=document.currency.upper(),
        payment_method=document.payment_method,
        provider=document.provider,
        provider_reference=document.provider_reference,
        billing_name=document.billing.name,
        issued_at=document.issued_at,
        pdf_url=f"/api/credits/receipts/{document.id}.pdf",
    )


def profile_json(details: billing_profile.BillingDetails, updated_at: datetime | None) -> BillingProfileOut:
    return BillingProfileOut(**details.as_dict(), updated_at=updated_at)


# -- routes -------------------------------------------------------------------------------------


@router.get(
    "/api/credits/receipts",
    response_model=Documents,
    responses={**responses(400, 401), **FORBIDDEN},
    summary="Receipts and credit notes of the organization, newest first (owners and admins)",
    description="Every completed top-up has a receipt; a refund has a credit note referring to it. "
    "Documents never change once issued.",
)
def list_receipts(
    limit: int = Query(100, ge=1, le=500, description="At most this many, newest first"),
    kind: Literal["receipt", "credit_note"] | None = Query(None, description="Only receipts, or only credit notes"),
    before: int | None = Query(
        None,
        ge=1,
        le=2_147_483_647,
        description="The next page: the documents listed after this one (the `id` of the previous page's last)",
    ),
    principal: Principal = Depends(reader_principal),
) -> Documents:
    with get_engine().connect() as conn:
        found = receipts.list_documents(conn, principal.organization_id, limit=limit, kind=kind, before=before)
    return Documents(receipts=[document_json(d) for d in found])


@router.get(
    "/api/credits/receipts/{receipt_id}.pdf",
    response_class=Response,
    responses={
        200: {
            "description": "The PDF, the same bytes at every download",
            "content": {"application/pdf": {"schema": {"type": "string", "format": "binary"}}},
        },
        **responses(400, 401, 404),
        **FORBIDDEN,
    },
    summary="Download a receipt or credit note as PDF (owners and admins)",
)
def receipt_pdf(receipt_id: int = ReceiptId, principal: Principal = Depends(reader_principal)) -> Response:
    from ..receipt_pdf import render

    with get_engine().connect() as conn:
        document = receipts.get_document(conn, receipt_id, principal.organization_id)
    if document is None:
        raise ApiError(404, "not_found", "no such receipt in this organization")
    return Response(
        render(document),
        media_type="application/pdf",
        headers={
            "Content-Disposition": f'attachment; filename="{document.filename}"',
            "Cache-Control": "private, no-store",
        },
    )


@router.get(
    "/api/organization/billing-profile",
    response_model=BillingProfileOut,
    responses={**responses(400, 401), **FORBIDDEN},
    summary="The billing name and address receipts are made out to (owners and admins)",
)
def get_billing_profile(principal: Principal = Depends(reader_principal)) -> BillingProfileOut:
    with get_engine().connect() as conn:
        details, updated_at = billing_profile.get_profile(conn, principal.organization_id)
    return profile_json(details, updated_at)


@router.put(
    "/api/organization/billing-profile",
    response_model=BillingProfileOut,
    responses={
        **responses(400, 401),
        403: {"model": ErrorBody, "description": "forbidden: only owners edit the billing profile"},
    },
    summary="Set the billing name and address for receipts issued from now on (owners)",
    description="Receipts already issued keep the details they were issued with.",
)
def put_billing_profile(
    body: BillingProfileIn, request: Request, principal: Principal = Depends(owner_principal)
) -> BillingProfileOut:
    try:
        details = billing_profile.validate_profile(body.model_dump())
    except billing_profile.ProfileError as exc:
        raise ApiError(400, "invalid_request", exc.message) from None
    with writer(get_engine()).begin() as conn:
        updated_at = billing_profile.save_profile(conn, principal.organization_id, details, principal.user_id)
        audit(
            conn,
            "billing_profile_updated",
            organization_id=principal.organization_id,
            user_id=principal.user_id,
            ip=client_ip(request),
            name=details.name,
        )
    return profile_json(details, updated_at)
