"""`lmfoundry login`, `projects`, `users`, `tokens`."""

from __future__ import annotations

from typing import Annotated

import typer

from lmfoundry.access.models import Role
from lmfoundry.access.secrets import new_token
from lmfoundry.access.service import write_credentials
from lmfoundry.cli._output import JsonOpt, ProjectOpt, client, console, records, show
from lmfoundry.client import Client
from lmfoundry.config import get_settings

projects_app = typer.Typer(help="Projects and their members.", no_args_is_help=True)
users_app = typer.Typer(help="Users (admins only).", no_args_is_help=True)
tokens_app = typer.Typer(help="Personal access tokens.", no_args_is_help=True)
flows_switch_app = typer.Typer(
    help="Switch flows on or off in a project (owners and admins).", no_args_is_help=True
)
projects_app.add_typer(flows_switch_app, name="flows")

USER_COLUMNS = ["name", "is_admin", "disabled_at", "created_at"]
PROJECT_COLUMNS = ["name", "role", "flows_enabled", "description", "created_at"]


def login(
    token: Annotated[str, typer.Option(prompt=True, hide_input=True, help="lmf_pat_... token")],
    url: Annotated[str | None, typer.Option(help="Server URL (default: this machine's).")] = None,
) -> None:
    """Check a token against the server and store it in $LMFOUNDRY_HOME/credentials."""
    settings = get_settings()
    base = (url or settings.url or settings.base_url).rstrip("/")
    with Client(url=base, token=token) as lmf:
        me = lmf.me()
    path = write_credentials(settings.home, token, base)
    console.print(f"Logged in to {base} as [bold]{me.name}[/]; token saved in {path}.")


@projects_app.command("list")
def projects_list(json_: JsonOpt = False) -> None:
    """Projects you are a member of."""
    with client() as lmf:
        show(lmf.projects(), json_, PROJECT_COLUMNS)


@projects_app.command("create")
def projects_create(
    name: str,
    description: Annotated[str, typer.Option(help="What it is for.")] = "",
    json_: JsonOpt = False,
) -> None:
    """Create a project; you become its owner (admins, or anyone where the operator set
    LMFOUNDRY_ALLOW_SELF_SERVICE_PROJECTS)."""
    with client() as lmf:
        show(lmf.create_project(name, description), json_, PROJECT_COLUMNS)


@flows_switch_app.command("enable")
def projects_flows_enable(project: ProjectOpt = None, json_: JsonOpt = False) -> None:
    """Let developers of the project test, run and deploy flows (their code runs here)."""
    with client(project) as lmf:
        show(lmf.set_flows_enabled(True), json_, PROJECT_COLUMNS)


@flows_switch_app.command("disable")
def projects_flows_disable(project: ProjectOpt = None, json_: JsonOpt = False) -> None:
    """Stop flows in the project: tests, runs and deployed flows' scores get 403."""
    with client(project) as lmf:
        show(lmf.set_flows_enabled(False), json_, PROJECT_COLUMNS)


@projects_app.command("members")
def projects_members(project: ProjectOpt = None, json_: JsonOpt = False) -> None:
    """Members of a project and their roles."""
    with client(project) as lmf:
        show(lmf.members(), json_, ["user", "role", "created_at"])


