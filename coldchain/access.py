"""Who may do what: roles, the principal behind a request, and the permission table."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from coldchain.errors import PermissionDeniedError


class Role(StrEnum):
    ADMIN = "admin"
    QA = "qa"
    LOGISTICS = "logistics"
    DRIVER = "driver"
    ERP = "erp"
    VIEWER = "viewer"


class Permission(StrEnum):
    READ = "read"
    REGISTER = "register"  # devices, shipments, lots, profiles
    ACKNOWLEDGE = "acknowledge"
    RESOLVE = "resolve"
    DISPOSITION = "disposition"  # close an alert with a QA decision, sign records
    ADMINISTER = "administer"  # tokens, users, contacts


_GRANTS: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset(Permission),
    Role.QA: frozenset({Permission.READ, Permission.ACKNOWLEDGE, Permission.RESOLVE, Permission.DISPOSITION}),
    Role.LOGISTICS: frozenset(
        {Permission.READ, Permission.REGISTER, Permission.ACKNOWLEDGE, Permission.RESOLVE}
    ),
    Role.DRIVER: frozenset({Permission.READ, Permission.ACKNOWLEDGE}),
    Role.ERP: frozenset({Permission.READ, Permission.REGISTER}),
    Role.VIEWER: frozenset({Permission.READ}),
}


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller: its organization (id and slug), role and a printable name."""

    org_id: int
    organization: str
    role: Role
    name: str

    def can(self, permission: Permission) -> bool:
        return permission in _GRANTS[self.role]

    def require(self, permission: Permission) -> None:
        if not self.can(permission):
            raise PermissionDeniedError(f"role {self.role.value!r} may not {permission.value}")
