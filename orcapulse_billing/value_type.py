"""`value_type`: a frozen dataclass to the type checker, a plain dataclass at run time.

A frozen dataclass's `__init__` sets every field through `object.__setattr__`, which makes it about five
times slower than a plain one (6 against 1.2 microseconds for 15 fields, measured on the dev box). The
ledger's and metering's value types (a posting, what it became, a price, a usage event) are made by the
thousand per batch, several per event, so that was about a tenth of the batch endpoint's Python time.
mypy still treats these classes as frozen (PEP 681, `frozen_default`): assigning to a field of one is a
type error, and `dataclasses.replace` is how a changed copy is made, as before. None of them was
hashable before either (each holds a dict).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

from typing_extensions import dataclass_transform

_T = TypeVar("_T")


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def value_type(cls: type[_T]) -> type[_T]:
    return dataclass(cls)
