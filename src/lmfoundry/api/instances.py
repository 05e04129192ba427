"""`/api/v1/instances`: the worker processes this server supervises (admins only)."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter
from pydantic import BaseModel

from lmfoundry.api.deps import PlatformDep, PrincipalDep
from lmfoundry.errors import Forbidden

router = APIRouter(tags=["instances"])


class InstanceView(BaseModel):
    id: str
    group: str
    state: str
    pid: int | None
    active: int
    restarts: int
    started_at: float | None
    last_error: str | None


@router.get("/instances", response_model=list[InstanceView])
def list_instances(plat: PlatformDep, actor: PrincipalDep) -> list[dict[str, object]]:
    if not actor.is_admin:
        raise Forbidden("Only an admin can list instances (they serve every project).")
    return [asdict(info) for info in plat.backend.describe()]
