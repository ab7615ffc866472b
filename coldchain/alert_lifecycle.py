"""The alert lifecycle as a pure state machine: which transitions exist and what each needs."""

from __future__ import annotations

from coldchain.access import Permission
from coldchain.domain import AlertState
from coldchain.errors import ConflictError

# action -> (states it may start from, state it leads to, permission it needs)
TRANSITIONS: dict[str, tuple[frozenset[AlertState], AlertState, Permission]] = {
    "acknowledge": (frozenset({AlertState.OPEN}), AlertState.ACKNOWLEDGED, Permission.ACKNOWLEDGE),
    "resolve": (
        frozenset({AlertState.OPEN, AlertState.ACKNOWLEDGED}),
        AlertState.RESOLVED,
        Permission.RESOLVE,
    ),
    "reopen": (frozenset({AlertState.RESOLVED}), AlertState.OPEN, Permission.RESOLVE),
    "close": (frozenset({AlertState.RESOLVED}), AlertState.CLOSED, Permission.DISPOSITION),
    # The rules' own actions when late data changes what a series shows (no route offers them).
    "withdraw": (
        frozenset({AlertState.OPEN, AlertState.ACKNOWLEDGED, AlertState.RESOLVED}),
        AlertState.WITHDRAWN,
        Permission.RESOLVE,
    ),
    "reinstate": (frozenset({AlertState.WITHDRAWN}), AlertState.OPEN, Permission.RESOLVE),
}


def next_state(current: AlertState, action: str) -> AlertState:
    """The state `action` leads to from `current`, or a ConflictError saying why not."""
    try:
        sources, target, _ = TRANSITIONS[action]
    except KeyError:
        raise ConflictError(f"unknown alert action {action!r}") from None
    if current not in sources:
        allowed = ", ".join(sorted(s.value for s in sources))
        raise ConflictError(f"cannot {action} an alert that is {current.value} (only from {allowed})")
    return target


def permission_for(action: str) -> Permission:
    return TRANSITIONS[action][2]
