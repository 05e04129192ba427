"""`lmfoundry login`, `projects`, `users`, `tokens`."""

from __future__ import annotations

from typing import Annotated

import typer

from lmfoundry.access.models import Role
from lmfoundry.access.secrets import new_token
from lmfoundry.access.service import write_credentials
from lmfoundry.cli._output import JsonOpt, ProjectOpt, client, console, show
from lmfoundry.client import Client
from lmfoundry.config import get_settings

projects_app = typer.Typer(help="Projects and their members.", no_args_is_help=True)
users_app = typer.Typer(help="Users (admins only).", no_args_is_help=True)
tokens_app = typer.Typer(help="Personal access tokens.", no_args_is_help=True)
flows_switch_app = typer.Typer(
    help="Switch flows on or off in a project (owners and admins).", no_args_is_help=True
)
projects_app.add_typer(flows_switch_app, name="flows")

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
    console.print(f"Logged in to {base} as [bold]{me['name']}[/]; token saved in {path}.")


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
    console.print(f"Created user [bold]{created['name']}[/]. Their token (shown once):")
    console.print(created["token"], highlight=False, soft_wrap=True)


@users_app.command("list")
def users_list(json_: JsonOpt = False) -> None:
    """All users."""
    with client() as lmf:
        show(lmf.users(), json_, ["name", "is_admin", "created_at"])


@tokens_app.command("create")
def tokens_create(name: str, json_: JsonOpt = False) -> None:
    """Create another token for yourself (shown once)."""
    with client() as lmf:
        created = lmf.create_token(name)
    if json_:
        show(created, True)
    else:
        console.print(created["token"], highlight=False, soft_wrap=True)


@tokens_app.command("new")
def tokens_new() -> None:
    """Print a fresh random token without a server, e.g. for LMFOUNDRY_ADMIN_TOKEN."""
    typer.echo(new_token())
