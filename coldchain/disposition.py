"""A lot's disposition, the pure part: the states, which decision may follow which, what each
decision is signed as, and how EPCIS (CBV 2.0) names it.

A lot starts `pending` (no QA decision yet). Quarantine holds it while QA investigates; release
and reject end the investigation. A rejected lot is final (it is destroyed or returned, never
sold). A released lot may be put back into quarantine (a recall, a late finding) but not
rejected straight away: it is held first, so the record shows why it was taken back.
"""

from __future__ import annotations

from enum import StrEnum

from coldchain.domain import Disposition
from coldchain.esignature import Meaning

__all__ = ["CBV_DISPOSITION", "MEANING", "LotState", "transition_refusal"]


class LotState(StrEnum):
    PENDING = "pending"
    QUARANTINE = "quarantine"
    RELEASE = "release"
    REJECT = "reject"


# decision -> the states it may follow
_ALLOWED_FROM: dict[Disposition, frozenset[LotState]] = {
    Disposition.QUARANTINE: frozenset({LotState.PENDING, LotState.RELEASE}),
    Disposition.RELEASE: frozenset({LotState.PENDING, LotState.QUARANTINE}),
    Disposition.REJECT: frozenset({LotState.PENDING, LotState.QUARANTINE}),
}

# What the signer means by each decision (§11.50(a)(3)): a release is signed as a release, a
# rejection as a rejection, a quarantine as taking responsibility for the hold.
MEANING: dict[Disposition, Meaning] = {
    Disposition.RELEASE: Meaning.RELEASE,
    Disposition.REJECT: Meaning.REJECTION,
    Disposition.QUARANTINE: Meaning.RESPONSIBILITY,
}

# CBV 2.0 disposition values: a quarantined lot cannot be sold for a reason CBV has no word for;
# a released lot conforms; a rejected one does not.
CBV_DISPOSITION: dict[LotState, str] = {
    LotState.QUARANTINE: "non_sellable_other",
    LotState.RELEASE: "conformant",
    LotState.REJECT: "non_conformant",
}


def transition_refusal(current: LotState, decision: Disposition) -> str | None:
    """Why `decision` may not follow `current` (None when it may)."""
    if current is LotState.REJECT:
        return "the lot was rejected; a rejection is final"
    if current.value == decision.value:
        return f"the lot is already in state {current.value!r}"
    if current not in _ALLOWED_FROM[decision]:
        return f"a lot in state {current.value!r} cannot go to {decision.value!r} (quarantine it first)"
    return None
