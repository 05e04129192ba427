"""`lmfoundry endpoints ...`: managed online endpoints and their deployments."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from lmfoundry.cli._output import (
    JsonOpt,
    ProjectOpt,
    client,
    console,
    print_json,
    records,
    show,
)
from lmfoundry.client import Client
from lmfoundry.deployments.models import DeploymentView
from lmfoundry.errors import EngineFailed, InvalidRequest, Timeout

app = typer.Typer(
    help="Online endpoints: deployments, traffic split, mirror, keys, /score.", no_args_is_help=True
)

COLUMNS = ["name", "scoring_uri", "traffic", "mirror_traffic", "deployments", "provisioning_state"]
DEPLOYMENT_COLUMNS = ["name", "model", "instance_count", "provisioning_state", "error"]


def _split(pairs: list[str]) -> dict[str, int]:
    split = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        if not value.strip().isdigit():
            raise InvalidRequest(f"{pair!r}: write DEPLOYMENT=PERCENT, e.g. blue=90.")
        split[name.strip()] = int(value)
    return split


@app.command("create")
def create(
    name: str,
    description: Annotated[str, typer.Option(help="What it serves.")] = "",
    project: ProjectOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Create an endpoint (key auth) at /endpoints/NAME/."""
    with client(project) as lmf:
        show(lmf.create_endpoint(name, description), json_, COLUMNS if not json_ else None)


@app.command("list")
def list_(project: ProjectOpt = None, json_: JsonOpt = False) -> None:
    """Endpoints of a project."""
    with client(project) as lmf:
        show(lmf.endpoints(), json_, COLUMNS)


@app.command("show")
def show_(name: str, project: ProjectOpt = None, json_: JsonOpt = False) -> None:
    """One endpoint, with its deployments."""
    with client(project) as lmf:
        endpoint = lmf.endpoint(name)
        deployments = lmf.endpoint_deployments(name)
    if json_:
        print_json({**records(endpoint), "deployments": records(deployments)})
        return
    show(endpoint, False)
    show(deployments, False, DEPLOYMENT_COLUMNS, title="deployments")


@app.command("delete")
def delete(name: str, project: ProjectOpt = None) -> None:
    """Delete an endpoint, its deployments and keys."""
    with client(project) as lmf:
        lmf.delete_endpoint(name)
    console.print(f"Deleted {name}.")


@app.command("deploy")
def deploy(
    endpoint: str,
    deployment: str,
    model: Annotated[str, typer.Option(help="NAME:VERSION (registered) or a catalog id.")],
    instance_count: Annotated[int, typer.Option(help="Instances serving it.")] = 1,
    request_timeout_ms: Annotated[int | None, typer.Option(help="Per request.")] = None,
    max_concurrent_requests_per_instance: Annotated[
        int | None, typer.Option(help="Beyond this, requests get 429 at once.")
    ] = None,
    wait: Annotated[
        bool, typer.Option(help="Wait until the deployment serves (or fails), as `az ml` does.")
    ] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait.")] = 900,
    project: ProjectOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Create or update a deployment (a new model rolls out without dropping requests)."""
    settings = {
        k: v
        for k, v in {
            "request_timeout_ms": request_timeout_ms,
            "max_concurrent_requests_per_instance": max_concurrent_requests_per_instance,
        }.items()
        if v is not None
    }
    with client(project) as lmf:
        result = lmf.put_endpoint_deployment(
            endpoint, deployment, model, instance_count, settings or None
        )
        if wait:
            result = _wait(lmf, endpoint, deployment, result.generation, timeout)
    show(result, json_)


def _wait(
    lmf: Client, endpoint: str, deployment: str, generation: int, timeout: float
) -> DeploymentView:
    """Poll until this generation of the deployment has succeeded; a failure is an error."""
    deadline = time.monotonic() + timeout
    while True:
        state = lmf.endpoint_deployment(endpoint, deployment)
        if state.provisioning_state == "failed":
            raise EngineFailed(
                f"Deployment {deployment!r} failed: {state.error or 'see the server log'}."
            )
        if state.provisioning_state == "succeeded" and state.generation >= generation:
            return state
        if time.monotonic() > deadline:
            raise Timeout(
                f"Deployment {deployment!r} is still {state.provisioning_state} after "
                f"{timeout:.0f} s; `lmfoundry endpoints deployments {endpoint}` shows it."
            )
        time.sleep(0.5)


@app.command("deployments")
def deployments(endpoint: str, project: ProjectOpt = None, json_: JsonOpt = False) -> None:
    """Deployments of an endpoint and their provisioning state."""
    with client(project) as lmf:
        show(lmf.endpoint_deployments(endpoint), json_, DEPLOYMENT_COLUMNS)


@app.command("delete-deployment")
def delete_deployment(endpoint: str, deployment: str, project: ProjectOpt = None) -> None:
    """Remove a deployment (its traffic must be 0 first)."""
    with client(project) as lmf:
        lmf.delete_endpoint_deployment(endpoint, deployment)
    console.print(f"Deleted {endpoint}/{deployment}.")


@app.command("traffic")
def traffic(
    endpoint: str,
    split: Annotated[list[str], typer.Argument(help="DEPLOYMENT=PERCENT ..., adding up to 100")],
    mirror: Annotated[bool, typer.Option(help="Set mirror traffic instead.")] = False,
    project: ProjectOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Set the traffic split (e.g. blue=90 green=10), or with --mirror the mirror share."""
    with client(project) as lmf:
        result = lmf.set_endpoint_traffic(endpoint, _split(split), mirror=mirror)
    show(result, json_, None if json_ else ["name", "traffic", "mirror_traffic"])


@app.command("keys")
def keys(
    name: str,
    regenerate: Annotated[str | None, typer.Option(help="primary or secondary")] = None,
    project: ProjectOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Show the endpoint's keys, or regenerate one."""
    with client(project) as lmf:
        result = (
            lmf.regenerate_endpoint_key(name, regenerate) if regenerate else lmf.endpoint_keys(name)
        )
    show(result, json_)


@app.command("invoke")
def invoke(
    name: str,
    request_file: Annotated[Path | None, typer.Option(help="A /score JSON body.")] = None,
    message: Annotated[str | None, typer.Option(help="Or just a user message.")] = None,
    deployment: Annotated[str | None, typer.Option(help="Target one deployment.")] = None,
    project: ProjectOpt = None,
) -> None:
    """Call the endpoint's /score with its primary key and print the answer."""
    if (request_file is None) == (message is None):
        raise InvalidRequest("Give --request-file or --message.")
    body = (
        json.loads(request_file.read_text())
        if request_file
        else {
            "input_data": {
                "input_string": [{"role": "user", "content": message}],
                "parameters": {"temperature": 0.7, "max_new_tokens": 128},
            }
        }
    )
    with client(project) as lmf:
        print_json(lmf.score_endpoint(name, body, deployment))
