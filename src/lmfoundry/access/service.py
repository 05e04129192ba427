"""Users, personal access tokens, projects and memberships."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from lmfoundry.access.audit import record
from lmfoundry.access.models import Principal, ProjectAccess, Role
from lmfoundry.access.secrets import TOKEN_PREFIX, hash_token, new_token
from lmfoundry.errors import Conflict, Forbidden, InvalidRequest, NotFound, Unauthorized
from lmfoundry.storage.db import Database
from lmfoundry.storage.models import Membership, Project, Token, User

NAME_PATTERN = re.compile(r"^[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?$")
ADMIN_NAME = "admin"


def check_name(kind: str, name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise InvalidRequest(
            f"Invalid {kind} name {name!r}: use 1-64 lowercase letters, digits and hyphens, "
            "starting and ending with a letter or digit (for example 'my-project').",
            param="name",
        )
    return name


@dataclass(frozen=True)
class Bootstrap:
    """What the first start created; `token` is set only when a new one was generated."""

    created: bool
    token: str | None


class AccessService:
    def __init__(
        self,
        db: Database,
        *,
        allow_self_service_projects: bool = False,
        flows_enabled_by_default: bool = False,
    ) -> None:
        self.db = db
        # LMFOUNDRY_ALLOW_SELF_SERVICE_PROJECTS: users who are not admins may create projects.
        self.allow_self_service_projects = allow_self_service_projects
        # LMFOUNDRY_FLOWS_ENABLED_BY_DEFAULT: new projects start with flows switched on.
        self.flows_enabled_by_default = flows_enabled_by_default

    # -- bootstrap ---------------------------------------------------------------------------

    def bootstrap(self, admin_token: str | None, default_project: str) -> Bootstrap:
        """Create the admin and the default project once; adopt `admin_token` if given."""
        with self.db.session() as s:
            admin = s.scalar(select(User).where(User.name == ADMIN_NAME))
            created = admin is None
            if admin is None:
                admin = User(name=ADMIN_NAME, is_admin=True)
                s.add(admin)
                s.flush()
            project = s.scalar(select(Project).where(Project.name == default_project))
            if project is None:
                # The admin's own project runs flows from the start (the README's tutorial
                # does); projects created later start with flows off.
                project = Project(
                    name=default_project, description="Created on first start.", flows_enabled=True
                )
                s.add(project)
                s.flush()
                s.add(Membership(project_id=project.id, user_id=admin.id, role=Role.owner))
            token: str | None = None
            if admin_token:
                if not admin_token.startswith(TOKEN_PREFIX) or len(admin_token) < 40:
                    raise InvalidRequest(
                        f"LMFOUNDRY_ADMIN_TOKEN must start with {TOKEN_PREFIX!r} and be at "
                        "least 40 characters long; generate one with `lmfoundry tokens new`."
                    )
                digest = hash_token(admin_token)
                if s.scalar(select(Token).where(Token.token_hash == digest)) is None:
                    s.add(self._token_row(admin.id, "LMFOUNDRY_ADMIN_TOKEN", admin_token))
            elif created:
                token = new_token()
                s.add(self._token_row(admin.id, "bootstrap", token))
            return Bootstrap(created=created, token=token)

    @staticmethod
    def _token_row(user_id: int, name: str, token: str) -> Token:
        return Token(user_id=user_id, name=name, token_hash=hash_token(token), prefix=token[:12])

    def admin_principal(self) -> Principal:
        with self.db.session() as s:
            admin = s.scalar(select(User).where(User.name == ADMIN_NAME))
            if admin is None:
                raise NotFound("No admin user yet; start the server once with `lmfoundry up`.")
            return Principal(user_id=admin.id, name=admin.name, is_admin=True)

    # -- authentication ----------------------------------------------------------------------

    def authenticate(self, token: str | None) -> Principal:
        if not token:
            raise Unauthorized(
                "Missing token: send `Authorization: Bearer lmf_pat_...` (see "
                "`lmfoundry login`; the first token is in $LMFOUNDRY_HOME/credentials)."
            )
        return self.authenticate_digest(hash_token(token))

    def authenticate_digest(self, digest: str) -> Principal:
        """The user of the token whose SHA-256 is `digest` (a studio session holds only the
        digest, so revoking the token ends its sessions too)."""
        with self.db.session() as s:
            row = s.execute(
                select(Token, User)
                .join(User, User.id == Token.user_id)
                .where(Token.token_hash == digest, Token.revoked_at.is_(None))
            ).first()
            if row is None:
                raise Unauthorized("Invalid or revoked token; log in again with a valid token.")
            _, user = row
            return Principal(user_id=user.id, name=user.name, is_admin=user.is_admin)

    # -- users and tokens --------------------------------------------------------------------

    def create_user(self, actor: Principal, name: str, is_admin: bool = False) -> tuple[str, str]:
        """Create a user and its first token; returns (name, token). Admins only."""
        if not actor.is_admin:
            raise Forbidden("Only an admin can create users.")
        check_name("user", name)
        with self.db.session() as s:
            if s.scalar(select(User).where(User.name == name)) is not None:
                raise Conflict(f"User {name!r} already exists.")
            user = User(name=name, is_admin=is_admin)
            s.add(user)
            s.flush()
            token = new_token()
            s.add(self._token_row(user.id, "initial", token))
            record(s, actor.name, None, "user.create", name, {"is_admin": is_admin})
        return name, token

    def list_users(self, actor: Principal) -> list[dict[str, object]]:
        if not actor.is_admin:
            raise Forbidden("Only an admin can list users.")
        with self.db.session() as s:
            users = s.scalars(select(User).order_by(User.id))
            return [
                {"name": u.name, "is_admin": u.is_admin, "created_at": u.created_at} for u in users
            ]

    def create_token(self, actor: Principal, name: str) -> str:
        token = new_token()
        with self.db.session() as s:
            s.add(self._token_row(actor.user_id, name, token))
            record(s, actor.name, None, "token.create", name, {})
        return token

    # -- projects ----------------------------------------------------------------------------

    def list_projects(self, actor: Principal) -> list[dict[str, object]]:
        with self.db.session() as s:
            if actor.is_admin:
                rows = s.execute(
                    select(Project, Membership.role)
                    .outerjoin(
                        Membership,
                        (Membership.project_id == Project.id)
                        & (Membership.user_id == actor.user_id),
                    )
                    .order_by(Project.name)
                ).all()
            else:
                rows = s.execute(
                    select(Project, Membership.role)
                    .join(Membership, Membership.project_id == Project.id)
                    .where(Membership.user_id == actor.user_id)
                    .order_by(Project.name)
                ).all()
            return [_project_view(p, role or Role.owner.value) for p, role in rows]

    def create_project(
        self, actor: Principal, name: str, description: str = ""
    ) -> dict[str, object]:
        """A new project with `actor` as its owner. Admins only, unless the operator set
        LMFOUNDRY_ALLOW_SELF_SERVICE_PROJECTS."""
        if not actor.is_admin and not self.allow_self_service_projects:
            raise Forbidden(
                "Only an admin can create projects on this server: ask an admin to create it "
                "and add you as a member (`lmfoundry projects add-member`), or ask the "
                "operator to set LMFOUNDRY_ALLOW_SELF_SERVICE_PROJECTS=true."
            )
        check_name("project", name)
        with self.db.session() as s:
            if s.scalar(select(Project).where(Project.name == name)) is not None:
                raise Conflict(f"Project {name!r} already exists; pick another name.")
            project = Project(
                name=name, description=description, flows_enabled=self.flows_enabled_by_default
            )
            s.add(project)
            s.flush()
            s.add(Membership(project_id=project.id, user_id=actor.user_id, role=Role.owner))
            record(
                s,
                actor.name,
                project.id,
                "project.create",
                name,
                {"flows_enabled": project.flows_enabled},
            )
            return _project_view(project, Role.owner.value)

    def set_flows_enabled(self, actor: Principal, project: str, enabled: bool) -> dict[str, object]:
        """Switch flows (tests, runs, deployed flows: code the project's members upload) on
        or off; owners and admins only."""
        with self.db.session() as s:
            try:
                access = self._access(s, actor, project, Role.owner)
            except Forbidden:
                raise Forbidden(
                    f"Only an owner of project {project!r} (or an admin) can switch flows on or "
                    "off; ask one to run `lmfoundry projects flows enable`."
                ) from None
            row = s.get(Project, access.project_id)
            if row is None:  # deleted since _access read it
                raise NotFound(f"Project {project!r} not found.")
            before = row.flows_enabled
            row.flows_enabled = enabled
            record(
                s,
                actor.name,
                access.project_id,
                "project.flows",
                project,
                {"flows_enabled": enabled, "previous": before},
            )
            return _project_view(row, access.role.value)

    def project_access(
        self, actor: Principal, project: str, needed: Role = Role.reader
    ) -> ProjectAccess:
        """The actor's role in `project`; 404 for non-members (names do not leak), 403 when
        the role is too low."""
        with self.db.session() as s:
            return self._access(s, actor, project, needed)

    def _access(self, s: Session, actor: Principal, project: str, needed: Role) -> ProjectAccess:
        row = s.execute(
            select(Project, Membership.role)
            .outerjoin(
                Membership,
                (Membership.project_id == Project.id) & (Membership.user_id == actor.user_id),
            )
            .where(Project.name == project)
        ).first()
        if row is None or (row[1] is None and not actor.is_admin):
            raise NotFound(f"Project {project!r} not found; `lmfoundry projects list` shows yours.")
        proj, role_name = row
        role = Role(role_name) if role_name else Role.owner  # admins act as owners
        if actor.is_admin:
            role = Role.owner
        if not role.allows(needed):
            raise Forbidden(
                f"Your role in project {project!r} is {role.value}; this needs "
                f"{needed.value} or higher. Ask an owner of the project to change your role."
            )
        return ProjectAccess(project_id=proj.id, project=proj.name, principal=actor, role=role)

    def list_members(self, actor: Principal, project: str) -> list[dict[str, object]]:
        access = self.project_access(actor, project, Role.reader)
        with self.db.session() as s:
            rows = s.execute(
                select(User.name, Membership.role, Membership.created_at)
                .join(User, User.id == Membership.user_id)
                .where(Membership.project_id == access.project_id)
                .order_by(User.name)
            ).all()
            return [{"user": n, "role": r, "created_at": c} for n, r, c in rows]

    def set_member(
        self, actor: Principal, project: str, user: str, role: Role
    ) -> dict[str, object]:
        with self.db.session() as s:
            access = self._access(s, actor, project, Role.owner)
            target = s.scalar(select(User).where(User.name == user))
            if target is None:
                raise NotFound(
                    f"User {user!r} not found; an admin creates users with "
                    "`lmfoundry users create NAME`."
                )
            member = s.scalar(
                select(Membership).where(
                    Membership.project_id == access.project_id, Membership.user_id == target.id
                )
            )
            before = member.role if member else None
            if member is None:
                member = Membership(project_id=access.project_id, user_id=target.id, role=role)
                s.add(member)
                s.flush()
            else:
                if before == Role.owner and role != Role.owner:
                    self._keep_an_owner(s, access.project_id, target.id)
                member.role = role
            record(
                s,
                actor.name,
                access.project_id,
                "member.set",
                user,
                {"role": role.value, "previous": before},
            )
            return {"user": user, "role": role.value, "created_at": member.created_at}

    def remove_member(self, actor: Principal, project: str, user: str) -> None:
        with self.db.session() as s:
            access = self._access(s, actor, project, Role.owner)
            row = s.execute(
                select(Membership)
                .join(User, User.id == Membership.user_id)
                .where(Membership.project_id == access.project_id, User.name == user)
            ).scalar()
            if row is None:
                raise NotFound(f"User {user!r} is not a member of project {project!r}.")
            if row.role == Role.owner:
                self._keep_an_owner(s, access.project_id, row.user_id)
            s.delete(row)
            record(s, actor.name, access.project_id, "member.remove", user, {"role": row.role})

    @staticmethod
    def _keep_an_owner(s: Session, project_id: int, leaving_user_id: int) -> None:
        owners = s.scalars(
            select(Membership.user_id).where(
                Membership.project_id == project_id, Membership.role == Role.owner
            )
        ).all()
        if set(owners) <= {leaving_user_id}:
            raise Conflict("A project needs at least one owner; make another member owner first.")


def _project_view(project: Project, role: str) -> dict[str, object]:
    return {
        "name": project.name,
        "description": project.description,
        "role": role,
        "flows_enabled": project.flows_enabled,
        "created_at": project.created_at,
    }


def write_credentials(home: Path, token: str, base_url: str) -> Path:
    """Store the CLI's token (mode 0600) so `lmfoundry` commands work right away."""
    import json
    import os

    home.mkdir(parents=True, exist_ok=True)
    path = home / "credentials"
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({"token": token, "url": base_url}, handle)
    os.replace(tmp, path)
    return path
