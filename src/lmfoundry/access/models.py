"""Roles and the principal a request acts as."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from lmfoundry.errors import Forbidden


class Role(StrEnum):
    """`reader` reads (no keys); `developer` also creates, deletes and reads keys;
    `owner` also manages members."""

    reader = "reader"
    developer = "developer"
    owner = "owner"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def allows(self, needed: Role) -> bool:
        return self.rank >= needed.rank


_RANK = {Role.reader: 0, Role.developer: 1, Role.owner: 2}


@dataclass(frozen=True)
class Principal:
    user_id: int
    name: str
    is_admin: bool


@dataclass(frozen=True)
class ProjectAccess:
    """A principal's standing in one project, established by `AccessService.project_access`."""

    project_id: int
    project: str
    principal: Principal
    role: Role

    def can(self, needed: Role) -> bool:
        return self.role.allows(needed)

    def require(self, needed: Role, what: str) -> None:
        """403 naming the role needed, e.g. `require(Role.developer, "read keys")`."""
        if not self.can(needed):
            raise Forbidden(
                f"Your role in project {self.project!r} is {self.role.value}; "
                f"to {what} you need {needed.value} or higher."
            )
