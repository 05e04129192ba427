"""Datasets and fine-tuning pages. Their data comes from the JSON API in the browser
(`/api/v1/projects/{p}/datasets`, `.../fine-tuning-jobs`), so these handlers only check
the caller's access and render the page; a missing API shows as an empty state."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from lmfoundry.api.deps import PlatformDep, ProjectDep
from lmfoundry.web.render import StudioRoute, render

router = APIRouter(route_class=StudioRoute, include_in_schema=False)
P = "/projects/{project}"

# What the job form starts with: the LoRA defaults of the fine-tuning service; None leaves the
# field empty (the service then chooses, e.g. eval_steps = checkpoint_steps).
HYPERPARAMETERS: dict[str, float | int | str | None] = {
    "learning_rate": 2e-4,
    "lr_scheduler_type": "linear",
    "num_train_epochs": 1,
    "per_device_train_batch_size": 4,
    "gradient_accumulation_steps": 1,
    "warmup_steps": 0,
    "weight_decay": 0.0,
    "lora_r": 8,
    "lora_alpha": 16,
    "lora_dropout": 0.05,
    "max_seq_length": 1024,
    "seed": 42,
    "max_steps": None,
    "eval_steps": None,
    "logging_steps": 1,
}
SCHEDULERS = [
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
]


@router.get(P + "/datasets")
def datasets(request: Request, access: ProjectDep, plat: PlatformDep) -> Response:
    return render(
        request,
        "datasets.html",
        access=access,
        section="datasets",
        models=[c for c in plat.catalog.list_cards() if c.weights_present and c.engine != "echo"],
    )


@router.get(P + "/fine-tuning")
def jobs(request: Request, access: ProjectDep, plat: PlatformDep) -> Response:
    return render(
        request,
        "jobs.html",
        access=access,
        section="fine-tuning",
        models=[c for c in plat.catalog.list_cards() if c.engine != "echo"],
        hyperparameters=HYPERPARAMETERS,
        schedulers=SCHEDULERS,
    )


@router.get(P + "/fine-tuning/{job_id}")
def job(job_id: str, request: Request, access: ProjectDep) -> Response:
    return render(request, "job.html", access=access, section="fine-tuning", job_id=job_id)
