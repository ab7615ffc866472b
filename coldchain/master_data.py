"""The rules of master data, stated once: the single-record API and the bulk import both apply
them, so a product, site, lot or shipment is accepted or refused the same way whichever door it
comes through. Each check raises ValidationError naming the field.
"""

from __future__ import annotations

import re
from datetime import datetime

from coldchain.errors import ConflictError, PreconditionFailedError, ValidationError
from coldchain.gs1 import gtin_check_digit

# How a shipment or a leg travels, and where it is in its life.
MODES = frozenset({"road", "air", "sea", "rail", "courier", "multimodal"})
SHIPMENT_STATES = ("planned", "in_transit", "delivered", "cancelled")
# Activation energy for MKT: open interval, kJ/mol (ICH Q1A uses 83.144).
ACTIVATION_ENERGY_MAX = 1000.0
NAME_MAX = 200
ADDRESS_MAX = 500


# A serial as GS1 AI (21) writes it (1 to 20 characters of set 82), or a range of two: "S0001..S0400".
SERIAL_CHARS = r"!\"%&'()*+,\-./0-9:;<=>?A-Z_a-z"
_SERIAL_RE = re.compile(f"[{SERIAL_CHARS}]{{1,20}}")
SERIAL_ITEM_PATTERN = f"^[{SERIAL_CHARS}]{{1,41}}$"


def check_serial(item: str, *, field: str = "serials") -> str:
    ends = item.split("..")
    if len(ends) > 2 or not all(_SERIAL_RE.fullmatch(e) for e in ends):
        raise ValidationError(f"serial {item!r} is not 1-20 characters of GS1 AI (21) (or A..B)", field=field)
    return item


def check_gln(value: str, *, field: str = "gln") -> str:
    """A GS1 Global Location Number: 13 digits, the last the mod-10 check digit."""
    if len(value) != 13 or not value.isdigit():
        raise ValidationError(f"a GLN has 13 digits: {value}", field=field)
    if gtin_check_digit(value[:-1]) != int(value[-1]):
        raise ValidationError(f"bad GLN check digit: {value}", field=field)
    return value


def check_labelled_range(low: float | None, high: float | None, *, field: str = "range_max_c") -> None:
    """The labelled storage range of a product: the maximum above the minimum."""
    if low is not None and high is not None and low >= high:
        raise ValidationError("the labelled range's maximum must be above its minimum", field=field)


def check_activation_energy(value: float | None, *, field: str = "activation_energy_kj_mol") -> None:
    if value is not None and not 0 < value < ACTIVATION_ENERGY_MAX:
        raise ValidationError("activation energy must be between 0 and 1000 kJ/mol", field=field)


def check_mode(value: str | None, *, field: str = "mode") -> str | None:
    if value is None:
        return None
    mode = value.lower()
    if mode not in MODES:
        raise ValidationError(f"mode must be one of {', '.join(sorted(MODES))}", field=field)
    return mode


def check_times(
    departure: datetime | None, arrival: datetime | None, *, field: str = "planned_arrival"
) -> None:
    """An arrival, planned or actual, is not before the departure it goes with."""
    if departure is not None and arrival is not None and arrival < departure:
        raise ValidationError("the arrival is before the departure", field=field)


def check_window(start: datetime, end: datetime | None, *, field: str = "to") -> None:
    """An assignment window ends after it starts (an open end is allowed)."""
    if end is not None and end <= start:
        raise ValidationError("the window must end after it starts", field=field)


# A shipment (or leg) moves forward through its states; `cancelled` ends one not yet delivered.
_NEXT_STATES = {
    "planned": frozenset({"in_transit", "delivered", "cancelled"}),
    "in_transit": frozenset({"delivered", "cancelled"}),
    "delivered": frozenset(),
    "cancelled": frozenset(),
}


def check_state_change(old: str, new: str, *, what: str = "shipment") -> None:
    """Refuse a step back (delivered -> in transit) or out of an end state (ConflictError, 409)."""
    if old != new and new not in _NEXT_STATES[old]:
        raise ConflictError(f"a {what} that is {old} cannot become {new}")


Versions = frozenset[int] | None  # the versions an edit accepts; None: any (If-Match: *)


def check_version(what: str, current: int, accepted: Versions) -> None:
    """Optimistic concurrency: the edit was made against the current version, or it is refused."""
    if accepted is not None and current not in accepted:
        raise PreconditionFailedError(
            f"{what} was changed since it was read (it is now at version {current}); read it again",
            current=str(current),
        )
