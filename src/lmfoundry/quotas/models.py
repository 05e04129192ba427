"""What the project quota service answers: each limit of a project with its current use, as
the API, the SDK, the CLI (`lmfoundry projects quota`) and the studio's usage page show it."""

from __future__ import annotations

from pydantic import BaseModel, Field


class QuotaLine(BaseModel):
    name: str
    limit: int = Field(description="The project's limit: its own, or the server's default.")
    used: int = Field(description="Current use (for rates: in the last minute).")
    default: int = Field(description="The server's default (LMFOUNDRY_PROJECT_<NAME>).")
    custom: bool = Field(description="Whether an admin set this project's own limit.")
    unit: str
    description: str


class ProjectQuotasView(BaseModel):
    project: str
    quotas: list[QuotaLine]
