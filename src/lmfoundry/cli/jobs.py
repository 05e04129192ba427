"""`lmfoundry jobs create|list|show|logs|cancel`: fine-tuning jobs."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from lmfoundry.cli._output import JsonOpt, ProjectOpt, client, console, print_json, show
from lmfoundry.client import Client
from lmfoundry.finetune.config import HELP
from lmfoundry.finetune.models import JobEnd, JobEvent, LogEvent, ValidationEvent

app = typer.Typer(help="Fine-tuning jobs: LoRA on chat datasets.", no_args_is_help=True)

COLUMNS = ["id", "model", "status", "training_data", "step", "total_steps", "created_at"]
LEVEL_STYLE = {"warning": "yellow", "error": "bold red"}


def _opt(name: str) -> Any:
    return typer.Option(help=HELP[name])


@app.command("create")
def create(
    model: Annotated[str, typer.Option(help="Catalog model to adapt.")],
    training_data: Annotated[str, typer.Option(help="Dataset NAME, NAME:VERSION or id.")],
    validation_data: Annotated[
        str | None, typer.Option(help="Dataset NAME, NAME:VERSION or id.")
    ] = None,
    learning_rate: Annotated[float | None, _opt("learning_rate")] = None,
    lr_scheduler_type: Annotated[str | None, _opt("lr_scheduler_type")] = None,
    num_train_epochs: Annotated[float | None, _opt("num_train_epochs")] = None,
    per_device_train_batch_size: Annotated[int | None, _opt("per_device_train_batch_size")] = None,
    gradient_accumulation_steps: Annotated[int | None, _opt("gradient_accumulation_steps")] = None,
    warmup_steps: Annotated[int | None, _opt("warmup_steps")] = None,
    weight_decay: Annotated[float | None, _opt("weight_decay")] = None,
    lora_r: Annotated[int | None, _opt("lora_r")] = None,
    lora_alpha: Annotated[int | None, _opt("lora_alpha")] = None,
    lora_dropout: Annotated[float | None, _opt("lora_dropout")] = None,
    lora_target_modules: Annotated[
        str | None, typer.Option(help=HELP["lora_target_modules"] + " Comma-separated.")
    ] = None,
    max_seq_length: Annotated[int | None, _opt("max_seq_length")] = None,
    seed: Annotated[int | None, _opt("seed")] = None,
    max_steps: Annotated[int | None, _opt("max_steps")] = None,
    checkpoint_steps: Annotated[int | None, _opt("checkpoint_steps")] = None,
    eval_steps: Annotated[int | None, _opt("eval_steps")] = None,
    logging_steps: Annotated[int | None, _opt("logging_steps")] = None,
    suffix: Annotated[str | None, typer.Option(help="A label for the fine-tuned model.")] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Show progress until the job ends.")
    ] = False,
    project: ProjectOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Queue a LoRA fine-tuning job."""
    chosen = {k: v for k, v in locals().items() if k in HELP and v is not None}
    if lora_target_modules is not None:
        chosen["lora_target_modules"] = [m.strip() for m in lora_target_modules.split(",")]
    with client(project) as lmf:
        job = lmf.create_job(model, training_data, validation_data, chosen, suffix)
        if follow:
            console.print(f"Created {job.id}.")
            _follow(lmf, job.id)
            return
    show(job, json_)
    if not json_:
        console.print(f"Follow it: lmfoundry jobs logs {job.id} -f")


@app.command("list")
def list_(
    status: Annotated[str | None, typer.Option(help="Only jobs in this status.")] = None,
    project: ProjectOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Fine-tuning jobs of a project, newest first."""
    with client(project) as lmf:
        show(lmf.jobs(status), json_, COLUMNS)


@app.command("show")
def show_(job_id: str, project: ProjectOpt = None, json_: JsonOpt = False) -> None:
    """One job: status, hyperparameters and latest metrics."""
    with client(project) as lmf:
        show(lmf.job(job_id), json_)


@app.command("logs")
def logs(
    job_id: str,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep showing events until the job ends.")
    ] = False,
    project: ProjectOpt = None,
    json_: JsonOpt = False,
) -> None:
    """A job's log lines and step metrics; with -f, live with a progress bar."""
    with client(project) as lmf:
        if follow and not json_:
            _follow(lmf, job_id)
            return
        events: list[JobEvent] = []
        after = None
        while True:
            page = lmf.job_events(job_id, after=after)
            events += page.data
            if not page.has_more:
                break
            after = page.data[-1].id
    if json_:
        print_json(events)
        return
    for event in events:
        console.print(_line(event), highlight=False)


@app.command("cancel")
def cancel(job_id: str, project: ProjectOpt = None, json_: JsonOpt = False) -> None:
    """Stop a job; its logs and checkpoints are kept."""
    with client(project) as lmf:
        job = lmf.cancel_job(job_id)
    if json_:
        show(job, True)
    else:
        console.print(f"{job_id} is {job.status}.")


def _line(event: JobEvent) -> str:
    at = event.at.strftime("%H:%M:%S")
    if isinstance(event, LogEvent):
        style = LEVEL_STYLE.get(event.level)
        message = f"[{style}]{event.message}[/]" if style else event.message
        return f"[dim]{at}[/] {message}"
    if isinstance(event, ValidationEvent):
        return f"[dim]{at}[/] step {event.step}: validation_loss {event.validation_loss:.4f}"
    return (
        f"[dim]{at}[/] step {event.step}/{event.total_steps}: "
        f"train_loss {event.train_loss:.4f}, learning_rate {event.learning_rate:.3g}, "
        f"{event.tokens_per_second:.0f} tokens/s"
    )


def _follow(lmf: Client, job_id: str) -> None:
    """Log lines above a progress bar with the latest losses, until the job ends."""
    job = lmf.job(job_id)
    losses = {"loss": "", "validation": ""}
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[losses]}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        bar = progress.add_task(job.status, total=job.total_steps, completed=job.step, losses="")
        for event in lmf.follow_job(job_id):
            if isinstance(event, JobEnd):
                progress.update(bar, description=event.status)
                break
            if isinstance(event, LogEvent):
                progress.console.print(_line(event), highlight=False)
                continue
            if isinstance(event, ValidationEvent):
                losses["validation"] = f", validation {event.validation_loss:.4f}"
            else:
                losses["loss"] = f"loss {event.train_loss:.4f}"
                progress.update(
                    bar, description="running", total=event.total_steps, completed=event.step
                )
            progress.update(bar, losses=losses["loss"] + losses["validation"])
    job = lmf.job(job_id)
    if job.status == "completed":
        console.print(
            f"Completed. Register its model with `lmfoundry models register NAME "
            f"--from-job {job_id}`."
        )
    elif job.status == "failed":
        console.print(f"[bold red]Failed:[/] {job.error}", highlight=False)
        raise typer.Exit(1)
    else:
        console.print(f"{job_id} is {job.status}.")
