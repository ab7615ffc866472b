"""Who may do what: roles, the principal behind a request, and the permission table.

Segregation of duties: `admin` runs users, keys and configuration but makes no QA decision
(disposition, budget credit, alarm-limit change) unless the same person also holds `qa`;
alarm limits are a QA matter, never `erp` or `logistics`. Machines (API keys) never sign.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from coldchain.errors import PermissionDeniedError, ValidationError


class Role(StrEnum):
    ADMIN = "admin"
    QA = "qa"
    LOGISTICS = "logistics"
    DRIVER = "driver"
    ERP = "erp"
    VIEWER = "viewer"


class Permission(StrEnum):
    READ = "read"
    REGISTER = "register"  # devices, shipments, lots, product defaults
    ACKNOWLEDGE = "acknowledge"
    RESOLVE = "resolve"
    DISPOSITION = "disposition"  # close an alert with a QA decision, credit budget, sign records
    CHANGE_PROFILE = "change_profile"  # alarm limits: QA's change control
    READ_AUDIT = "read_audit"  # the audit trail and signatures of every record
    ADMINISTER = "administer"  # users, API keys, contacts and routing
    # a device's broker password: those who install loggers, not the ERP (a machine account that
    # should never hold device secrets) nor drivers (who carry the devices)
    PROVISION = "provision"


class PrincipalKind(StrEnum):
    USER = "user"  # a person who logged in: may sign
    API_KEY = "api_key"  # a machine: may never sign


_GRANTS: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset(
        {
            Permission.READ,
            Permission.REGISTER,
            Permission.ACKNOWLEDGE,
            Permission.RESOLVE,
            Permission.READ_AUDIT,
            Permission.ADMINISTER,
            Permission.PROVISION,
        }
    ),
    Role.QA: frozenset(
        {
            Permission.READ,
            Permission.ACKNOWLEDGE,
            Permission.RESOLVE,
            Permission.DISPOSITION,
            Permission.CHANGE_PROFILE,
            Permission.READ_AUDIT,
        }
    ),
    Role.LOGISTICS: frozenset(
        {
            Permission.READ,
            Permission.REGISTER,
            Permission.ACKNOWLEDGE,
            Permission.RESOLVE,
            Permission.PROVISION,
        }
    ),
    Role.DRIVER: frozenset({Permission.READ, Permission.ACKNOWLEDGE}),
    Role.ERP: frozenset({Permission.READ, Permission.REGISTER}),
    Role.VIEWER: frozenset({Permission.READ}),
}


def grants(roles: frozenset[Role]) -> frozenset[Permission]:
    """Everything any of these roles allows (a person may hold several)."""
    out: frozenset[Permission] = frozenset()
    for role in roles:
        out |= _GRANTS[role]
    return out


def parse_roles(names: list[str] | tuple[str, ...]) -> frozenset[Role]:
    """Role names from input; unknown names are refused by name."""
    roles: set[Role] = set()
    for name in names:
        try:
            roles.add(Role(name))
        except ValueError:
            known = ", ".join(r.value for r in Role)
            raise ValidationError(f"unknown role {name!r} (known: {known})", field="roles") from None
    if not roles:
        raise ValidationError("at least one role is needed", field="roles")
    return frozenset(roles)


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller: its organization (id and slug), role(s) and a printable name.

    `name` is what the audit trail records as the actor (a key's name, a person's e-mail);
    `role` is the first role, `roles` all of them.
    """

    org_id: int
    organization: str
    role: Role
    name: str
    roles: frozenset[Role] = field(default=frozenset())
    kind: PrincipalKind = PrincipalKind.API_KEY
    user_id: int | None = None
    printed_name: str | None = None
    key_id: int | None = None

    def __post_init__(self) -> None:
        if self.role not in self.roles:
            object.__setattr__(self, "roles", self.roles | {self.role})

    @property
    def platform_admin(self) -> bool:
        """An admin of the operator's own organization (id 1) may create organizations."""
        return self.org_id == 1 and Role.ADMIN in self.roles

    def can(self, permission: Permission) -> bool:
        return permission in grants(self.roles)

    def require(self, permission: Permission) -> None:
        if not self.can(permission):
            held = ", ".join(sorted(r.value for r in self.roles))
            raise PermissionDeniedError(f"role {held!r} may not {permission.value}")
