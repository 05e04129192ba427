"""Projects and their members: creating projects, switching flows on or off, and who holds
which role. Who may act in a project is `AccessService.project_access`."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from lmfoundry.access.audit import record
from lmfoundry.access.models import MemberView, Principal, ProjectView, Role
from lmfoundry.access.service import AccessService, check_name
from lmfoundry.errors import Conflict, Forbidden, NotFound
from lmfoundry.storage.db import Database
from lmfoundry.storage.models import Membership, Project, User


class ProjectService:
    def __init__(
        self,
        db: Database,
        access: AccessService,
        *,
        allow_self_service_projects: bool = False,
        flows_enabled_by_default: bool = False,
    ) -> None:
        self.db = db
        self.access = access
        # LMFOUNDRY_ALLOW_SELF_SERVICE_PROJECTS: users who are not admins may create projects.
        self.allow_self_service_projects = allow_self_service_projects
        # LMFOUNDRY_FLOWS_ENABLED_BY_DEFAULT: new projects start with flows switched on.
        self.flows_enabled_by_default = flows_enabled_by_default

    def list_projects(self, actor: Principal) -> list[ProjectView]:
        with self.db.session() as s:
            if actor.is_admin:
                # every project, as the owner admins act as (as `access_in` grants),
                # whatever membership they may also have
                every = s.scalars(select(Project).order_by(Project.name)).all()
                return [_project_view(p, Role.owner.value) for p in every]
            rows = s.execute(
                select(Project, Membership.role)
                .join(Membership, Membership.project_id == Project.id)
                .where(Membership.user_id == actor.user_id)
                .order_by(Project.name)
            ).all()
            return [_project_view(p, role) for p, role in rows]

    def create_project(self, actor: Principal, name: str, description: str = "") -> ProjectView:
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

    def set_flows_enabled(self, actor: Principal, project: str, enabled: bool) -> ProjectView:
        """Switch flows (tests, runs, deployed flows: code the project's members upload) on
        or off; owners and admins only."""
        with self.db.session() as s:
            try:
                access = self.access.access_in(s, actor, project, Role.owner)
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

    def list_members(self, actor: Principal, project: str) -> list[MemberView]:
        access = self.access.project_access(actor, project, Role.reader)
        with self.db.session() as s:
            rows = s.execute(
                select(User.name, Membership.role, Membership.created_at)
                .join(User, User.id == Membership.user_id)
                .where(Membership.project_id == access.project_id)
                .order_by(User.name)
            ).all()
            return [MemberView(user=n, role=Role(r), created_at=c) for n, r, c in rows]

    def set_member(self, actor: Principal, project: str, user: str, role: Role) -> MemberView:
        with self.db.session() as s:
            access = self.access.access_in(s, actor, project, Role.owner)
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
            return MemberView(user=user, role=role, created_at=member.created_at)

    def remove_member(self, actor: Principal, project: str, user: str) -> None:
        with self.db.session() as s:
            access = self.access.access_in(s, actor, project, Role.owner)
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


def _project_view(project: Project, role: str) -> ProjectView:
    return ProjectView(
        name=project.name,
        description=project.description,
        role=Role(role),
        flows_enabled=project.flows_enabled,
        created_at=project.created_at,
    )