@projects_app.command("add-member")
def projects_add_member(
    user: str,
    role: Annotated[Role, typer.Option(help="owner, developer or reader")] = Role.reader,
    project: ProjectOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Add a member or change their role (owners only)."""
    with client(project) as lmf:
        show(lmf.set_member(user, role.value), json_)


@projects_app.command("remove-member")
def projects_remove_member(user: str, project: ProjectOpt = None) -> None:
    """Remove a member (owners only)."""
    with client(project) as lmf:
        lmf.remove_member(user)
    console.print(f"Removed {user}.")


@users_app.command("create")
def users_create(
    name: str,
    admin: Annotated[bool, typer.Option(help="Make an admin.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Create a user and print their first token (shown once)."""
    with client() as lmf:
        created = lmf.create_user(name, admin)
    if json_:
        show(created, True)
        return
    console.print(f"Created user [bold]{created.name}[/]. Their token (shown once):")
    console.print(created.token, highlight=False, soft_wrap=True)


@users_app.command("list")
def users_list(json_: JsonOpt = False) -> None:
    """All users."""
    with client() as lmf:
        show(lmf.users(), json_, USER_COLUMNS)


@users_app.command("disable")
def users_disable(name: str, json_: JsonOpt = False) -> None:
    """Disable a user: their tokens and studio sessions stop working at once."""
    with client() as lmf:
        show(lmf.disable_user(name), json_, USER_COLUMNS)


@users_app.command("enable")
def users_enable(name: str, json_: JsonOpt = False) -> None:
    """Enable a disabled user again (their tokens that are not revoked or expired work)."""
    with client() as lmf:
        show(lmf.enable_user(name), json_, USER_COLUMNS)


@users_app.command("delete")
def users_delete(
    name: str,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask to confirm.")] = False,
) -> None:
    """Delete a user with their tokens and memberships; the audit log keeps their history."""
    if not yes:
        typer.confirm(f"Delete user {name} with their tokens and memberships?", abort=True)
    with client() as lmf:
        lmf.delete_user(name)
    console.print(f"Deleted user {name}.")


@tokens_app.command("create")
def tokens_create(
    name: str,
    expires_in_days: Annotated[
        int | None,
        typer.Option(help="Days it stays valid (default: the server's LMFOUNDRY_TOKEN_TTL_DAYS)."),
    ] = None,
    user: Annotated[str | None, typer.Option(help="Admins: create it for this user.")] = None,
    metrics: Annotated[bool, typer.Option("--metrics", help=METRICS_HELP)] = False,
    json_: JsonOpt = False,
) -> None:
    """Create another token for yourself (shown once)."""
    _create_token(name, expires_in_days, user, metrics, json_)


METRICS_HELP = "Admins: a token that reads only GET /metrics (for a Prometheus scraper)."


def _create_token(
    name: str, expires_in_days: int | None, user: str | None, metrics: bool, json_: bool
) -> None:
    with client() as lmf:
        created = lmf.create_token(name, expires_in_days, user, metrics)
    if json_:
        show(created, True)
        return
    expires = f"{created.expires_at:%Y-%m-%d %H:%M} UTC" if created.expires_at else "never"
    console.print(f"Token {created.name} of {created.user} (expires {expires}), shown once:")
    console.print(created.token, highlight=False, soft_wrap=True)


@tokens_app.command("list")
def tokens_list(
    user: Annotated[str | None, typer.Option(help="Admins: this user's tokens.")] = None,
    all_users: Annotated[bool, typer.Option("--all", help="Admins: everyone's tokens.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Your tokens: name, prefix, created, last used, expires, revoked (never the token)."""
    with client() as lmf:
        rows = lmf.tokens(user, all_users)
    if json_:
        show(rows, True)
        return
    # expires_at null: a token made before tokens expired (or LMFOUNDRY_ADMIN_TOKEN)
    shown = [{**r, "expires_at": r["expires_at"] or "never"} for r in records(rows)]
    columns = ["name", "prefix", "scope", "status", "created_at", "last_used_at", "expires_at"]
    show(shown, False, (["user"] if user or all_users else []) + [*columns, "revoked_at"])


@tokens_app.command("revoke")
def tokens_revoke(
    name: str,
    user: Annotated[str | None, typer.Option(help="Admins: revoke this user's token.")] = None,
) -> None:
    """Revoke a token: it and the studio sessions opened with it stop working at once."""
    with client() as lmf:
        lmf.revoke_token(name, user)
    console.print(f"Revoked token {name}" + (f" of {user}." if user else "."))


@tokens_app.command("new")
def tokens_new(
    metrics: Annotated[
        bool,
        typer.Option(
            "--metrics",
            help="Instead: create on the server a token that reads only GET /metrics "
            "(admins; as `tokens create NAME --metrics`).",
        ),
    ] = False,
    name: Annotated[str, typer.Option(help="With --metrics: the token's name.")] = "metrics",
    json_: JsonOpt = False,
) -> None:
    """Print a fresh random token without a server, e.g. for LMFOUNDRY_ADMIN_TOKEN."""
    if metrics:
        _create_token(name, None, None, True, json_)
        return
    typer.echo(new_token())
