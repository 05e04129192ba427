"""Users, personal access tokens, and who may act in which project (`project_access`).
Projects and their members are `access/projects.py`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from lmfoundry.access.audit import record
from lmfoundry.access.models import (
    NewToken,
    NewUser,
    Principal,
    ProjectAccess,
    Role,
    TokenScope,
    TokenView,
    UserView,
)
from lmfoundry.access.secrets import TOKEN_PREFIX, hash_token, new_token
from lmfoundry.errors import Conflict, Forbidden, InvalidRequest, NotFound, Unauthorized
from lmfoundry.storage.db import Database
from lmfoundry.storage.models import Membership, Project, Token, User

NAME_PATTERN = re.compile(r"^[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?$")
ADMIN_NAME = "admin"
DEFAULT_TOKEN_TTL_DAYS = 90
# A token's last_used_at is written when it is this old, not on every request (a write per
# request would make every management call wait on SQLite's single writer).
LAST_USED_RESOLUTION = timedelta(minutes=1)


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
        token_ttl_days: int = DEFAULT_TOKEN_TTL_DAYS,
    ) -> None:
        self.db = db
        # LMFOUNDRY_TOKEN_TTL_DAYS: how long new tokens stay valid unless told otherwise.
        self.token_ttl_days = token_ttl_days

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
                    # The operator's token lives as long as the environment sets it (no
                    # expiry); `lmfoundry tokens revoke LMFOUNDRY_ADMIN_TOKEN` ends it.
                    s.add(self._token_row(admin.id, "LMFOUNDRY_ADMIN_TOKEN", admin_token, None))
            elif created:
                token = new_token()
                s.add(self._token_row(admin.id, "bootstrap", token, self._expiry(None)))
            return Bootstrap(created=created, token=token)

    @staticmethod
    def _token_row(user_id: int, name: str, token: str, expires_at: datetime | None) -> Token:
        return Token(
            user_id=user_id,
            name=name,
            token_hash=hash_token(token),
            prefix=token[:12],
            expires_at=expires_at,
        )

    def _expiry(self, days: int | None) -> datetime:
        return datetime.now(UTC) + timedelta(days=days or self.token_ttl_days)

    def admin_principal(self) -> Principal:
        with self.db.session() as s:
            admin = s.scalar(select(User).where(User.name == ADMIN_NAME))
            if admin is None:
                raise NotFound("No admin user yet; start the server once with `lmfoundry up`.")
            return Principal(user_id=admin.id, name=admin.name, is_admin=True)

    # -- authentication ----------------------------------------------------------------------

    def authenticate(self, token: str | None, scope: TokenScope = TokenScope.all) -> Principal:
        """The token's user. `scope` is what the caller asks to do: a metrics-only token
        opens `TokenScope.metrics` (GET /metrics) and nothing else."""
        if not token:
            raise Unauthorized(
                "Missing token: send `Authorization: Bearer lmf_pat_...` (see "
                "`lmfoundry login`; the first token is in $LMFOUNDRY_HOME/credentials)."
            )
        return self.authenticate_digest(hash_token(token), scope)

    def authenticate_digest(self, digest: str, scope: TokenScope = TokenScope.all) -> Principal:
        """The user of the token whose SHA-256 is `digest`. A studio session holds only the
        digest, and this reads the token and its user on every request (no cache), so a
        revoked or expired token, a disabled or deleted user, ends its sessions at once in
        every server process sharing the database."""
        now = datetime.now(UTC)
        with self.db.session() as s:
            row = s.execute(
                select(Token, User)
                .join(User, User.id == Token.user_id)
                .where(Token.token_hash == digest)
            ).first()
            if row is None:
                # unknown, or its user was deleted (which deletes the user's tokens)
                raise Unauthorized(
                    "Invalid or revoked token; check it, or sign in with another one "
                    "(`lmfoundry login`)."
                )
            token, user = row
            if token.revoked_at is not None:
                raise Unauthorized(
                    f"Token {token.name!r} ({token.prefix}...) was revoked on "
                    f"{token.revoked_at:%Y-%m-%d %H:%M} UTC; {_NEW_TOKEN_HINT}"
                )
            if token.expires_at is not None and token.expires_at <= now:
                raise Unauthorized(
                    f"Token {token.name!r} ({token.prefix}...) expired on "
                    f"{token.expires_at:%Y-%m-%d %H:%M} UTC; {_NEW_TOKEN_HINT}"
                )
            if user.disabled_at is not None:
                raise Unauthorized(
                    f"User {user.name!r} is disabled; ask an admin to enable it again "
                    f"(`lmfoundry users enable {user.name}`)."
                )
            if token.scope != TokenScope.all and token.scope != scope:
                raise Forbidden(
                    f"Token {token.name!r} ({token.prefix}...) is a {token.scope}-only token: "
                    "it reads GET /metrics and nothing else; use a token made without "
                    "--metrics (`lmfoundry tokens create NAME`)."
                )
            if token.last_used_at is None or token.last_used_at <= now - LAST_USED_RESOLUTION:
                token.last_used_at = now
            return Principal(
                user_id=user.id,
                name=user.name,
                is_admin=user.is_admin,
                scope=TokenScope(token.scope),
            )

    # -- users and tokens --------------------------------------------------------------------

    def create_user(self, actor: Principal, name: str, is_admin: bool = False) -> NewUser:
        """Create a user and their first token (shown this once). Admins only."""
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
            s.add(self._token_row(user.id, "initial", token, self._expiry(None)))
            record(s, actor.name, None, "user.create", name, {"is_admin": is_admin})
        return NewUser(name=name, token=token)

    def list_users(self, actor: Principal) -> list[UserView]:
        if not actor.is_admin:
            raise Forbidden("Only an admin can list users.")
        with self.db.session() as s:
            return [_user_view(u) for u in s.scalars(select(User).order_by(User.id))]

    def set_user_disabled(self, actor: Principal, name: str, disabled: bool) -> UserView:
        """Disable a user (none of their tokens or sessions work, at once) or enable them
        again. Admins only; never yourself or the last enabled admin."""
        verb = "disable" if disabled else "enable"
        if not actor.is_admin:
            raise Forbidden(f"Only an admin can {verb} users.")
        with self.db.session() as s:
            user = _find_user(s, name)
            if disabled:
                if user.id == actor.user_id:
                    raise Conflict("You cannot disable yourself; another admin can.")
                if user.is_admin:
                    _keep_an_admin(s, user.id, "disable")
            before = user.disabled_at
            if disabled and before is None:
                user.disabled_at = datetime.now(UTC)
            elif not disabled:
                user.disabled_at = None
            record(s, actor.name, None, f"user.{verb}", name, {"was_disabled": before is not None})
            return _user_view(user)

    def delete_user(self, actor: Principal, name: str) -> None:
        """Delete a user with their tokens and memberships (their sessions end at once); the
        audit log keeps what they did, under their name. Admins only; never yourself, the
        last enabled admin, or a project's only owner."""
        if not actor.is_admin:
            raise Forbidden("Only an admin can delete users.")
        with self.db.session() as s:
            user = _find_user(s, name)
            if user.id == actor.user_id:
                raise Conflict("You cannot delete yourself; another admin can.")
            if user.is_admin:
                _keep_an_admin(s, user.id, "delete")
            owned = s.scalars(
                select(Membership.project_id).where(
                    Membership.user_id == user.id, Membership.role == Role.owner
                )
            ).all()
            alone = [
                p.name
                for p in s.scalars(select(Project).where(Project.id.in_(owned)))
                if not s.scalar(
                    select(Membership.id).where(
                        Membership.project_id == p.id,
                        Membership.role == Role.owner,
                        Membership.user_id != user.id,
                    )
                )
            ]
            if alone:
                raise Conflict(
                    f"User {name!r} is the only owner of project(s) {', '.join(alone)}; make "
                    "another member owner first (`lmfoundry projects add-member USER --role "
                    "owner -p PROJECT`)."
                )
            projects = s.scalars(
                select(Project.name)
                .join(Membership, Membership.project_id == Project.id)
                .where(Membership.user_id == user.id)
                .order_by(Project.name)
            ).all()
            tokens = s.scalars(select(Token.id).where(Token.user_id == user.id)).all()
            s.execute(delete(Membership).where(Membership.user_id == user.id))
            s.execute(delete(Token).where(Token.user_id == user.id))
            s.delete(user)
            record(
                s,
                actor.name,
                None,
                "user.delete",
                name,
                {"projects": list(projects), "tokens": len(tokens), "was_admin": user.is_admin},
            )

    def create_token(
        self,
        actor: Principal,
        name: str,
        expires_in_days: int | None = None,
        user: str | None = None,
        scope: TokenScope = TokenScope.all,
    ) -> NewToken:
        """A new token for the actor (or, by an admin, for `user`), valid for
        `expires_in_days` (default LMFOUNDRY_TOKEN_TTL_DAYS). A `metrics` token reads
        GET /metrics only; the metrics cover every project, so only an admin makes one."""
        if scope == TokenScope.metrics and not actor.is_admin:
            raise Forbidden(
                "Only an admin can create a metrics token (the metrics cover every "
                "project); ask an admin to run `lmfoundry tokens create NAME --metrics`."
            )
        if not TOKEN_NAME_PATTERN.match(name):
            raise InvalidRequest(
                f"Invalid token name {name!r}: use 1-100 letters, digits, '.', '_' and '-', "
                "starting with a letter or digit (for example 'laptop' or 'ci-2027').",
                param="name",
            )
        if expires_in_days is not None and not 1 <= expires_in_days <= MAX_TOKEN_DAYS:
            raise InvalidRequest(
                f"expires_in_days must be between 1 and {MAX_TOKEN_DAYS}, not "
                f"{expires_in_days}; leave it out for {self.token_ttl_days} days.",
                param="expires_in_days",
            )
        token = new_token()
        expires_at = self._expiry(expires_in_days)
        with self.db.session() as s:
            owner = self._token_owner(s, actor, user, "create tokens for")
            now = datetime.now(UTC)
            for other in s.scalars(
                select(Token).where(
                    Token.user_id == owner.id, Token.name == name, Token.revoked_at.is_(None)
                )
            ):
                if other.expires_at is None or other.expires_at > now:
                    raise Conflict(
                        f"There is already an active token named {name!r} for "
                        f"{_whom(actor, owner)}; pick another name or revoke it first "
                        f"(`lmfoundry tokens revoke {name}`)."
                    )
            row = self._token_row(owner.id, name, token, expires_at)
            row.scope = scope.value
            s.add(row)
            record(
                s,
                actor.name,
                None,
                "token.create",
                name,
                {
                    "user": owner.name,
                    "prefix": row.prefix,
                    "expires_at": expires_at.isoformat(),
                    "scope": scope.value,
                },
            )
            return NewToken(
                name=name,
                user=owner.name,
                token=token,
                prefix=row.prefix,
                expires_at=expires_at,
                scope=scope,
            )

    def list_tokens(
        self, actor: Principal, user: str | None = None, all_users: bool = False
    ) -> list[TokenView]:
        """The actor's tokens; admins may ask for one `user`'s or everyone's. Never the
        tokens themselves, which are stored only as hashes."""
        now = datetime.now(UTC)
        with self.db.session() as s:
            query = select(Token, User.name).join(User, User.id == Token.user_id)
            if all_users:
                if not actor.is_admin:
                    raise Forbidden(
                        "Only an admin can list everyone's tokens; leave out --all (all=true) "
                        "to list yours."
                    )
            else:
                owner = self._token_owner(s, actor, user, "list the tokens of")
                query = query.where(Token.user_id == owner.id)
            rows = s.execute(query.order_by(User.name, Token.created_at, Token.id)).all()
            return [_token_view(token, owner_name, now) for token, owner_name in rows]

    def revoke_token(self, actor: Principal, name: str, user: str | None = None) -> int:
        """Revoke the actor's (or, by an admin, `user`'s) tokens named `name`; they and the
        studio sessions opened with them stop working at once. Returns how many."""
        now = datetime.now(UTC)
        with self.db.session() as s:
            owner = self._token_owner(s, actor, user, "revoke the tokens of")
            rows = s.scalars(
                select(Token).where(
                    Token.user_id == owner.id, Token.name == name, Token.revoked_at.is_(None)
                )
            ).all()
            if not rows:
                raise NotFound(
                    f"There is no token named {name!r} for {_whom(actor, owner)} that is not "
                    "revoked already; `lmfoundry tokens list` shows the names."
                )
            for row in rows:
                row.revoked_at = now
                record(
                    s,
                    actor.name,
                    None,
                    "token.revoke",
                    name,
                    {"user": owner.name, "prefix": row.prefix},
                )
            return len(rows)

    @staticmethod
    def _token_owner(s: Session, actor: Principal, user: str | None, what: str) -> User:
        """The user whose tokens a call is about: the actor, or (admins only) `user`."""
        if user is None or user == actor.name:
            owner = s.get(User, actor.user_id)
            if owner is None:  # deleted while the request ran
                raise Unauthorized("Your user no longer exists; ask an admin.")
            return owner
        if not actor.is_admin:
            raise Forbidden(
                f"Only an admin can {what} other users; leave out the user to act on yours."
            )
        return _find_user(s, user)

    # -- authorisation ------------------------------------------------------------------

    def project_access(
        self, actor: Principal, project: str, needed: Role = Role.reader
    ) -> ProjectAccess:
        """The actor's role in `project`; 404 for non-members (names do not leak), 403 when
        the role is too low."""
        with self.db.session() as s:
            return self.access_in(s, actor, project, needed)

    def access_in(self, s: Session, actor: Principal, project: str, needed: Role) -> ProjectAccess:
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


