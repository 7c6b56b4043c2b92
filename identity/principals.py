"""Who is asking: principals (persons and systems), their roles, agency and clearance.

An `Identity` is what every door (gateway, CLI, stream jobs) knows about the caller once a
token has been verified, whichever issued it: intelbus's own login or an external OIDC
provider. Entitlement (`identity.entitlement`) is computed from it and from nothing else.
"""
from __future__ import annotations

from dataclasses import dataclass, field

ROLES = ("command_center", "analyst", "integrator", "auditor", "operator")
KINDS = ("person", "system")
# classification levels, lowest first (DOMAIN.md section 3); a clearance reads its level and below
CLEARANCES = ("PUBLIC", "INTERNAL", "SECRET", "HIGHLY_SECRET")


class IdentityError(ValueError):
    """A principal or identity that is not well formed; str() names the field and why."""


def check_role(role: str) -> str:
    if role not in ROLES:
        raise IdentityError(f"unknown role {role!r} (known: {', '.join(ROLES)})")
    return role


def check_clearance(clearance: str) -> str:
    if clearance not in CLEARANCES:
        raise IdentityError(f"unknown clearance {clearance!r} (known: {', '.join(CLEARANCES)})")
    return clearance


def levels_up_to(clearance: str) -> tuple[str, ...]:
    """The classifications a clearance may read: 'SECRET' -> PUBLIC, INTERNAL, SECRET."""
    return CLEARANCES[: CLEARANCES.index(check_clearance(clearance)) + 1]


@dataclass(frozen=True)
class Identity:
    """An authenticated caller.

    name: the principal's login name (local) or the provider's subject/username (OIDC).
    region + branch: the agency. roles: what it may do. clearance: the highest
    classification it may read. issuer: 'intelbus' for local logins, the provider's issuer
    URL for OIDC tokens. token_id: the token's jti (for the audit log), if any.
    """

    name: str
    kind: str
    region: str
    branch: str
    roles: frozenset[str]
    clearance: str
    display_name: str = ""
    issuer: str = "intelbus"
    token_id: str = ""
    publish_regions: frozenset[str] = field(default_factory=frozenset)

    def has_role(self, role: str) -> bool:
        return role in self.roles

    @property
    def agency(self) -> str:
        return f"{self.region}/{self.branch}" if self.branch else self.region

    @property
    def role_text(self) -> str:
        return ",".join(sorted(self.roles))
