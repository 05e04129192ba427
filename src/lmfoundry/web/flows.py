"""Connections and flows pages. Their data comes from the JSON API in the browser
(`/api/v1/projects/{p}/connections`, `.../flows`, `.../runs`); the studio adds one route
of its own: a check of an edited flow.dag.yaml that also returns the graph to draw."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from lmfoundry.api.deps import ProjectDep
from lmfoundry.web.flowgraph import dag_text, parse_flow
from lmfoundry.web.render import StudioRoute, render

router = APIRouter(route_class=StudioRoute, include_in_schema=False)
checks = APIRouter(include_in_schema=False)  # JSON answers, JSON errors
P = "/projects/{project}"


@router.get(P + "/connections")
def connections(request: Request, access: ProjectDep) -> Response:
    return render(request, "connections.html", access=access, section="connections")


@router.get(P + "/flows")
def flows(request: Request, access: ProjectDep) -> Response:
    return render(request, "flows.html", access=access, section="flows")


@router.get(P + "/flows/{name}")
def flow(name: str, request: Request, access: ProjectDep) -> Response:
    return render(request, "flow.html", access=access, section="flows", name=name)


@router.get(P + "/runs/{run_id}")
def run(run_id: str, request: Request, access: ProjectDep) -> Response:
    return render(request, "run.html", access=access, section="flows", run_id=run_id)


class FlowCheck(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dag: str | None = Field(
        default=None, max_length=262_144, description="flow.dag.yaml text being edited."
    )
    definition: dict[str, Any] | None = Field(
        default=None, description="Or a parsed flow: inputs, outputs and nodes."
    )


@checks.post(P + "/flows-check")
def check(body: FlowCheck, access: ProjectDep) -> dict[str, Any]:
    """Problems (with line numbers) and the graph of a flow.dag.yaml being edited; `dag`
    echoes the text checked (made from `definition` when that was sent)."""
    text = body.dag if body.dag is not None else dag_text(body.definition or {})
    return {**parse_flow(text).as_dict(), "dag": text}
