"""The credit packages on sale."""

from __future__ import annotations

from pydantic import BaseModel

from .common import Money


class Package(BaseModel):
    id: str
    name: str
    credits: Money
    price: Money
    bonus_credits: Money
    bonus_percent: str
    currency: str = "USD"


class CustomRange(BaseModel):
    min: Money
    max: Money
    currency: str = "USD"


class Packages(BaseModel):
    packages: list[Package]
    custom: CustomRange
