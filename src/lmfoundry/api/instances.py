"""`/api/v1/instances`: the worker processes this server supervises (admins only)."""

from __future__ import annotations

from fastapi import APIRouter

from lmfoundry.api.deps import PlatformDep, PrincipalDep
from lmfoundry.errors import Forbidden
from lmfoundry.observability.models import BackendInstance

router = APIRouter(tags=["instances"])


@router.get("/instances")
def list_instances(plat: PlatformDep, actor: PrincipalDep) -> list[BackendInstance]:
    if not actor.is_admin:
        raise Forbidden("Only an admin can list instances (they serve every project).")
    return plat.monitoring.instances()
