"""What the deployment services answer: serverless deployments, online endpoints and the
deployments of an endpoint, as the API, the SDK, the CLI and the studio show them."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class ServerlessView(BaseModel):
    """A serverless deployment: a model behind `target_url` with keys and a quota."""

    name: str
    project: str
    model: str
    target_url: str = Field(description="Call `{target_url}chat/completions` with a key.")
    provisioning_state: str
    tokens_per_minute: int
    requests_per_minute: int
    price_input_per_1k: float = Field(description="USD per 1K prompt tokens.")
    price_output_per_1k: float = Field(description="USD per 1K completion tokens.")
    created_by: str
    created_at: datetime


class EndpointView(BaseModel):
    """A managed online endpoint: its deployments, the traffic split and the mirror."""

    name: str
    project: str
    auth_mode: str
    description: str
    scoring_uri: str
    target_url: str
    traffic: dict[str, int]
    mirror_traffic: dict[str, int]
    tokens_per_minute: int
    requests_per_minute: int
    provisioning_state: str
    deployments: list[str]
    created_by: str
    created_at: datetime


class DeploymentView(BaseModel):
    """One deployment of an online endpoint: a model served by `instance_count` instances."""

    name: str
    endpoint: str
    model: str
    instance_count: int
    request_settings: dict[str, int]
    provisioning_state: str
    error: str | None
    generation: int
    created_by: str
    created_at: datetime
    updated_at: datetime