_NEW_TOKEN_HINT = (
    "sign in with another of your tokens and create a new one (`lmfoundry tokens create "
    "NAME`, then `lmfoundry login`), or ask an admin for one (`lmfoundry tokens create NAME "
    "--user YOU`)."
)
TOKEN_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
MAX_TOKEN_DAYS = 3650


def _find_user(s: Session, name: str) -> User:
    user = s.scalar(select(User).where(User.name == name))
    if user is None:
        raise NotFound(f"User {name!r} not found; `lmfoundry users list` shows them.")
    return user


def _keep_an_admin(s: Session, leaving_user_id: int, verb: str) -> None:
    others = s.scalar(
        select(User.id).where(
            User.is_admin.is_(True), User.disabled_at.is_(None), User.id != leaving_user_id
        )
    )
    if others is None:
        raise Conflict(
            f"Cannot {verb} the last enabled admin; create another admin first "
            "(`lmfoundry users create NAME --admin`)."
        )


def _whom(actor: Principal, owner: User) -> str:
    return "you" if owner.id == actor.user_id else f"user {owner.name!r}"


def _user_view(user: User) -> UserView:
    return UserView(
        name=user.name,
        is_admin=user.is_admin,
        created_at=user.created_at,
        disabled_at=user.disabled_at,
    )


def _token_view(token: Token, user: str, now: datetime) -> TokenView:
    status: Literal["active", "expired", "revoked"]
    if token.revoked_at is not None:
        status = "revoked"
    elif token.expires_at is not None and token.expires_at <= now:
        status = "expired"
    else:
        status = "active"
    return TokenView(
        name=token.name,
        user=user,
        prefix=token.prefix,
        created_at=token.created_at,
        last_used_at=token.last_used_at,
        expires_at=token.expires_at,
        revoked_at=token.revoked_at,
        status=status,
        scope=TokenScope(token.scope),
    )


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
