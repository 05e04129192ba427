"""What the flow and run services answer (`FlowView`, `RunView`, ...), as the API, the SDK, the
CLI and the studio show them.

They live here, not in `models.py` (the flow's own types, from flow.dag.yaml), because every
flow process imports `models.py` and no pydantic: with these models it started 0.1-0.2 s
later (measured with `python -I -c "import lmfoundry.flows.process"`), and each test and each
score starts one. A flow's inputs, outputs and metrics are the user's JSON: `dict[str, Any]`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field


class FlowNode(BaseModel):
    name: str
    type: str = Field(description="python, llm or prompt; flex for a flex flow's entry.")
    aggregation: bool


class ConnectionInput(BaseModel):
    """A node input that takes a connection, and the connection saved for it."""

    key: str = Field(description="node.input, the form --connections binds.")
    node: str
    input: str
    takes: str = Field(description="The connection class of the tool parameter.")
    types: list[str] = Field(description="Connection types that fit.")
    declared: str | None = Field(description="The connection flow.dag.yaml names for it.")
    bound: str | None = Field(description="The connection saved for it on the flow.")


class FlowView(BaseModel):
    """An uploaded flow: its latest version's interface, bindings and deployment."""

    name: str
    project: str
    version: int
    kind: str = Field(description="'chat' (has an is_chat_input) or 'standard'.")
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    nodes: list[FlowNode]
    connections: list[str] = Field(description="Connections the flow's nodes name.")
    connection_bindings: dict[str, str] = Field(
        description="Connections bound to node inputs at run time (node.input -> name), "
        "saved by the studio's picker or a deploy."
    )
    connection_inputs: list[ConnectionInput] = Field(
        description="Each node input that takes a connection."
    )
    deployed_version: int | None
    scoring_uri: str | None = Field(description="POST flow inputs here with a key.")
    created_by: str
    created_at: datetime
    updated_at: datetime


class DeployedFlowView(FlowView):
    """A flow just deployed, with the bindings the deploy chose by default."""

    defaulted_connections: dict[str, str] = Field(
        description="Bindings chosen as the project's only fitting connection."
    )


class FlowResult(BaseModel):
    """One line of a flow run by a test (`FlowCall.result()` read as this type)."""

    status: Literal["completed", "failed"]
    outputs: dict[str, Any]
    error: dict[str, Any] | None = Field(description="type, message, node and traceback.")
    metrics: dict[str, Any] = Field(description="log_metric values of aggregation nodes.")
    duration_s: float
    connection_bindings: dict[str, str] = Field(
        default_factory=dict, description="The connections bound at run time (node.input -> name)."
    )
    defaulted_connections: dict[str, str] = Field(
        default_factory=dict,
        description="The bindings chosen as the project's only fitting connection.",
    )


class RunView(BaseModel):
    """A batch run: a flow version over the lines of a JSONL file or of an earlier run."""

    id: str
    project: str
    flow: str
    flow_version: int
    status: str = Field(description="queued, running, completed, failed or canceled.")
    data: str
    column_mapping: dict[str, Any]
    run: str | None = Field(description="The earlier run an evaluation reads.")
    total_lines: int
    completed_lines: int
    failed_lines: int
    metrics: dict[str, Any]
    connection_bindings: dict[str, str] = Field(
        description="The connections bound at run time (node.input -> name)."
    )
    defaulted_connections: dict[str, str] | None = Field(
        default=None, description="On creation: bindings chosen as the only fitting connection."
    )
    error: str | None
    created_by: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class RunLine(BaseModel):
    """One finished line of a run."""

    line_number: int
    status: str
    inputs: dict[str, Any]
    outputs: dict[str, Any] | None
    error: dict[str, Any] | None
    duration_s: float


class RunDetail(RunView):
    """A run with a page of its finished lines."""

    lines: list[RunLine]
