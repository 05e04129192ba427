"""`/api/v1/catalog` and `/api/v1/models/import`."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from lmfoundry.access.models import Principal
from lmfoundry.api.deps import PlatformDep, PrincipalDep
from lmfoundry.catalog.models import CardView
from lmfoundry.errors import Forbidden

router = APIRouter(tags=["catalog"])


def _shown(card: CardView, actor: Principal) -> CardView:
    """The card without the server's folders, except for admins (who import models and
    build ONNX folders from the weights on this machine)."""
    if actor.is_admin:
        return card
    local = card.source.path

    def scrub(text: str | None) -> str | None:
        return text.replace(local, Path(local).name) if text and local else text

    return card.model_copy(
        update={
            "weights_path": None,
            "source": card.source.model_copy(update={"path": None}),
            "description": scrub(card.description),
            "how_to_get": scrub(card.how_to_get),
        }
    )


@router.get("/catalog")
def list_catalog(plat: PlatformDep, actor: PrincipalDep) -> list[CardView]:
    return [_shown(card, actor) for card in plat.catalog.list_cards()]


@router.get("/catalog/{model}")
def get_card(model: str, plat: PlatformDep, actor: PrincipalDep) -> CardView:
    return _shown(plat.catalog.get_card(model), actor)


class ImportRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(description="A .gguf file or Hugging Face folder on the server's disk.")
    id: str | None = Field(default=None, description="Model id; default: the file name.")
    display_name: str | None = None


@router.post("/catalog/import", status_code=201)
def import_model(body: ImportRequest, plat: PlatformDep, actor: PrincipalDep) -> CardView:
    if not actor.is_admin:
        raise Forbidden("Only an admin can import models into the catalog.")
    return plat.catalog.import_model(Path(body.path), body.id, body.display_name)


@router.delete("/catalog/{model}", status_code=204)
def remove_import(model: str, plat: PlatformDep, actor: PrincipalDep) -> None:
    if not actor.is_admin:
        raise Forbidden("Only an admin can remove imported models.")
    plat.catalog.remove_import(model)
